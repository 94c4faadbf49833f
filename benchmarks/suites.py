"""Agents on the papers' benchmark tasks, scored in the papers' format, beside the papers' numbers.

    python -m benchmarks.suites --algo dreamerv3 --tasks atari:pong atari:breakout --steps 100000 --train-ratio 256
    python -m benchmarks.suites --algo dreamerv3 --tasks dmc:cartpole-balance:pixels --steps 100000 \\
        --model dreamerv3:size1m --train-ratio 256 --eval-every 10000 --results docs/results.md

Each task runs ``run_agent`` once per seed with the reference's environment
settings (``worldloom.envs``). The table gives, for DMC, the evaluation return
at each frame count the run passed where DreamerV3's published curve has a
value (100k, 200k, 500k, 1M frames) and at the end. The published DMC curves
count frames (agent steps x action repeat; repeat 2 in the published runs), so
a run's agent steps are converted with its own repeat (``env_options``, else
its reference's, ``worldloom.envs.DMC_REFERENCE``) before they are compared.
For Atari the table gives the final score, its
human-normalised score ``(score - random) / (human - random)`` and DreamerV3's
Atari 100k score and its normalised score (``benchmarks/reference_scores.py``
says where the published numbers come from). ``--results`` replaces the
section between the markers ``<!-- suites:begin -->`` and ``<!-- suites:end
-->`` of that file (appended when absent) with the table, the command and the
wall time; ``runs/suites/results.json`` keeps every curve.

Long runs are better made with ``worldloom agent``, which checkpoints and
resumes (``--resume``); ``--runs`` then tabulates finished run directories
instead of running anything::

    python -m benchmarks.suites --runs runs/pong-seed0 runs/pong-seed1 --results docs/results.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.reference_scores import ATARI, human_normalized
from worldloom.core.config import parse_setting
from worldloom.envs.suites import parse_suite_id
from worldloom.training.plots import published_points

BEGIN, END = "<!-- suites:begin -->", "<!-- suites:end -->"


def run_task(task: str, algo: str, seed: int, args, overrides: dict) -> dict:
    from worldloom.agents import AgentRunConfig, run_agent

    fields = dict(env=task, algo=algo, total_steps=args.steps, eval_every=args.eval_every,
                  eval_episodes=args.eval_episodes, checkpoint_every=0, seed=seed,
                  out_dir=str(Path(args.out) / f"{task.replace(':', '_')}-{algo}-seed{seed}"))
    if args.model:
        fields["model"] = args.model
    if args.train_ratio is not None:
        fields["train_ratio"] = args.train_ratio
    started = time.time()
    result = run_agent(AgentRunConfig(**fields), progress=not args.no_progress, **overrides)
    return {"task": task, "algo": algo, "seed": seed, "eval": result["eval"], "wall_s": time.time() - started,
            "repeat": None}


def read_run(run_dir: Path) -> dict:
    """A finished ``worldloom agent`` run directory as a ``run_task`` result (from config.yaml and summary.json)."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        return {"task": config["env"], "algo": config["algo"], "seed": config["seed"],
                "eval": [tuple(point) for point in summary["eval"]], "wall_s": summary["wall_time"],
                "repeat": (config.get("env_options") or {}).get("repeat")}
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError) as err:
        raise SystemExit(f"{run_dir}: expected a finished `worldloom agent` run (config.yaml and summary.json), "
                         f"got {type(err).__name__}: {err}") from None


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _at(curve, step):
    """The last evaluation return at or before ``step`` (None when the run evaluated none by then)."""
    passed = [ret for at, ret in curve if at <= step]
    return passed[-1] if passed else None


def frames_per_step(run: dict) -> int:
    """Physics steps (frames) per agent step of a DMC run: its own action repeat, else its reference's."""
    from worldloom.envs import DMC_REFERENCE

    return run.get("repeat") or DMC_REFERENCE[run["algo"]].repeat


