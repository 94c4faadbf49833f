"""The ``worldloom`` command: train, collect, evaluate, imagine, agent, play, list-models.

Examples::

    worldloom train --env CartPole-v1 --out runs/cartpole
    worldloom collect --env CartPole-v1 --episodes 100 --out data.npz
    worldloom evaluate --model runs/cartpole/model --buffer runs/cartpole/test_buffer.npz
    worldloom imagine --model runs/cartpole/model --buffer runs/cartpole/test_buffer.npz --out plot.png
    worldloom agent --env CartPole-v1 --algo dreamerv3 --steps 50000 --out runs/cartpole-agent
    worldloom play runs/cartpole-agent --episodes 10 --video cartpole.gif
    worldloom list-models --verbose
    worldloom --version
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from worldloom.core.errors import CheckpointError, ConfigError, DistributedError, WorldloomError

ENV_HELP = ("Gymnasium env id, or a suite task with its reference settings: dmc:<domain>-<task>[:pixels], "
            "atari:<game>")


def _setting(text: str) -> tuple[str, object]:
    """``--set KEY=VALUE`` of every command: the key and the value read as YAML (one parser for all)."""
    from worldloom.core.config import parse_setting

    try:
        return parse_setting(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--set: ")) from err


# ``worldloom train`` flags and the TrainingConfig fields they set.
TRAIN_FLAGS = {"steps": "total_steps", "batch_size": "batch_size", "seq_len": "sequence_length",
               "lr": "learning_rate", "warmup_steps": "warmup_steps", "steps_per_dispatch": "steps_per_dispatch",
               "log_interval": "log_interval", "eval_interval": "eval_interval", "save_interval": "save_interval",
               "device": "device", "seed": "seed"}

# The settings of a ``train`` run file: the flags' names, plus ``world_model`` and ``training``.
TRAIN_FILE_KEYS = ("env", "model", "episodes", "test_episodes", "steps", "batch_size", "seq_len", "lr", "warmup_steps",
                   "steps_per_dispatch", "log_interval", "eval_interval", "save_interval", "context", "horizon", "seed",
                   "out", "device", "logger")


def _apply_train_file(args) -> None:
    """Resolve ``worldloom train``'s settings as ``worldloom agent``'s are (``run_file.resolve_settings``): its run
    file (``args.config``, or none), then flags typed (which win), then ``--set``; ``world_model`` and
    ``--set`` model fields become ``args.overrides``, the ``training`` section and TrainingConfig fields
    ``args.training``."""
    from worldloom.agents.run_file import resolve_settings
    from worldloom.training import TrainingConfig

    training_fields = set(TrainingConfig.field_names())
    field_flags = {field: flag for flag, field in TRAIN_FLAGS.items()}  # learning_rate -> lr, ...

    def place(values: dict, parts: dict, key: str, value) -> None:
        section, _, name = key.partition(".") if key.startswith(("world_model.", "training.")) else ("", "", key)
        if not section and name in TRAIN_FILE_KEYS:  # a setting with a flag of its own: as if the flag was typed
            values[name] = value
            return
        if section != "world_model" and name in field_flags:  # a TrainingConfig field a flag sets: that flag,
            if not (section and field_flags[name] in typed):  # so the run file records it (a typed flag wins
                values[field_flags[name]] = value             # over a file's training section)
            return
        parts["training" if section == "training" or name in training_fields else "world_model"][name] = value

    typed = _typed("train", args.argv_tail, TRAIN_FILE_KEYS)
    values, parts = resolve_settings(args.config, (*TRAIN_FILE_KEYS, "world_model", "training"),
                                     ("world_model", "training"), typed, args.overrides, place)
    for key, value in values.items():
        if key in TRAIN_FILE_KEYS and value is not None:
            setattr(args, key, value)
    args.overrides = list(parts["world_model"].items())
    args.training = parts["training"]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("worldloom")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` for flags with a value; not for switches or defaults left to the program."""

    def _get_help_string(self, action):
        unset = action.default is None or action.default is False or action.default == []
        if unset or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worldloom", description="Latent world models (DreamerV3, TD-MPC2).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    parser.commands = {}  # name -> the command's parser

    def command(name: str, text: str) -> argparse.ArgumentParser:
        parser.commands[name] = commands.add_parser(name, help=text, description=text, formatter_class=_Help)
        return parser.commands[name]

    def run_flags(sub: argparse.ArgumentParser, out: str) -> None:
        """The flags of a command that makes a run directory (train, agent)."""
        sub.add_argument("--config", metavar="RUN_FILE",
                         help="a YAML run file (a run directory's config.yaml); flags you type override it")
        sub.add_argument("--out", default=out, help="output directory")
        sub.add_argument("--device", default="auto", help="cpu, cuda, tpu or auto")
        sub.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                         help="continue the run in RUN_DIR (alone: in OUT) from its checkpoints/; without it, "
                              "a run never writes over an earlier one (OUT-2, OUT-3, ...)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        sub.add_argument("--logger", choices=["tensorboard", "wandb"], default="tensorboard",
                         help="where metrics go besides metrics.jsonl: tensorboard (logs/, always written) or wandb "
                              "(W&B as well; WANDB_MODE=offline keeps it in the run directory)")
        several = sub.add_argument_group("several processes (data parallel; run the same command in each)")
        several.add_argument("--coordinator", metavar="HOST:PORT",
                             help="address of process 0, reachable from every process")
        several.add_argument("--num-processes", type=int, help="processes in the run")
        several.add_argument("--process-id", type=int, help="this process's index, 0 to N-1")
        several.add_argument("--distributed", action="store_true",
                             help="join a run from the cluster's environment (SLURM, Open MPI, TPU pods)")

    train = command("train", "collect episodes with a random policy and train a world model")
    train.add_argument("--env", default="CartPole-v1", help=ENV_HELP)
    train.add_argument("--model", default="dreamerv3:size1m", help="preset, alias or saved directory")
    train.add_argument("--episodes", type=int, default=100, help="training episodes to collect")
    train.add_argument("--test-episodes", type=int, default=20, help="held-out episodes for the report")
    train.add_argument("--steps", type=int, default=600, help="updates")
    train.add_argument("--batch-size", type=int, default=16, help="windows per update (B)")
    train.add_argument("--seq-len", type=int, default=32, help="steps per window (T)")
    train.add_argument("--lr", type=float, default=3e-4, help="learning rate")
    train.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up (updates)")
    train.add_argument("--steps-per-dispatch", type=int, default=10, help="updates run per jitted call")
    train.add_argument("--log-interval", type=int, default=50, help="updates between logged losses")
    train.add_argument("--eval-interval", type=int, default=200, help="updates between held-out evaluations")
    train.add_argument("--save-interval", type=int, default=0,
                       help="updates between checkpoints; 0: only at the end and on Ctrl-C")
    train.add_argument("--context", type=int, default=5, help="observed steps before imagining (plot)")
    train.add_argument("--horizon", type=int, default=15, help="imagined steps (plot)")
    train.add_argument("--set", dest="overrides", type=_setting, action="append", default=[],
                       metavar="KEY=VALUE", help="override a TrainingConfig field (grad_clip=1.0) or a model "
                                                 "config field (deter=256); applied last (repeatable)")
    train.add_argument("--seed", type=int, default=0, help="seeds collection, model and sampling")
    run_flags(train, "runs/worldloom")

    collect = command("collect", "collect random-policy episodes into a replay buffer file")
    collect.add_argument("--env", default="CartPole-v1", help=ENV_HELP)
    collect.add_argument("--episodes", type=int, default=100, help="episodes to collect")
    collect.add_argument("--capacity", type=int, default=100_000, help="buffer capacity (transitions)")
    collect.add_argument("--out", required=True, help="the .npz file to write")
    collect.add_argument("--seed", type=int, default=0, help="seeds the environment and the random policy")

    evaluate = command("evaluate", "loss of a saved model on a buffer")
    imagine = command("imagine", "plot imagined versus real episodes of a buffer")
    for sub in (evaluate, imagine):
        sub.add_argument("run", nargs="?", metavar="RUN",
                         help="a `worldloom train` run directory: its model/ and test_buffer.npz, in place of "
                              "--model and --buffer")
        sub.add_argument("--model", help="a directory written by save_pretrained")
        sub.add_argument("--buffer", help="a .npz replay buffer")
        sub.add_argument("--device", default="auto", help="cpu, cuda, tpu or auto")
        sub.add_argument("--seed", type=int, default=0, help="seeds window sampling")
    evaluate.add_argument("--batch-size", type=int, default=16, help="windows per batch")
    evaluate.add_argument("--seq-len", type=int, default=32, help="steps per window")
    evaluate.add_argument("--batches", type=int, default=8, help="batches averaged")
    imagine.add_argument("--context", type=int, default=5, help="observed steps before imagining")
    imagine.add_argument("--horizon", type=int, default=15, help="imagined steps")
    imagine.add_argument("--out", help="PNG to write (default: RUN/imagine.png, else ./imagination.png)")
    imagine.add_argument("--video", metavar="PATH",
                         help="also write the open-loop video of image observations (real frames, frames imagined "
                              "from --context observed steps, their difference) to this .gif (or .mp4)")

    agent = command("agent", "train an agent online in a Gymnasium environment")
    agent.add_argument("--env", default="CartPole-v1", help=ENV_HELP)
    agent.add_argument("--algo", choices=["dreamerv3", "tdmpc2"], default="dreamerv3",
                       help="DreamerV3 actor-critic or TD-MPC2 planning")
    agent.add_argument("--configs", nargs="+", metavar="NAME",
                       help="presets stacked in order, later ones winning: dmc_proprio, dmc_vision, atari100k, "
                            "size1m ... size400m, debug, tdmpc2, tdmpc2_pixels, tdmpc2_gymnasium, quick, defaults "
                            "(default: the one --env selects; flags you type win over presets)")
    agent.add_argument("--model", help="world-model preset (default: the presets', else dreamerv3:size1m / "
                                       "tdmpc2:5m)")
    agent.add_argument("--steps", type=int, help="environment steps (default: the presets', else 50000)")
    agent.add_argument("--num-envs", type=int, help="environments stepped together (default: 1)")
    agent.add_argument("--train-ratio", type=float,
                       help="DreamerV3 replayed steps per env step (default: the presets', else 32)")
    agent.add_argument("--updates-per-step", type=float, help="TD-MPC2 updates per env step (default: 1)")
    agent.add_argument("--batch-size", type=int, help="windows per update (default: DreamerV3 16, TD-MPC2 256)")
    agent.add_argument("--seq-len", type=int,
                       help="steps per window (default: the presets', else DreamerV3 64, TD-MPC2 the model's "
                            "horizon + 1, 4)")
    agent.add_argument("--lr", type=float, help="learning rate (default: the presets', else DreamerV3 4e-5, "
                                                      "TD-MPC2 3e-4)")
    agent.add_argument("--warmup", type=int,
                       help="linear learning-rate warm-up, in updates (default: the presets', else DreamerV3 1000, "
                            "TD-MPC2 0)")
    agent.add_argument("--seed-steps", type=int,
                       help="random-action steps before learning (default: DreamerV3 0, TD-MPC2 max(1000, 5 L))")
    agent.add_argument("--episodic", action=argparse.BooleanOptionalAction, default=None,
                       help="TD-MPC2: termination head and planning that stops at predicted terminations "
                            "(default: on when random actions reach a termination)")
    agent.add_argument("--log-every", type=int, default=10, help="updates between logged losses")
    agent.add_argument("--eval-every", type=int,
                       help="environment steps between evaluations (default: the presets', else 5000)")
    agent.add_argument("--eval-episodes", type=int, help="episodes per evaluation (default: the presets', else 5)")
    agent.add_argument("--stop-return", type=float,
                       help="stop once a mean evaluation return reaches this (default: the presets', else run "
                            "all steps)")
    agent.add_argument("--checkpoint-every", type=int, default=10_000,
                       help="environment steps between checkpoints; 0: only at the end")
    agent.add_argument("--set", action="append", default=[], type=_setting, metavar="KEY=VALUE",
                       help="override any run field (batch_size=8) or world-model field (deter=256, or "
                            "world_model.deter=256); applied last (repeatable)")
    agent.add_argument("--no-eval-video", dest="eval_video", action="store_false",
                       help="no video of each evaluation's first episode (default: videos/eval_step_N.gif in the "
                            "run directory and TensorBoard's eval/video)")
    agent.add_argument("--seed", type=int, default=0, help="seeds environments, model and sampling")
    run_flags(agent, "runs/agent")

    play = command("play", "watch a trained agent: evaluate a run's saved agent, optionally record a video")
    play.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `worldloom agent`")
    play.add_argument("--episodes", type=int, default=5, help="episodes to play")
    play.add_argument("--seed", type=int, default=0, help="episode i starts from reset(seed=SEED + i)")
    play.add_argument("--video", help="write the first episode to this .gif (or .mp4, with moviepy)")
    play.add_argument("--fps", type=int, default=30, help="frames per second of the video")
    play.add_argument("--device", default="auto", help="cpu, cuda, tpu or auto")

    plotting = command("plot", "return curves of runs (mean and range over seeds) beside the published ones")
    plotting.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by `worldloom agent`")
    plotting.add_argument("--out", default="curves.png", help="PNG to write")
    plotting.add_argument("--title", help="the figure's title")

    listing = command("list-models", "available presets")
    listing.add_argument("--verbose", action="store_true", help="sizes, parameter counts, descriptions")
    return parser


