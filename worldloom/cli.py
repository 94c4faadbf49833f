"""The ``worldloom`` command: train, collect, evaluate, imagine, list-models.

Examples::

    worldloom train --env CartPole-v1 --out runs/cartpole
    worldloom collect --env CartPole-v1 --episodes 100 --out data.npz
    worldloom evaluate --model runs/cartpole/model --buffer runs/cartpole/test_buffer.npz
    worldloom imagine --model runs/cartpole/model --buffer runs/cartpole/test_buffer.npz --out plot.png
    worldloom list-models --verbose
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from worldloom.core.errors import ConfigError, WorldloomError


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worldloom", description="Latent world models (DreamerV3, TD-MPC2).")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="collect episodes with a random policy and train a world model")
    train.add_argument("--env", default="CartPole-v1", help="Gymnasium env id (default: CartPole-v1)")
    train.add_argument("--model", default="dreamerv3:size1m", help="preset, alias or saved directory")
    train.add_argument("--episodes", type=int, default=100, help="training episodes to collect (default: 100)")
    train.add_argument("--test-episodes", type=int, default=20, help="held-out episodes for the report (default: 20)")
    train.add_argument("--steps", type=int, default=600, help="updates (default: 600)")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--seq-len", type=int, default=32)
    train.add_argument("--lr", type=float, default=3e-4, help="learning rate (default: 3e-4)")
    train.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up (default: 0)")
    train.add_argument("--steps-per-dispatch", type=int, default=10)
    train.add_argument("--log-interval", type=int, default=50)
    train.add_argument("--eval-interval", type=int, default=200)
    train.add_argument("--save-interval", type=int, default=0, help="0: checkpoint only at the end / on Ctrl-C")
    train.add_argument("--context", type=int, default=5, help="observed steps before imagining (plot)")
    train.add_argument("--horizon", type=int, default=15, help="imagined steps (plot)")
    train.add_argument("--set", dest="overrides", type=_override, action="append", default=[],
                       metavar="KEY=VALUE", help="model config override, e.g. --set deter=256 (repeatable)")
    train.add_argument("--out", default="runs/worldloom", help="output directory (default: runs/worldloom)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="cpu, cuda, tpu or auto (default: auto)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    collect = commands.add_parser("collect", help="collect episodes into a replay buffer file")
    collect.add_argument("--env", default="CartPole-v1")
    collect.add_argument("--episodes", type=int, default=100)
    collect.add_argument("--capacity", type=int, default=100_000)
    collect.add_argument("--out", required=True, help="the .npz file to write")
    collect.add_argument("--seed", type=int, default=0)

    evaluate = commands.add_parser("evaluate", help="loss of a saved model on a buffer")
    imagine = commands.add_parser("imagine", help="plot imagined versus real episodes of a buffer")
    for sub in (evaluate, imagine):
        sub.add_argument("--model", required=True, help="a directory written by save_pretrained")
        sub.add_argument("--buffer", required=True, help="a .npz replay buffer")
        sub.add_argument("--device", default="auto")
        sub.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--seq-len", type=int, default=32)
    evaluate.add_argument("--batches", type=int, default=8)
    imagine.add_argument("--context", type=int, default=5)
    imagine.add_argument("--horizon", type=int, default=15)
    imagine.add_argument("--out", default="imagination.png", help="PNG to write")

    agent = commands.add_parser("agent", help="train an agent online in a Gymnasium environment")
    agent.add_argument("--env", default="CartPole-v1", help="Gymnasium env id (default: CartPole-v1)")
    agent.add_argument("--algo", choices=["dreamerv3", "tdmpc2"], default="dreamerv3")
    agent.add_argument("--model", help="world-model preset (default: dreamerv3:size1m / tdmpc2:5m)")
    agent.add_argument("--steps", type=int, default=50_000, help="environment steps (default: 50000)")
    agent.add_argument("--num-envs", type=int, default=1)
    agent.add_argument("--train-ratio", type=float, default=32.0, help="DreamerV3 replayed steps per env step")
    agent.add_argument("--updates-per-step", type=float, default=1.0, help="TD-MPC2 updates per env step")
    agent.add_argument("--batch-size", type=int)
    agent.add_argument("--seq-len", type=int)
    agent.add_argument("--lr", type=float)
    agent.add_argument("--seed-steps", type=int,
                       help="random-action steps before learning (default: DreamerV3 0, TD-MPC2 max(1000, 5 L))")
    agent.add_argument("--episodic", action=argparse.BooleanOptionalAction, default=None,
                       help="TD-MPC2: termination head and planning that stops at predicted terminations "
                            "(default: on when random actions reach a termination)")
    agent.add_argument("--log-every", type=int, default=10, help="updates between logged losses (default: 10)")
    agent.add_argument("--eval-every", type=int, default=5_000)
    agent.add_argument("--eval-episodes", type=int, default=5)
    agent.add_argument("--checkpoint-every", type=int, default=10_000)
    agent.add_argument("--set", action="append", default=[], type=_override, metavar="KEY=VALUE",
                       help="world-model config override (repeatable)")
    agent.add_argument("--out", default="runs/agent", help="output directory (default: runs/agent)")
    agent.add_argument("--seed", type=int, default=0)
    agent.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    agent.add_argument("--no-progress", action="store_true")

    listing = commands.add_parser("list-models", help="available presets")
    listing.add_argument("--verbose", action="store_true", help="sizes, parameter counts, descriptions")
    return parser


def _losses_text(losses: dict) -> str:
    shown = [k for k in ("loss", "loss/rec", "loss/rew", "loss/con", "loss/dyn", "loss/rep", "loss/consistency",
                         "loss/reward", "loss/value", "loss/policy") if k in losses]
    return ", ".join(f"{k.removeprefix('loss/')} {losses[k]:.4f}" for k in shown)


def _report_open_loop(result: dict) -> list[str]:
    lines = [f"  open loop over {result['num_episodes']} episodes ({result['context']} observed, "
             f"{result['horizon']} imagined):"]
    if "obs_mse" in result:
        lines.append(f"    obs MSE     {result['obs_mse']:.4f}  (repeat-last-obs baseline "
                     f"{result['obs_mse_baseline']:.4f})")
    lines.append(f"    reward MAE  {result['reward_mae']:.4f}  (mean-reward baseline "
                 f"{result['reward_mae_baseline']:.4f})")
    return lines


def cmd_train(args) -> dict:
    """``worldloom train``: collect, train with progress and TensorBoard, save, evaluate, plot."""
    import gymnasium as gym

    from worldloom import create_world_model
    from worldloom.core import registry
    from worldloom.training import Trainer, TrainingConfig
    from worldloom.training.callbacks import LoggingCallback, ProgressCallback
    from worldloom.training.data import collect_episodes, make_env
    from worldloom.training.evaluation import evaluate_loss, open_loop_prediction, plot_open_loop

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    print(f"Collecting {args.episodes} + {args.test_episodes} random-policy episodes of {args.env} ...")
    env = make_env(args.env)
    try:
        buffer = collect_episodes(env, args.episodes, seed=args.seed)
        test = collect_episodes(env, max(args.test_episodes, 1), seed=args.seed + 100_000)
    finally:
        env.close()
    print(f"  train: {buffer.num_transitions} transitions in {buffer.num_episodes} episodes; "
          f"held out: {test.num_transitions} in {test.num_episodes}")

    overrides = dict(args.overrides)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    if not Path(args.model).exists():
        family, _ = registry.resolve(args.model)
        if discrete and "action_type" in family.config_cls.field_names():
            overrides.setdefault("action_type", "discrete")
    model = create_world_model(args.model, obs_shape=buffer.obs_shape, action_dim=buffer.action_dim,
                               device=args.device, seed=args.seed, **overrides)
    print(f"Model {model!r}")
    seq_len = args.seq_len
    before = evaluate_loss(model, test, args.batch_size, seq_len, num_batches=4, seed=args.seed)

    config = TrainingConfig(total_steps=args.steps, batch_size=args.batch_size, sequence_length=seq_len,
                            learning_rate=args.lr, warmup_steps=args.warmup_steps, log_interval=args.log_interval,
                            eval_interval=args.eval_interval, save_interval=args.save_interval, device=args.device,
                            seed=args.seed, steps_per_dispatch=args.steps_per_dispatch,
                            checkpoint_dir=str(out / "checkpoints"))
    trainer = Trainer(model, config)
    if not args.no_progress:
        trainer.add_callback(ProgressCallback())
    trainer.add_callback(LoggingCallback(log_dir=out / "logs"))
    model = trainer.train(buffer, resume=args.resume)

    model.save_pretrained(out / "model")
    buffer.save(out / "buffer.npz")
    test.save(out / "test_buffer.npz")
    after = evaluate_loss(model, test, args.batch_size, seq_len, num_batches=4, seed=args.seed)
    result = open_loop_prediction(model, test, context=args.context, horizon=args.horizon)
    plot = plot_open_loop(result, out / "imagination.png",
                          title=f"{args.env}: {model.family} after {trainer.step} updates (held-out episode)")
    summary = {
        "env": args.env, "model": args.model, "steps": trainer.step, "interrupted": trainer.interrupted,
        "seconds": round(time.perf_counter() - began, 1), "final_train_losses": trainer.last_losses,
        "heldout_loss_before": before, "heldout_loss_after": after,
        "eval_history": trainer.eval_history,
        "open_loop": {k: v for k, v in result.items() if isinstance(v, (int, float))},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nTrained {trainer.step} updates in {summary['seconds']:.0f} s"
          + (" (interrupted)" if trainer.interrupted else ""))
    print(f"  final train losses: {_losses_text(trainer.last_losses)}")
    print(f"  held-out loss: {before['loss']:.4f} before training -> {after['loss']:.4f} after")
    print("\n".join(_report_open_loop(result)))
    print("Files:")
    for name, path in (("model", out / "model"), ("train buffer", out / "buffer.npz"),
                       ("held-out buffer", out / "test_buffer.npz"), ("TensorBoard logs", out / "logs"),
                       ("checkpoints", out / "checkpoints"), ("imagination plot", plot),
                       ("summary", out / "summary.json")):
        print(f"  {name:17s} {path}")
    return summary


def cmd_collect(args) -> None:
    from worldloom.training.data import collect_episodes

    buffer = collect_episodes(args.env, args.episodes, seed=args.seed, capacity=args.capacity)
    buffer.save(args.out)
    print(f"Wrote {buffer.num_transitions} transitions in {buffer.num_episodes} episodes of {args.env} "
          f"to {args.out}")


def _load(args):
    from worldloom import create_world_model
    from worldloom.training import ReplayBuffer

    if not Path(args.model).is_dir():
        raise ConfigError(f"--model must be a directory written by save_pretrained, got {args.model!r}.")
    model = create_world_model(args.model, device=args.device)
    buffer = ReplayBuffer.load(args.buffer, obs_shape=model.config.obs_shape)
    return model, buffer


def cmd_evaluate(args) -> dict:
    from worldloom.training.evaluation import evaluate_loss

    model, buffer = _load(args)
    losses = evaluate_loss(model, buffer, args.batch_size, args.seq_len, args.batches, seed=args.seed)
    print(f"Loss of {args.model} on {args.buffer} ({args.batches} batches of {args.batch_size}x{args.seq_len}):")
    for name, value in losses.items():
        print(f"  {name}: {value:.4f}")
    return losses


def cmd_imagine(args) -> dict:
    from worldloom.training.evaluation import open_loop_prediction, plot_open_loop

    model, buffer = _load(args)
    result = open_loop_prediction(model, buffer, context=args.context, horizon=args.horizon)
    plot_open_loop(result, args.out)
    print("\n".join(_report_open_loop(result)))
    print(f"Plot written to {args.out}")
    return result


def cmd_agent(args) -> dict:
    from worldloom.agents import AgentRunConfig, run_agent

    config = AgentRunConfig(
        env=args.env, algo=args.algo, model=args.model, total_steps=args.steps, num_envs=args.num_envs,
        train_ratio=args.train_ratio, updates_per_step=args.updates_per_step, batch_size=args.batch_size,
        sequence_length=args.seq_len, learning_rate=args.lr, seed_steps=args.seed_steps,
        eval_every=args.eval_every, eval_episodes=args.eval_episodes, checkpoint_every=args.checkpoint_every,
        out_dir=args.out, seed=args.seed, episodic=args.episodic, log_every=args.log_every)
    result = run_agent(config, progress=not args.no_progress, resume=args.resume, **dict(args.set))
    final = result["final_eval_return"]
    print(f"{args.algo} on {args.env}: final evaluation return {final if final is None else round(final, 1)} "
          f"after {args.steps} steps and {result['updates']} updates ({result['wall_time'] / 60:.1f} min)")
    print(f"learning curve: {result['curves']}\nagent: {result['out_dir']}/agent\n"
          f"TensorBoard: tensorboard --logdir {result['out_dir']}/tensorboard")
    return result


def cmd_list_models(args) -> None:
    from worldloom import list_models

    if not args.verbose:
        print("\n".join(list_models()))
        return
    family = None
    for info in list_models(verbose=True).values():
        if info["family"] != family:
            family = info["family"]
            space = ", ".join(f"{k}={v}" for k, v in info["space"].items())
            print(f"{family}: {info['description']}\n  (parameters counted at {space})")
        aliases = f"  aliases: {', '.join(info['aliases'])}" if info["aliases"] else ""
        print(f"  {info['name']:20s} {info['num_parameters']:>13,} params{aliases}")


def main(argv=None) -> int:
    """Entry point of the ``worldloom`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    handlers = {"train": cmd_train, "collect": cmd_collect, "evaluate": cmd_evaluate, "imagine": cmd_imagine,
                "agent": cmd_agent, "list-models": cmd_list_models}
    try:
        handlers[args.command](args)
    except WorldloomError as err:
        print(f"worldloom {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an output path that cannot be written, a missing input file
        if isinstance(err, BrokenPipeError):  # e.g. `worldloom list-models | head`
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
            return 0
        print(f"worldloom {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
