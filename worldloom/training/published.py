"""The references' published scores: DreamerV3 on Atari 100k and on DMC (vision and proprio), by frames.

- ``ATARI``: game -> (random, human, DreamerV3 at Atari 100k). Random and
  human scores are the standard ones (the DQN and Agent57 papers' "human
  gamer" figures, as DreamerV3's ``baselines.yaml`` lists them). The DreamerV3
  score is the mean over its 5 seeds of each seed's mean return over the
  episodes logged within the last 10,000 frames of its run (its last episode,
  which ends just before 400,000 frames = 100k agent steps, and those logged
  up to 10,000 frames before it), from the official repository's
  ``scores/atari100k-dreamerv3.json.gz``.
- ``DMC_VISION``, ``DMC_PROPRIO``: task -> {frames: DreamerV3's return}, the
  mean over seeds of each seed's mean episode return within 10,000 frames
  either side of that frame count, from ``scores/dmc_vision-dreamerv3.json.gz``
  (10 seeds, to 1M frames) and ``scores/dmc_proprio-dreamerv3.json.gz``
  (5 seeds, logged every 10,000 frames, to 490,000: its 500k values are the
  490k point).

The DMC keys count frames (physics steps), not agent steps: danijar/dreamerv3
logs ``step * repeat``, and the published runs used an action repeat of 2, so
100,000 frames are 50,000 agent steps of the published runs. Atari frames are
agent steps x 4 (the frame skip). ``benchmarks/reference_scores.py`` says how
the values were computed from the scores files, and draws a published curve
beside a run.
"""

from __future__ import annotations

ATARI_100K_FRAMES = 400_000
"""The frame count of DreamerV3's Atari 100k score (100k agent steps x frame skip 4)."""

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


__all__ = ["ATARI", "ATARI_100K_FRAMES", "DMC_PROPRIO", "DMC_VISION", "human_normalized"]