RUN_LOCK = ".worldloom-run.lock"  # held in a run directory while a command writes it


def _resumed_run_file(command: str, run_dir) -> Path:
    """The run file (``config.yaml``) of the run ``--resume`` names, checked to be a run of ``command``
    (after :func:`_run_dir`'s check that ``config.yaml`` and ``checkpoints/`` are there).

    Raises:
        ConfigError: no run directory worldloom wrote, or a run of the other command.
    """
    import yaml

    from worldloom.training.plots import run_kind

    path = _run_dir(run_dir, True) / "config.yaml"
    try:
        kind = run_kind(yaml.safe_load(path.read_text()))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"--resume: expected a run directory that worldloom wrote, holding its config.yaml, got "
                          f"{str(run_dir)!r}: {err}") from err
    if kind != command:
        found = f"a run of `worldloom {kind}` (its config.yaml): resume it with `worldloom {kind} --resume " \
                f"{run_dir}`" if kind else "whose config.yaml is not a worldloom run file"
        raise ConfigError(f"--resume: expected a run of `worldloom {command}`, got {str(run_dir)!r}, {found}.")
    return path


def _run_dir(out: str, resume, checkpoints: str = "checkpoints") -> Path:
    """The directory a run writes to: a new one per run, or the one ``--resume`` names.

    Without ``--resume``, ``out`` when it does not exist or is empty, else the
    first free ``out-2``, ``out-3``, ... (an earlier run is never written over).
    ``--resume`` alone continues ``out``; ``--resume PATH`` continues ``PATH``.

    Raises:
        CheckpointError: a live run is writing ``out`` (or the run to resume).
    """
    from worldloom.core.files import WriterLock

    if resume:
        path = Path(out if resume is True else resume)
        missing = [name for name in ("config.yaml", f"{checkpoints}/") if not (path / name).exists()]
        if missing:
            raise ConfigError(f"--resume: expected a run directory that worldloom wrote (config.yaml and "
                              f"{checkpoints}/), got {str(path)!r}, which has no {' and no '.join(missing)}.")
        return path
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out: expected a directory, got the file {str(path)!r}.")
    if (path / RUN_LOCK).exists():  # a run writing there now is refused, not moved aside
        WriterLock(path, RUN_LOCK).acquire().release()
    number = 1
    while path.exists() and any(path.iterdir()):
        number += 1
        path = Path(f"{out}-{number}")
    if number > 1:
        print(f"{out} holds an earlier run; writing this one to {path}")
    return path


