"""Published scores the suite benchmark puts beside ours.

- ``ATARI``: game -> (random, human, DreamerV3 at Atari 100k). Random and
  human scores are the standard ones (the DQN and Agent57 papers' "human
  gamer" figures, as DreamerV3's ``baselines.yaml`` lists them). The DreamerV3
  score is the mean over its 5 seeds of the episodes of the last 10,000
  frames before 400,000 frames (100k agent steps), from the official
  repository's ``scores/atari100k-dreamerv3.json.gz``.
- ``DMC_VISION``, ``DMC_PROPRIO``: task -> {frames: DreamerV3's return}, the
  mean over seeds of each seed's mean episode return within 10,000 frames
  either side of that frame count, from ``scores/dmc_vision-dreamerv3.json.gz``
  (10 seeds, to 1M frames) and ``scores/dmc_proprio-dreamerv3.json.gz``
  (5 seeds, logged every 10,000 frames, to 490,000: its 500k values are the
  490k point).

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

ATARI = {
    "alien": (227.8, 7127.7, 1115.6),
    "amidar": (5.8, 1719.5, 96.0),
    "assault": (222.4, 742.0, 664.4),
    "asterix": (210.0, 8503.3, 1042.7),
    "bank_heist": (14.2, 753.1, 395.7),
    "battle_zone": (2360.0, 37187.5, 19600.0),
    "boxing": (0.1, 12.1, 81.2),
    "breakout": (1.7, 30.5, 9.6),
    "chopper_command": (811.0, 7387.8, 1918.0),
    "crazy_climber": (10780.5, 35829.4, 80060.0),
    "demon_attack": (152.1, 1971.0, 485.9),
    "freeway": (0.0, 29.6, 0.0),
    "frostbite": (65.2, 4334.7, 3310.0),
    "gopher": (257.6, 2412.5, 2570.0),
    "hero": (1027.0, 30826.4, 13370.8),
    "jamesbond": (29.0, 302.8, 498.3),
    "kangaroo": (52.0, 3035.0, 2673.3),
    "krull": (1598.0, 2665.5, 8089.7),
    "kung_fu_master": (258.5, 22736.3, 25560.0),
    "ms_pacman": (307.3, 6951.6, 1454.0),
    "pong": (-20.7, 14.6, -5.0),
    "private_eye": (24.9, 69571.3, 3237.8),
    "qbert": (163.9, 13455.0, 2921.0),
    "road_runner": (11.5, 7845.0, 19180.0),
    "seaquest": (68.4, 42054.7, 902.0),
    "up_n_down": (533.4, 11693.2, 49456.0),
}

DMC_VISION = {
    "acrobot-swingup": {100_000: 39.3, 200_000: 57.8, 500_000: 129.5, 1_000_000: 252.0},
    "ball_in_cup-catch": {100_000: 876.6, 200_000: 953.5, 500_000: 969.7, 1_000_000: 970.5},
    "cartpole-balance": {100_000: 947.8, 200_000: 976.6, 500_000: 994.1, 1_000_000: 996.2},
    "cartpole-balance_sparse": {100_000: 989.6, 200_000: 972.9, 500_000: 992.3, 1_000_000: 938.3},
    "cartpole-swingup": {100_000: 614.5, 200_000: 792.4, 500_000: 845.3, 1_000_000: 861.9},
    "cartpole-swingup_sparse": {100_000: 67.6, 200_000: 349.0, 500_000: 690.2, 1_000_000: 753.5},
    "cheetah-run": {100_000: 336.6, 200_000: 434.3, 500_000: 662.9, 1_000_000: 822.5},
    "finger-spin": {100_000: 504.9, 200_000: 546.7, 500_000: 574.0, 1_000_000: 589.3},
    "finger-turn_easy": {100_000: 338.6, 200_000: 390.8, 500_000: 622.7, 1_000_000: 882.7},
    "finger-turn_hard": {100_000: 122.0, 200_000: 211.4, 500_000: 800.7, 1_000_000: 862.2},
    "hopper-hop": {100_000: 11.3, 200_000: 63.3, 500_000: 160.7, 1_000_000: 230.0},
    "hopper-stand": {100_000: 291.1, 200_000: 570.1, 500_000: 850.2, 1_000_000: 903.5},
    "pendulum-swingup": {100_000: 352.4, 200_000: 556.9, 500_000: 640.4, 1_000_000: 747.4},
    "quadruped-run": {100_000: 83.2, 200_000: 115.8, 500_000: 374.2, 1_000_000: 627.1},
    "quadruped-walk": {100_000: 101.9, 200_000: 108.1, 500_000: 406.8, 1_000_000: 814.8},
    "reacher-easy": {100_000: 408.8, 200_000: 605.4, 500_000: 849.4, 1_000_000: 930.4},
    "reacher-hard": {100_000: 40.7, 200_000: 50.4, 500_000: 316.7, 1_000_000: 846.8},
    "walker-run": {100_000: 223.3, 200_000: 386.2, 500_000: 610.5, 1_000_000: 682.3},
    "walker-stand": {100_000: 910.7, 200_000: 945.1, 500_000: 969.4, 1_000_000: 975.5},
    "walker-walk": {100_000: 638.9, 200_000: 874.8, 500_000: 944.0, 1_000_000: 961.7},
}

DMC_PROPRIO = {
    "acrobot-swingup": {100_000: 50.7, 200_000: 88.6, 500_000: 131.7},
    "ball_in_cup-catch": {100_000: 761.1, 200_000: 956.8, 500_000: 966.0},
    "cartpole-balance": {100_000: 821.1, 200_000: 957.6, 500_000: 990.6},
    "cartpole-balance_sparse": {100_000: 514.8, 200_000: 947.6, 500_000: 1000.0},
    "cartpole-swingup": {100_000: 512.6, 200_000: 788.8, 500_000: 856.0},
    "cartpole-swingup_sparse": {100_000: 21.6, 200_000: 185.5, 500_000: 503.6},
    "cheetah-run": {100_000: 307.6, 200_000: 425.9, 500_000: 596.3},
    "finger-spin": {100_000: 779.7, 200_000: 857.2, 500_000: 924.4},
    "finger-turn_easy": {100_000: 345.9, 200_000: 489.1, 500_000: 793.0},
    "finger-turn_hard": {100_000: 279.5, 200_000: 543.0, 500_000: 932.8},
    "hopper-hop": {100_000: 0.6, 200_000: 7.9, 500_000: 107.5},
    "hopper-stand": {100_000: 119.7, 200_000: 312.5, 500_000: 650.4},
    "pendulum-swingup": {100_000: 716.1, 200_000: 824.8, 500_000: 785.0},
    "reacher-easy": {100_000: 727.4, 200_000: 944.2, 500_000: 961.8},
    "reacher-hard": {100_000: 691.1, 200_000: 916.8, 500_000: 948.6},
    "walker-run": {100_000: 257.0, 200_000: 489.8, 500_000: 655.5},
    "walker-stand": {100_000: 820.9, 200_000: 903.4, 500_000: 957.2},
    "walker-walk": {100_000: 518.4, 200_000: 823.7, 500_000: 881.0},
}


def human_normalized(game: str, score: float) -> float:
    """``(score - random) / (human - random)`` for an Atari game of :data:`ATARI`."""
    random, human, _ = ATARI[game]
    return (score - random) / (human - random)


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
    try:
        with gzip.open(path, "rt") as file:
            runs = [run for run in json.load(file) if run["task"] == task]
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise SystemExit(f"{path}: expected a DreamerV3 scores file (.json.gz), "
                         f"got {type(err).__name__}: {err}") from None
    if not runs:
        raise SystemExit(f"{path}: expected runs of task {task!r}, found none.")
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
         batch_steps: int = 1024, reference_ratio: float = 512, title: str = "") -> None:
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
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, scale_ours, scale_ref, label in (
            (axes[0], repeat, 1, "frames (physics steps; the published curve's axis)"),
            (axes[1], ratio / batch_steps, reference_ratio / 2 / batch_steps, "updates")):
        axis.fill_between([f * scale_ref for f in grid], lows, highs, color="tab:green", alpha=0.2,
                          label="DreamerV3 published, seed range")
        axis.plot([f * scale_ref for f in grid], means, color="tab:green",
                  label="DreamerV3 published, mean of 10 seeds (training episodes)")
        axis.plot([s * scale_ours for s, _ in ours], [r for _, r in ours], "o-", color="tab:orange",
                  label="worldloom, evaluation (5 episodes)")
        axis.axhline(700, color="gray", lw=0.8)
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
    args = parser.parse_args(argv)
    means, lows, highs = published_curve(args.scores, args.task, args.frames, seeds=True)
    print("| frames | DreamerV3 (mean over seeds) | lowest seed | highest seed |\n|---|---|---|---|")
    for frame, mean, low, high in zip(args.frames, means, lows, highs):
        print(f"| {frame:,} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in (mean, low, high)) + " |")
    if args.plot:
        ours = [(int(step), float(ret)) for step, ret in (item.split(":") for item in args.ours)]
        plot(args.plot, args.task, args.scores, ours, args.repeat, args.ratio, title=args.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
