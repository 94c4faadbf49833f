"""Published scores the suite benchmark puts beside ours.

The tables live in :mod:`worldloom.training.published` (``worldloom plot`` draws them too) and are
re-exported here.

What each table holds is in that module's docstring; how the values were computed follows.

The DMC keys count frames (physics steps), not agent steps. danijar/dreamerv3
logs ``step * repeat`` (``embodied/core/logger.py``: ``int(self.step) *
self.multiplier``; ``dreamerv3/main.py``: the multiplier is the task suite's
``repeat``), and the published runs used ``env.dmc.repeat: 2``
(``dreamerv3/configs.yaml`` of the commit that added the scores, 2411f7d;
the current file has repeat 1). The data agree: in
``dmc_vision-dreamerv3.json.gz`` each seed's episodes come in groups of 8
logged 2 apart, the groups 8,002 apart: 8 environments x 500 actions x 2
frames. So 100,000 frames are 50,000 agent steps of the published runs, and
a run at repeat 2 compares its agent step ``s`` with the value at ``2 s``.
The published DMC vision runs are ``size12m`` at train ratio 512; the proprio
runs ``size12m`` at ratio 512 too (that commit's ``dmc_vision`` and
``dmc_proprio`` blocks).

The values were computed with :func:`published_curve`, which also draws a
run's evaluations beside a published curve on its axis::

    python -m benchmarks.reference_scores dmc_vision-dreamerv3.json.gz dmc_cartpole_balance --repeat 2 \\
        --ours 50000:484.6 100000:722.1 --frames 100000 200000 --plot curve.png
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

from worldloom.training.published import ATARI, DMC_PROPRIO, DMC_VISION, human_normalized  # noqa: F401 - re-exported


def task_runs(path: str | Path, task: str) -> list[dict]:
    """The runs (one per seed) of ``task`` in a scores file of danijar/dreamerv3.

    Raises:
        SystemExit: the file is missing or not a scores file, or has no run of ``task``.
    """
    try:
        with gzip.open(path, "rt") as file:
            runs = [run for run in json.load(file) if run["task"] == task]
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise SystemExit(f"{path}: expected a DreamerV3 scores file (.json.gz), "
                         f"got {type(err).__name__}: {err}") from None
    if not runs:
        raise SystemExit(f"{path}: expected runs of task {task!r}, found none.")
    return runs


def published_curve(path: str | Path, task: str, frames, half_window: int = 10_000, seeds: bool = False):
    """DreamerV3's published return around each frame count of ``frames``.

    Args:
        path: A scores file of danijar/dreamerv3 (``scores/<suite>-dreamerv3.json.gz``: a list of
            ``{"task", "seed", "xs", "ys"}`` runs, ``xs`` in frames, ``ys`` episode returns).
        task: Its task name, e.g. ``"dmc_cartpole_balance"``.
        frames: Frame counts ``[N]``.
        half_window: Episodes within this many frames either side count (``f - w <= x <= f + w``).
        seeds: Also return each count's lowest and highest seed mean.

    Returns:
        ``[N]`` means over seeds of each seed's mean return in the window (``None`` where no seed
        has an episode there); with ``seeds``, ``(means, lows, highs)``.

    Raises:
        SystemExit: the file is missing or not a scores file, or has no run of ``task``.
    """
    runs = task_runs(path, task)
    means, lows, highs = [], [], []
    for frame in frames:
        per_seed = []
        for run in runs:
            window = [y for x, y in zip(run["xs"], run["ys"]) if frame - half_window <= x <= frame + half_window]
            if window:
                per_seed.append(sum(window) / len(window))
        means.append(sum(per_seed) / len(per_seed) if per_seed else None)
        lows.append(min(per_seed, default=None))
        highs.append(max(per_seed, default=None))
    return (means, lows, highs) if seeds else means


def plot(path: Path, task: str, scores: str, ours: list[tuple[int, float]], repeat: int, ratio: float,
         batch_steps: int = 1024, reference_ratio: float = 512, title: str = "", episodes: int | None = None,
         target: float | None = None) -> None:
    """Draw a run's evaluations beside the published curve, by frames and by updates; written to a temporary, renamed.

    ``ours`` are ``(agent step, return)`` pairs; frames are ``repeat`` per agent step. Updates are
    ``steps * ratio / batch_steps`` for the run and ``frames / 2 * reference_ratio / batch_steps``
    for the published runs (action repeat 2).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    grid = list(range(10_000, 200_001, 2_000))
    means, lows, highs = published_curve(scores, task, grid, seeds=True)
    runs = len(task_runs(scores, task))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, scale_ours, scale_ref, label in (
            (axes[0], repeat, 1, "frames (physics steps; the published curve's axis)"),
            (axes[1], ratio / batch_steps, reference_ratio / 2 / batch_steps, "updates")):
        axis.fill_between([f * scale_ref for f in grid], lows, highs, color="tab:green", alpha=0.2,
                          label="DreamerV3 published, seed range")
        axis.plot([f * scale_ref for f in grid], means, color="tab:green",
                  label=f"DreamerV3 published, mean of {runs} seeds (training episodes)")
        axis.plot([s * scale_ours for s, _ in ours], [r for _, r in ours], "o-", color="tab:orange",
                  label="worldloom, evaluation" + (f" ({episodes} episodes)" if episodes else ""))
        if target is not None:
            axis.axhline(target, color="gray", lw=0.8)
        axis.set_xlabel(label)
        axis.set_ylabel("return")
        axis.set_ylim(0, 1000)
        axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value / 1000:g}k"))
    axes[1].set_xlim(0, max(s * ratio / batch_steps for s, _ in ours) * 4)
    axes[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    figure.savefig(temporary, dpi=90)
    plt.close(figure)
    os.replace(temporary, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="DreamerV3's published curve at given frame counts, and a plot.")
    parser.add_argument("scores", help="scores/<suite>-dreamerv3.json.gz of danijar/dreamerv3")
    parser.add_argument("task", help="its task name, e.g. dmc_cartpole_balance")
    parser.add_argument("--frames", type=int, nargs="+", default=[100_000, 200_000, 500_000, 1_000_000])
    parser.add_argument("--ours", nargs="*", default=[], metavar="STEP:RETURN", help="a run's evaluations")
    parser.add_argument("--repeat", type=int, default=1, help="the run's action repeat (frames per agent step)")
    parser.add_argument("--ratio", type=float, default=64, help="the run's replayed steps per agent step")
    parser.add_argument("--plot", type=Path, help="draw the run beside the published curve into this file")
    parser.add_argument("--title", default="")
    parser.add_argument("--episodes", type=int, help="evaluation episodes behind each of the run's returns")
    parser.add_argument("--target", type=float, help="draw a line at this return (a task's target)")
    args = parser.parse_args(argv)
    means, lows, highs = published_curve(args.scores, args.task, args.frames, seeds=True)
    print("| frames | DreamerV3 (mean over seeds) | lowest seed | highest seed |\n|---|---|---|---|")
    for frame, mean, low, high in zip(args.frames, means, lows, highs):
        print(f"| {frame:,} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in (mean, low, high)) + " |")
    if args.plot:
        if not args.ours:
            parser.error("--plot draws a run beside the published curve: give its evaluations with --ours "
                         "STEP:RETURN ...")
        ours = [(int(step), float(ret)) for step, ret in (item.split(":") for item in args.ours)]
        plot(args.plot, args.task, args.scores, ours, args.repeat, args.ratio, title=args.title,
             episodes=args.episodes, target=args.target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