@contextlib.contextmanager
def _claimed(path: Path):
    """Hold the run directory's lock while the command writes it (a second writer is refused at once); a
    directory this made and left empty (the run failed before writing) is removed again."""
    from worldloom.core.files import WriterLock

    made = not path.exists()
    lock = WriterLock(path, RUN_LOCK).acquire()
    try:
        yield path
    finally:
        lock.release()
        if made:
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty


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
    mean = "the mean reward of these episodes" if result.get("reward_baseline_in_sample") else \
        "the training mean reward"
    line = (f"    reward MAE  {result['reward_mae']:.4f}  (baseline: predict {mean} "
            f"{result['reward_baseline']:.3g}, MAE {result['reward_mae_baseline']:.4f})")
    if result.get("rewards_constant"):
        line += (f"; every predicted step's real reward is {result['constant_reward']:g}, so a constant predictor "
                 "can be exact and this baseline is trivial: read the MAE as how close the model gets to it")
    lines.append(line)
    return lines


def _join(args) -> bool:
    """Join a multi-process run when ``--coordinator`` or ``--distributed`` asks for it; whether this is process 0."""
    from worldloom import distributed as dist

    flags = {"--coordinator": args.coordinator, "--num-processes": args.num_processes,
             "--process-id": args.process_id}
    given = [flag for flag, value in flags.items() if value is not None]
    if given and len(given) < 3:
        missing = ", ".join(flag for flag in flags if flag not in given)
        raise ConfigError(f"{', '.join(given)} needs {missing} too: expected all three (or --distributed).")
    if given and args.distributed:
        raise ConfigError("--distributed reads the cluster's environment; expected it or --coordinator/"
                          "--num-processes/--process-id, not both.")
    if given:
        dist.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.distributed:
        dist.initialize()
    return dist.is_primary()