def _fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def table(runs: list[dict]) -> str:
    """The Markdown tables of ``runs`` (``run_task`` results), DMC and Atari apart."""
    lines = []
    by_task: dict[tuple, list[dict]] = {}
    for run in runs:
        by_task.setdefault((run["task"], run["algo"]), []).append(run)
    dmc = [(key, group) for key, group in by_task.items() if key[0].startswith("dmc:")]
    atari = [(key, group) for key, group in by_task.items() if key[0].startswith("atari:")]
    if dmc:
        lines += ["| task | agent | seeds | agent steps | frames | return | DreamerV3 (published, same frames) |",
                  "|---|---|---|---|---|---|---|"]
        for (task, algo), group in dmc:
            points = published_points(task, "dreamerv3")  # the id parsed: aliases such as cup-catch name it too
            published = dict(points[0]) if points else {}
            # Each run's curve by frames, the published curves' axis.
            curves = [[(at * frames_per_step(run), ret) for at, ret in run["eval"]] for run in group]
            repeats = {frames_per_step(run) for run in group}
            last = max((at for curve in curves for at, _ in curve), default=0)
            for frames in sorted({f for f in published if f <= last} | {last}):
                ours = _mean([_at(curve, frames) for curve in curves])
                steps = f"{frames // min(repeats):,}" if len(repeats) == 1 else "-"
                lines.append(f"| {task} | {algo} | {len(group)} | {steps} | {frames:,} | {_fmt(ours)} | "
                             f"{_fmt(published.get(frames))} |")
    if atari:
        if lines:
            lines.append("")
        lines += ["| game | agent | seeds | agent steps | score | random | human | human-normalised | "
                  "DreamerV3 at 100k (published) | its human-normalised |", "|---|---|---|---|---|---|---|---|---|---|"]
        for (task, algo), group in atari:
            game = parse_suite_id(task)[1]["game"]
            score = _mean([run["eval"][-1][1] if run["eval"] else None for run in group])
            last = max((run["eval"][-1][0] for run in group if run["eval"]), default=0)
            if game in ATARI:
                random, human, paper = ATARI[game]
                ours = None if score is None else human_normalized(game, score)
                lines.append(f"| {game} | {algo} | {len(group)} | {last:,} | {_fmt(score)} | {random} | {human} | "
                             f"{_fmt(ours, 3)} | {paper} | {human_normalized(game, paper):.3f} |")
            else:
                lines.append(f"| {game} | {algo} | {len(group)} | {last:,} | {_fmt(score)} | - | - | - | - | - |")
        lines += ["", "DreamerV3's published Atari 100k runs most likely played gray frames with sticky actions "
                  "(0.25), the full action set and no no-op starts; `atari:<game>` plays RGB frames without sticky "
                  "actions, with the minimal set and up to 30 no-ops unless `env_options` say otherwise "
                  "(docs/agents.md, Benchmark suites)."]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the suites section of ``path`` with ``text`` (appended when absent); written to a temporary, renamed."""
    old = path.read_text() if path.exists() else ""
    section = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + section + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + section + "\n"
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(new)
    os.replace(temporary, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tasks", nargs="+", help="suite ids: dmc:<domain>-<task>[:pixels], atari:<game>")
    source.add_argument("--runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="tabulate these finished `worldloom agent` runs instead of running tasks")
    parser.add_argument("--algo", choices=["dreamerv3", "tdmpc2"], default="dreamerv3")
    parser.add_argument("--steps", type=int, default=100_000, help="environment (agent) steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--model", help="world-model preset (default: the agent's)")
    parser.add_argument("--train-ratio", type=float, help="DreamerV3 replayed steps per env step")
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], type=parse_setting, metavar="KEY=VALUE",
                        help="world-model field (the value read as YAML: 3, 1e-4, [64, 64], text)")
    parser.add_argument("--out", default="runs/suites")
    parser.add_argument("--results", help="Markdown file whose suites section gets the table")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = dict(args.set)
    started = time.time()
    if args.runs:
        runs = [read_run(run_dir) for run_dir in args.runs]
        hours = sum(run["wall_s"] for run in runs) / 3600
    else:
        runs = [run_task(task, args.algo, seed, args, overrides) for task in args.tasks for seed in args.seeds]
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(runs, indent=2))
        hours = (time.time() - started) / 3600
    text = table(runs)
    print(text)
    if args.results:
        command = "python -m benchmarks.suites " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section(Path(args.results), f"`{command}`: {hours:.2f} h of wall time on this machine"
                                          f"{' (the runs added up)' if args.runs else ''}.\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
