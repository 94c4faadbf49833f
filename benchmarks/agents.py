"""Agents learning real tasks: DreamerV3 on CartPole-v1, TD-MPC2 on Pendulum-v1, CartPole-v1 and dmc:cartpole-balance.

    python -m benchmarks.agents --task cartpole --seeds 0 1 2
    python -m benchmarks.agents --task cartpole-quick --seeds 0 1   # the quick preset
    python -m benchmarks.agents --task pendulum --seeds 0
    python -m benchmarks.agents --task cartpole-tdmpc2 --seeds 0   # TD-MPC2, episodic
    python -m benchmarks.agents --task cartpole-balance-tdmpc2 --seeds 0   # TD-MPC2 on dmc:cartpole-balance
    python -m benchmarks.agents --task cartpole --steps 5000 --quick   # a short look
    python -m benchmarks.agents --throughput --against HEAD --steps 3000 --rounds 3
    python -m benchmarks.agents --throughput --burst --against HEAD --steps 120 --rounds 2

``--throughput`` times the online loop instead: DreamerV3 ``size1m`` at train
ratio 64 on CartPole-v1 (one update every 16 environment steps), updates per
second of the loop's wall time (acting, stepping, replay and updates; the
programs compiled by an earlier run of as many steps in the same process,
through JAX's persistent cache). Learning starts once replay holds 16 x 64
windows (about 1,100 steps), so ``--steps`` must be well above that (default
3,000). ``--against REV`` runs the same measurement on a git
revision's ``worldloom/`` (exported with ``git archive``) in alternating
rounds and prints the ratio of the medians (above 1: the working tree is faster).
``--burst`` times the loop where K-update programs apply: a tiny DreamerV3
(B2 T8) at ratio 320, 20 updates owed per environment step.

Targets: DreamerV3 ``size1m`` reaches a mean evaluation return of at least 475
on CartPole-v1 within 50,000 environment steps; TD-MPC2 reaches at least -200
on Pendulum-v1 within 20,000 steps, in episodic mode at least 475 on
CartPole-v1 within 10,000 steps, and at least 900 on ``dmc:cartpole-balance``
within 20,000 steps. Each run writes its learning curve, logs and
agent under ``runs/benchmarks/<task>-seed<N>/``; the summary (seed, target
reached at which step, best and final evaluation return, wall time, curve path)
is printed and appended to ``<out>/results.md`` (``--results FILE`` for another;
docs/results.md is written by hand from these).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from worldloom.agents import AgentRunConfig, run_agent

TASKS = {
    # The reference defaults (configs=["defaults"]), not the quick preset CartPole-v1 selects.
    "cartpole": dict(config=dict(env="CartPole-v1", algo="dreamerv3", configs=["defaults"], model="dreamerv3:size1m",
                                 total_steps=50_000, eval_every=2_500, eval_episodes=10), target=475.0),
    # The quick preset CartPole-v1 selects (docs/agents.md, Presets): its settings, its target and its budget.
    "cartpole-quick": dict(config=dict(env="CartPole-v1", algo="dreamerv3"), target=475.0),
    "pendulum": dict(config=dict(env="Pendulum-v1", algo="tdmpc2", model="tdmpc2:1m", total_steps=20_000,
                                 eval_every=2_000, eval_episodes=5), target=-200.0),
    # A terminating task: TD-MPC2 in episodic mode (termination head, planning stops at predicted ends).
    "cartpole-tdmpc2": dict(config=dict(env="CartPole-v1", algo="tdmpc2", model="tdmpc2:1m", total_steps=10_000,
                                        eval_every=1_000, eval_episodes=5, episodic=True), target=475.0),
    # TD-MPC2 on its own benchmark: DeepMind Control from the state vector, at its reference's action repeat 2.
    "cartpole-balance-tdmpc2": dict(config=dict(env="dmc:cartpole-balance", algo="tdmpc2", model="tdmpc2:1m",
                                                total_steps=20_000, eval_every=2_500, eval_episodes=3), target=900.0),
}


def first_step_reaching(history, target: float):
    return next((step for step, value in history if value >= target), None)


THROUGHPUT = dict(env="CartPole-v1", algo="dreamerv3", configs=["defaults"], model="dreamerv3:size1m", train_ratio=64.0,
                  eval_episodes=0, checkpoint_every=0, device="cpu", seed=0)
# Where K-update programs apply: a tiny DreamerV3 (B2 T8) at ratio 320 owes 20 updates per environment step.
THROUGHPUT_BURST = dict(THROUGHPUT, batch_size=2, sequence_length=8, train_ratio=320.0, seed_steps=16,
                        replay_online=False, world_model=dict(deter=64, hidden=32, units=32, classes=4, stoch=4))
# One measurement in a fresh interpreter: a warm-up run compiles, the timed run reuses the cached programs.
_MEASURE = """
import json, sys, tempfile
from worldloom.agents import AgentRunConfig, run_agent
settings, steps = json.loads(sys.argv[1]), int(sys.argv[2])
model = settings.pop("world_model", {})
settings = {k: v for k, v in settings.items() if k in AgentRunConfig.field_names()}  # a tree before presets
root = tempfile.mkdtemp()
run_agent(AgentRunConfig(**settings, total_steps=steps, out_dir=root + "/warm"), progress=False, **model)
result = run_agent(AgentRunConfig(**settings, total_steps=steps, out_dir=root + "/timed"), progress=False, **model)
print(json.dumps({"updates": result["updates"], "wall_time": result["wall_time"]}))
"""


def _measure(tree: str, steps: int, cache: str, settings: dict) -> float:
    """Updates per second of one timed run, with ``tree`` first on the path."""
    env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    out = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(settings), str(steps)], env=env, check=True,
                         capture_output=True, text=True, cwd=tempfile.gettempdir()).stdout
    row = json.loads(out.strip().splitlines()[-1])
    if not row["updates"]:
        raise SystemExit(f"benchmarks.agents --throughput: the run of {steps} environment steps made no update "
                         "(learning had not started); pass a larger --steps.")
    return row["updates"] / row["wall_time"]


def throughput(against: str | None, steps: int, rounds: int, burst: bool = False) -> dict:
    """Online update throughput of the working tree (and of ``against``) over ``rounds`` alternating rounds."""
    root = Path(__file__).resolve().parents[1]
    trees = {"working tree": str(root)}
    settings = THROUGHPUT_BURST if burst else THROUGHPUT
    with tempfile.TemporaryDirectory() as scratch:
        if against:
            export = Path(scratch) / "against"
            export.mkdir()
            archive = subprocess.run(["git", "archive", against, "worldloom"], cwd=root, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(export)], input=archive, check=True)
            trees[against] = str(export)
        rates = {label: [] for label in trees}
        caches = {label: tempfile.mkdtemp(dir=scratch) for label in trees}
        for number in range(rounds):
            order = list(trees) if number % 2 == 0 else list(trees)[::-1]
            for label in order:
                rates[label].append(_measure(trees[label], steps, caches[label], settings))
                print(f"round {number + 1}: {label}: {rates[label][-1]:.3f} updates/s", flush=True)
    summary = {label: statistics.median(values) for label, values in rates.items()}
    if against:
        summary["ratio"] = summary["working tree"] / summary[against]
    return {"median_updates_per_sec": summary, "rounds": rates, "steps": steps, **settings}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--throughput", action="store_true", help="time the online loop instead (see above)")
    parser.add_argument("--burst", action="store_true",
                        help="with --throughput: a tiny model owing 20 updates per environment step")
    parser.add_argument("--against", help="with --throughput: a git revision to time beside the working tree")
    parser.add_argument("--rounds", type=int, default=3, help="with --throughput: alternating rounds")
    parser.add_argument("--task", choices=sorted(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, help="environment steps (default: the target's budget)")
    parser.add_argument("--train-ratio", type=float, help="DreamerV3 replayed steps per environment step")
    parser.add_argument("--lr", type=float, help="learning rate (default: the reference's)")
    parser.add_argument("--warmup", type=int, help="learning-rate warm-up updates (default: the reference's)")
    parser.add_argument("--stop-at-target", action="store_true",
                        help="end a seed's run at the first evaluation that reaches the target")
    parser.add_argument("--out", default="runs/benchmarks")
    parser.add_argument("--results", help="the Markdown file the summary is appended to (default: <out>/results.md)")
    parser.add_argument("--quick", action="store_true", help="do not append to the results file")
    args = parser.parse_args(argv)
    if args.throughput:
        print(json.dumps(throughput(args.against, args.steps or 3000, args.rounds, args.burst), indent=2))
        return 0
    if args.task is None:
        parser.error("--task is required (or --throughput)")

    task = TASKS[args.task]
    rows = []
    for seed in args.seeds:
        overrides = dict(task["config"], seed=seed, out_dir=str(Path(args.out) / f"{args.task}-seed{seed}"))
        if args.steps:
            overrides["total_steps"] = args.steps
        if args.train_ratio:
            overrides["train_ratio"] = args.train_ratio
        if args.lr:
            overrides["learning_rate"] = args.lr
        if args.warmup is not None:
            overrides["warmup_steps"] = args.warmup
        if args.stop_at_target:
            overrides["stop_return"] = task["target"]
        config = AgentRunConfig(**overrides)
        result = run_agent(config, resume=True)
        reached = first_step_reaching(result["eval"], task["target"])
        rows.append({
            "task": args.task, "env": config.env, "algo": config.algo, "model": config.model, "seed": seed,
            "env_steps": result["env_steps"], "updates": result["updates"], "target": task["target"],
            "training": (f"ratio {config.train_ratio:g}" if config.algo == "dreamerv3"
                         else f"{config.updates_per_step:g} update/step"),
            "learning_rate": config.resolved("learning_rate"),
            "reached_at": reached, "best_eval": max((v for _, v in result["eval"]), default=None),
            "final_eval": result["final_eval_return"], "wall_time_min": result["wall_time"] / 60,
            "curve": result["curves"],
        })
        print(json.dumps(rows[-1]))
    if not args.quick:
        path = Path(args.results or Path(args.out) / "results.md")
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a") as handle:
            if new:
                handle.write("# Results\n\nLearning runs of `python -m benchmarks.agents`; each row is one seed.\n")
            stamp = datetime.date.today().isoformat()
            handle.write(f"\n## {args.task} ({stamp}, {platform.machine()}, {len(os.sched_getaffinity(0))} cores)\n\n")
            handle.write("| seed | env steps | training | lr | updates | target | reached at step | best eval "
                         "| final eval | wall time (min) | curve |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
            for row in rows:
                handle.write(f"| {row['seed']} | {row['env_steps']} | {row['training']} | {row['learning_rate']} "
                             f"| {row['updates']} | {row['target']} "
                             f"| {row['reached_at'] or 'not reached'} | {row['best_eval']} | {row['final_eval']} "
                             f"| {row['wall_time_min']:.1f} | `{row['curve']}` |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