def cmd_train(args) -> dict:
    """``worldloom train``: collect, train with progress and TensorBoard, save, evaluate, plot."""
    from worldloom import distributed as dist
    from worldloom.core import registry
    from worldloom.core.config import close_matches
    from worldloom.core.devices import resolve_device
    from worldloom.envs import make_env
    from worldloom.models.factory import get_config, names_saved_model
    from worldloom.training import TrainingConfig
    from worldloom.training.checkpoints import list_checkpoints
    from worldloom.training.data import env_spaces
    from worldloom.training.logs import check_logger

    # Settings are checked before any episode is collected and before the run directory is made.
    primary = _join(args)
    training = dict(args.training)  # a run file's TrainingConfig fields, then --set ones (_apply_train_file)
    model_sets = list(args.overrides)
    config = TrainingConfig(**{**{field: getattr(args, dest) for dest, field in TRAIN_FLAGS.items()}, **training})
    resolve_device(args.device)
    check_logger(args.logger)  # wandb without its package: said before any episode is collected
    for flag, value in (("--episodes", args.episodes), ("--test-episodes", args.test_episodes)):
        if value < 1:
            raise ConfigError(f"{flag}: expected at least 1 episode, got {value}.")
    for flag, value in (("--context", args.context), ("--horizon", args.horizon)):
        if value < 1:
            raise ConfigError(f"{flag}: expected at least 1 step, got {value}.")
    env = make_env(args.env)  # made, not stepped: its spaces check the model settings
    try:
        obs_shape, action_dim, discrete = env_spaces(env, "worldloom train")
        overrides = dict(model_sets)
        saved_model = names_saved_model(args.model)
        config_cls = type(get_config(args.model)) if saved_model else registry.resolve(args.model)[0].config_cls
        if not saved_model and discrete and "action_type" in config_cls.field_names():
            overrides.setdefault("action_type", "discrete")
        for key in overrides:  # neither the model's field nor training's: say so, with both sets of names
            if key not in config_cls.accepted_names():
                known = (*config_cls.accepted_names(), *TrainingConfig.field_names(), *TRAIN_FILE_KEYS)
                raise ConfigError(f"--set {key}: not a setting of worldloom train, a {config_cls.__name__} field or "
                                  f"a TrainingConfig field.{close_matches(key, known)} Model fields: "
                                  f"{', '.join(config_cls.field_names())}; TrainingConfig fields: "
                                  f"{', '.join(TrainingConfig.field_names())}.")
        get_config(args.model, obs_shape=obs_shape, action_dim=action_dim, **overrides)
    except BaseException:
        env.close()
        raise
    if args.resume:
        resume_dir = Path(args.out if args.resume is True else args.resume)
        saved = list_checkpoints(resume_dir / "checkpoints")
        if saved and saved[-1][0] > config.total_steps:
            env.close()
            raise ConfigError(f"--resume: {resume_dir} has done {saved[-1][0]} updates; expected --steps of at least "
                              f"{saved[-1][0]} to go on, got {config.total_steps}.")
        # A finished run (process 0's files decide, for every process) is left as it is.
        finished = dist.broadcast(_finished_summary(resume_dir, saved, config.total_steps) if primary else None)
        if finished is not None:
            env.close()
            print(f"{resume_dir} has done its {config.total_steps} updates; nothing to train (its results are in "
                  f"{resume_dir / 'summary.json'}). Pass --steps above {config.total_steps} to train on.")
            return finished
    # With replay_sharding="process" each process collects and holds only its block of the training episodes.
    first, last = 0, args.episodes
    if config.replay_sharding == "process" and dist.process_count() > 1:
        index, count = dist.process_index(), dist.process_count()
        if args.episodes < count:
            env.close()
            raise ConfigError(f"--episodes: replay_sharding='process' splits the training episodes among the "
                              f"{count} processes; expected at least {count}, got {args.episodes}.")
        first, last = index * args.episodes // count, (index + 1) * args.episodes // count
    try:
        out = Path(dist.broadcast(str(_run_dir(args.out, args.resume)) if primary else None))
    except BaseException:
        env.close()
        raise
    with _claimed(out) if primary else contextlib.nullcontext():
        return _train(args, config.replace(checkpoint_dir=str(out / "checkpoints")), env, (first, last),
                      overrides, model_sets, out, primary)


def _saved_episodes(run_dir: Path, episodes: int, test_episodes: int):
    """``(buffer, test)`` a run saved (an interrupted or finished run), when they hold the episodes its
    settings ask for; None otherwise (they are collected again, from the same seeds)."""
    from worldloom.training import ReplayBuffer

    paths = run_dir / "buffer.npz", run_dir / "test_buffer.npz"
    if not all(path.is_file() for path in paths):
        return None
    buffer, test = (ReplayBuffer.load(path) for path in paths)
    return (buffer, test) if (buffer.num_episodes, test.num_episodes) == (episodes, test_episodes) else None


def _finished_summary(run_dir: Path, saved: list, total_steps: int) -> dict | None:
    """The summary of a run that finished ``total_steps`` updates (its newest checkpoint and its summary.json
    agree, and the run was not interrupted), else None."""
    from worldloom.core.files import read_json_object

    summary = read_json_object(run_dir / "summary.json") if saved and saved[-1][0] == total_steps else None
    done = summary is not None and summary.get("steps") == total_steps and not summary.get("interrupted")
    return summary if done else None


def _train(args, config, env, block: tuple[int, int], overrides: dict, model_sets: list, out: Path,
           primary: bool) -> dict:
    """``worldloom train`` once its settings are checked and ``out`` is claimed."""
    import numpy as np

    from worldloom import create_world_model
    from worldloom import distributed as dist
    from worldloom.core.files import atomic_write_text
    from worldloom.training import Trainer
    from worldloom.training.callbacks import LoggingCallback, ProgressCallback
    from worldloom.training.checkpoints import list_checkpoints
    from worldloom.training.data import collect_episodes
    from worldloom.training.evaluation import evaluate_loss, open_loop_prediction, plot_open_loop
    from worldloom.training.interrupts import Interrupted, signal_name

    first, last = block
    # The run file: every flag's value, the model overrides and the TrainingConfig fields no flag sets.
    run_config = {key: getattr(args, key) for key in TRAIN_FILE_KEYS}
    run_config["out"] = str(out)
    run_config["world_model"] = dict(model_sets)
    run_config["training"] = {k: v for k, v in config.to_dict().items()
                              if k not in TRAIN_FLAGS.values() and k != "checkpoint_dir"}
    run_config = json.loads(json.dumps(run_config, default=str))
    began = time.perf_counter()
    share = "" if (first, last) == (0, args.episodes) else f" (this process: training episodes {first} to {last - 1})"
    saved = _saved_episodes(out, last - first, args.test_episodes) if args.resume and not share else None
    if saved is not None:  # a resumed run trains on the episodes it collected
        env.close()
        buffer, test = saved
        print(f"Reading the run's episodes from {out / 'buffer.npz'} and {out / 'test_buffer.npz'}")
    else:
        print(f"Collecting {args.episodes} + {args.test_episodes} random-policy episodes of {args.env}{share} ...")
        try:
            buffer = collect_episodes(env, last - first, seed=args.seed + first)  # episode e resets with seed + e
            test = collect_episodes(env, args.test_episodes, seed=args.seed + 100_000)
        finally:
            env.close()
    print(f"  train: {buffer.num_transitions} transitions in {buffer.num_episodes} episodes; "
          f"held out: {test.num_transitions} in {test.num_episodes}")
    # What the held-out episodes must hold, checked before anything is written or trained.
    seq_len = args.seq_len
    if test.num_transitions < seq_len:
        raise ConfigError(f"The held-out episodes hold {test.num_transitions} transitions, fewer than --seq-len "
                          f"{seq_len}: raise --test-episodes (now {args.test_episodes}) or lower --seq-len.")
    longest = int(np.diff(test.episode_bounds(), axis=1).max())
    if longest <= args.context:
        raise ConfigError(f"--context {args.context}: the open-loop plot observes that many steps of a held-out "
                          f"episode and imagines the rest; expected fewer than the longest held-out episode "
                          f"({longest} steps): lower --context or raise --test-episodes.")
    if primary:
        import yaml

        atomic_write_text(out / "config.yaml", yaml.safe_dump(run_config, sort_keys=False))
        print("Run settings (saved as " + str(out / "config.yaml") + "):\n  "
              + ", ".join(f"{key}={value}" for key, value in run_config.items() if not isinstance(value, dict))
              + "".join(f"\n  {section}: " + ", ".join(f"{k}={v}" for k, v in run_config[section].items())
                        for section in ("world_model", "training") if run_config[section]))

    model = create_world_model(args.model, obs_shape=buffer.obs_shape, action_dim=buffer.action_dim,
                               device=args.device, seed=args.seed, **overrides)
    print(f"Model {model!r}")
    before = evaluate_loss(model, test, args.batch_size, seq_len, num_batches=4, seed=args.seed)

    trainer = Trainer(model, config)
    if not args.no_progress:
        trainer.add_callback(ProgressCallback())
    trainer.add_callback(LoggingCallback(log_dir=out / "logs", metrics_file=out / "metrics.jsonl",
                                         logger=args.logger))
    if args.resume:
        saved = list_checkpoints(out / "checkpoints")
        print(f"Resuming {out} from step {saved[-1][0] if saved else 0} ({out / 'checkpoints'})")
    model = trainer.train(buffer, resume=bool(args.resume))
    if not primary:  # process 0 saves, evaluates and reports the run
        print(f"Process {dist.process_index()}: trained {trainer.step} updates; process 0 writes {out}")
        return {"steps": trainer.step, "out": str(out)}

    print(f"Saving the model and buffers to {out}, then evaluating on the held-out episodes ...", flush=True)
    model.save_pretrained(out / "model")
    buffer.save(out / "buffer.npz")
    test.save(out / "test_buffer.npz")
    if trainer.interrupt_signal is not None:
        raise Interrupted(trainer.interrupt_signal, f"{signal_name(trainer.interrupt_signal)}: saved {out} at update "
                                                    f"{trainer.step} of {config.total_steps}; resume with: worldloom "
                                                    f"train --resume {out}")
    after = evaluate_loss(model, test, args.batch_size, seq_len, num_batches=4, seed=args.seed)
    result = open_loop_prediction(model, test, context=args.context, horizon=args.horizon,
                                  baseline_reward=_mean_reward(buffer))
    plot = plot_open_loop(result, out / "imagination.png",
                          title=f"{args.env}: {model.family} after {trainer.step} updates (held-out episode)")
    from worldloom.training.videos import write_open_loop_video

    video = write_open_loop_video(result, out / "videos" / "open_loop.gif")  # image observations only
    summary = {
        "env": args.env, "model": args.model, "steps": trainer.step, "interrupted": trainer.interrupted,
        "seconds": round(time.perf_counter() - began, 1), "final_train_losses": trainer.last_losses,
        "heldout_loss_before": before, "heldout_loss_after": after,
        "eval_history": trainer.eval_history,
        "open_loop": {k: v for k, v in result.items() if isinstance(v, (int, float))},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    resumed = f" (resumed at step {trainer.start_step}; {trainer.step} in all)" if trainer.start_step else ""
    print(f"\nTrained {trainer.step - trainer.start_step} updates in {summary['seconds']:.0f} s{resumed}"
          + (" (interrupted)" if trainer.interrupted else ""))
    print(f"  final train losses: {_losses_text(trainer.last_losses)}")
    print(f"  held-out loss on test_buffer.npz ({test.num_episodes} episodes never trained on): "
          f"{before['loss']:.4f} before training -> {after['loss']:.4f} after "
          "(the progress bar's `eval` is the Trainer's eval split of the training episodes)")
    print("\n".join(_report_open_loop(result)))
    print("Files:")
    for name, path in (("model", out / "model"), ("train buffer", out / "buffer.npz"),
                       ("held-out buffer", out / "test_buffer.npz"), ("TensorBoard logs", out / "logs"),
                       ("checkpoints", out / "checkpoints"), ("imagination plot", plot),
                       ("summary", out / "summary.json"), ("run config", out / "config.yaml"),
                       ("metrics", out / "metrics.jsonl"), *((("open-loop video", video),) if video else ())):
        print(f"  {name:17s} {path}")
    return summary


def cmd_collect(args) -> None:
    from worldloom.core.archives import check_target
    from worldloom.training import _buffer_io
    from worldloom.training.data import collect_episodes

    # Before collecting: a user's file there stays.
    check_target(args.out, "replay buffer", earlier=_buffer_io.REQUIRED, format=_buffer_io.FORMAT)
    buffer = collect_episodes(args.env, args.episodes, seed=args.seed, capacity=args.capacity)
    buffer.save(args.out)
    print(f"Wrote {buffer.num_transitions} transitions in {buffer.num_episodes} episodes of {args.env} "
          f"to {args.out}")


def _model_and_buffer(args) -> None:
    """``args.model`` and ``args.buffer`` from a run directory (RUN) where they are not named."""
    if args.run is not None and (Path(args.run) / "agent" / "world_model").is_dir() and not (
            args.model and args.buffer):
        run = Path(args.run)
        raise ConfigError(f"{str(run)!r} is a `worldloom agent` run, which keeps no held-out "
                          f"episodes: expected a `worldloom train` run, or --model and --buffer, e.g. --model "
                          f"{run / 'agent' / 'world_model'} --buffer {run / 'checkpoints' / 'replay.npz'} (the "
                          f"agent's replay, which it trained on); `worldloom play {run}` runs its agent.")
    if args.run is not None:  # a train run directory: its model and held-out episodes, unless named
        args.model = args.model or str(Path(args.run) / "model")
        args.buffer = args.buffer or str(Path(args.run) / "test_buffer.npz")
    if args.model is None or args.buffer is None:
        raise ConfigError(f"expected a run directory (RUN) or both --model and --buffer, got "
                          f"{'--model alone' if args.model else '--buffer alone' if args.buffer else 'neither'}.")


def _load(args):
    from worldloom import create_world_model
    from worldloom.training import ReplayBuffer

    if (Path(args.model) / "model" / "config.json").is_file() and not (Path(args.model) / "config.json").exists():
        args.model = str(Path(args.model) / "model")  # a `worldloom train` run directory: its saved model
    if not Path(args.model).is_dir():
        raise ConfigError(f"--model must be a directory written by save_pretrained, got {args.model!r}.")
    model = create_world_model(Path(args.model), device=args.device)  # a path, even one named like a preset
    buffer = ReplayBuffer.load(args.buffer, obs_shape=model.config.obs_shape)
    return model, buffer


def cmd_evaluate(args) -> dict:
    from worldloom.training.evaluation import evaluate_loss

    _model_and_buffer(args)
    model, buffer = _load(args)
    losses = evaluate_loss(model, buffer, args.batch_size, args.seq_len, args.batches, seed=args.seed)
    print(f"Loss of {args.model} on {args.buffer} ({args.batches} batches of {args.batch_size}x{args.seq_len}):")
    scaled = {name: value for name, value in losses.items() if name in SCALED_LOSS_NAMES}
    for name, value in losses.items():
        if name not in scaled:
            print(f"  {name}: {value:.4f}")
    if scaled:  # compute_loss's terms under the original library's names, as they enter `loss`
        print("  as they enter loss (scaled): " + ", ".join(f"{name} {value:.4f}" for name, value in scaled.items()))
    return losses


# compute_loss's keys in the original library's names: the loss terms times their scales (kl_loss: dyn and rep).
SCALED_LOSS_NAMES = ("kl_loss", "reconstruction_loss", "reward_loss", "continue_loss")


def _mean_reward(buffer) -> float:
    """The mean reward per step over every episode of ``buffer`` (a reward baseline out of the held-out sample)."""
    import numpy as np

    return float(np.concatenate([buffer.episode(i)["rewards"] for i in range(buffer.num_episodes)]).mean())


def cmd_imagine(args) -> dict:
    from worldloom.training._buffer_io import read_rewards
    from worldloom.training.evaluation import open_loop_prediction, plot_open_loop

    _model_and_buffer(args)
    if args.out is None:
        args.out = str(Path(args.run) / "imagine.png") if args.run is not None else "imagination.png"
    from worldloom.training.plots import check_figure_path
    from worldloom.training.videos import check_video_path

    check_figure_path(args.out, "--out")  # both written after the work: checked before it
    if args.video:
        check_video_path(args.video, "--video")
    model, buffer = _load(args)
    if args.video and len(model.config.obs_shape) != 3:  # said before anything is written
        raise ConfigError(f"--video: an open-loop video shows image observations; {args.model} takes observations "
                          f"of shape {tuple(model.config.obs_shape)}. Leave out --video for the plot alone.")
    if args.video and model.family == "tdmpc2":
        raise ConfigError(f"--video: an open-loop video shows decoded observations; {args.model} is a TD-MPC2 "
                          "model, which decodes none. Leave out --video for the plot alone.")
    baseline, trained_on = None, Path(args.run) / "buffer.npz" if args.run is not None else None
    if trained_on is not None and trained_on.is_file():  # else these episodes' own mean
        try:
            baseline = float(read_rewards(trained_on).mean())
        except WorldloomError as err:
            print(f"The reward baseline is these episodes' own mean: {trained_on} could not be read ({err})")
    result = open_loop_prediction(model, buffer, context=args.context, horizon=args.horizon,
                                  baseline_reward=baseline)
    plot_open_loop(result, args.out)
    print("\n".join(_report_open_loop(result)))
    print(f"Plot written to {args.out}")
    if args.video:
        from worldloom.training.videos import open_loop_frames, write_video

        print(f"Video written to {write_video(open_loop_frames(result), args.video, fps=10)}")
    return result


def cmd_play(args) -> dict:
    from worldloom.agents.play import play

    result = play(args.run_dir, episodes=args.episodes, seed=args.seed, video=args.video, fps=args.fps,
                  device=args.device)
    returns = result["returns"]
    print(f"{len(returns)} episodes from seed {args.seed}: return {sum(returns) / len(returns):.1f} mean, "
          f"{min(returns):.1f} to {max(returns):.1f}; lengths {result['lengths']}")
    if result["video"]:
        print(f"video of episode 0: {result['video']}")
    return result


# ``worldloom agent`` flags and the AgentRunConfig fields they set.
AGENT_FLAGS = {"env": "env", "algo": "algo", "configs": "configs", "model": "model", "steps": "total_steps",
               "num_envs": "num_envs", "warmup": "warmup_steps",
               "train_ratio": "train_ratio", "updates_per_step": "updates_per_step", "batch_size": "batch_size",
               "seq_len": "sequence_length", "lr": "learning_rate", "seed_steps": "seed_steps",
               "episodic": "episodic", "log_every": "log_every", "eval_every": "eval_every",
               "eval_episodes": "eval_episodes", "stop_return": "stop_return", "checkpoint_every": "checkpoint_every",
               "out": "out_dir", "seed": "seed", "device": "device", "logger": "logger", "eval_video": "eval_video"}


def _typed(command: str, argv_tail: list[str], dests) -> dict:
    """The values of the flags among ``dests`` that were typed after ``command`` (not their defaults).

    argparse fills in a default only where the namespace it is given lacks the
    name, so a namespace holding a marker for each of ``dests`` keeps the
    marker wherever no flag was typed.
    """
    unset = object()
    namespace = argparse.Namespace(**{dest: unset for dest in dests})
    typed = vars(_parser().commands[command].parse_args(argv_tail, namespace=namespace))
    return {dest: value for dest, value in typed.items() if dest in dests and value is not unset}


def _given_flags(args) -> dict:
    """Run fields set by flags the user typed (not argparse defaults), so a run file's values stand otherwise."""
    return {AGENT_FLAGS[dest]: value for dest, value in _typed("agent", args.argv_tail, AGENT_FLAGS).items()}


def cmd_agent(args) -> dict:
    from worldloom import distributed as dist
    from worldloom.agents import run_agent
    from worldloom.agents.loop import reached
    from worldloom.agents.run_file import resolve_run
    from worldloom.core.devices import resolve_device

    flags = _given_flags(args)
    run_file = args.config
    if args.resume:  # a resumed run keeps its own settings (unless --config); flags typed now override them
        saved = _resumed_run_file("agent", flags.get("out_dir", args.out) if args.resume is True else args.resume)
        run_file = run_file or saved
    if run_file is None:  # no run file: the flags' defaults are the run's
        flags = {field: getattr(args, dest) for dest, field in AGENT_FLAGS.items()}
    config, model_overrides = resolve_run(run_file, flags, args.set)
    resolve_device(config.device)  # an absent device fails before the run directory is made
    primary = _join(args)
    config = config.replace(out_dir=dist.broadcast(str(_run_dir(config.out_dir, args.resume)) if primary else None))
    with _claimed(Path(config.out_dir)) if primary else contextlib.nullcontext():
        result = run_agent(config, progress=not args.no_progress, resume=bool(args.resume), **model_overrides)
    final = result["final_eval_return"]
    steps = f"{result['env_steps']} steps"
    if result["env_steps"] < config.total_steps and reached(result["eval"], config.stop_return):
        steps = (f"{result['env_steps']} of {config.total_steps} steps (stopped at the target return "
                 f"{config.stop_return:g})")
    print(f"{config.algo} on {config.env}: final evaluation return {final if final is None else round(final, 1)} "
          f"after {steps} and {result['updates']} updates ({result['wall_time'] / 60:.1f} min)")
    print(f"learning curve: {result['curves']}\nagent: {result['out_dir']}/agent\n"
          f"TensorBoard: tensorboard --logdir {result['out_dir']}/logs")
    return result


def cmd_plot(args) -> str:
    """``worldloom plot``: the runs' return curves beside the published ones, as a PNG."""
    from worldloom.training.plots import plot_runs

    path = plot_runs(args.runs, args.out, title=args.title)
    print(f"Curves of {len(args.runs)} run{'s' if len(args.runs) != 1 else ''} written to {path}")
    return str(path)


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


COMPILING_COMMANDS = ("train", "evaluate", "imagine", "agent", "play")
COMPILATION_CACHE_BYTES = 4 * 2**30  # the oldest programs are dropped beyond this


def compilation_cache_dir(environ: dict, configured: str | None) -> Path | None:
    """Where the command keeps the programs it compiles, for the next run of the same settings.

    ``configured`` (JAX's own setting, e.g. ``JAX_COMPILATION_CACHE_DIR``) wins
    and is left as it is (None returned); ``WORLDLOOM_COMPILATION_CACHE`` set to
    ``0``/``off``/empty turns the cache off (None), a path moves it; by default
    ``$XDG_CACHE_HOME/worldloom/xla`` (``~/.cache/worldloom/xla``).
    """
    if configured:
        return None
    setting = environ.get("WORLDLOOM_COMPILATION_CACHE")
    if setting is not None:
        if setting.strip().lower() in ("", "0", "off", "false", "no", "none"):
            return None
        return Path(setting).expanduser()
    return Path(environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "worldloom" / "xla"


def use_compilation_cache() -> Path | None:
    """Turn on JAX's persistent compilation cache at :func:`compilation_cache_dir` (a resumed or repeated run
    then loads its update programs instead of compiling them again); returns the directory, or None."""
    import jax

    path = compilation_cache_dir(os.environ, jax.config.jax_compilation_cache_dir)
    if path is not None:
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
    return path


def main(argv=None) -> int:
    """Entry point of the ``worldloom`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv_tail = argv[argv.index(args.command) + 1:]
    args.training = {}
    if args.command == "train":
        try:
            if args.resume:  # a resumed run keeps its own settings (unless --config); flags typed now override
                saved = _resumed_run_file("train", args.out if args.resume is True else args.resume)
                args.config = args.config or str(saved)
            _apply_train_file(args)
        except ConfigError as err:
            print(f"worldloom train: error: {err}", file=sys.stderr)
            return 2
    handlers = {"train": cmd_train, "collect": cmd_collect, "evaluate": cmd_evaluate, "imagine": cmd_imagine,
                "agent": cmd_agent, "play": cmd_play, "plot": cmd_plot,
                "list-models": cmd_list_models}
    if args.command in COMPILING_COMMANDS:
        use_compilation_cache()
    from worldloom.training.interrupts import Interrupted

    try:
        handlers[args.command](args)
    except Interrupted as stop:  # saved: one line that says how to resume; 130 for Ctrl-C, 143 for SIGTERM
        print(f"worldloom {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except DistributedError as err:  # a lost process: skip jax.distributed's shutdown handshake with it
        from worldloom.distributed import exit_after

        exit_after(f"worldloom {args.command}: {err}", 2)
    except CheckpointError as err:  # a file that cannot be read or written: the data on disk is as it was
        print(f"worldloom {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
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
