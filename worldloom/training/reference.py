"""The reference settings of each model family: one table for offline training and the online agents.

DreamerV3 (``danijar/dreamerv3``, ``configs.yaml``): LaProp with adaptive
gradient clipping 0.3 inside the model's optimiser, learning rate 4e-5 with
1,000 warm-up updates and no global-norm clip; the online run replays
windows of 16 x 64 steps and acts with its initial policy from the first
step. The reference's default model size is ``size200m``; its
``dmc_proprio`` block selects ``size1m``, which is the online run's default
here (the size that trains on a laptop).

TD-MPC2 (``nicklashansen/tdmpc2``, ``config.yaml``): Adam at 3e-4 (the
encoder at 0.3 of it, inside the model), gradient-norm clip 20, no warm-up;
batches of 256 windows of ``horizon + 1 = 4`` steps; ``5m`` is its default
model size; random actions for ``max(1000, 5 * episode length)`` steps
before learning (the seed-step count here is the floor).

:data:`PRESETS` holds the reference's named config blocks beside them (the
``dmc_proprio``, ``dmc_vision``, ``atari100k``, ``debug`` and size blocks of
DreamerV3's ``configs.yaml``; TD-MPC2's ``config.yaml`` for state and pixels,
and with ``tdmpc2/envs/mujoco.py``'s ``rho`` and ``discount_max`` for its
Gymnasium tasks) and ``quick``, this package's CPU preset for Gymnasium ids. An online run
stacks them over :data:`REFERENCE` (see :class:`worldloom.agents.AgentRunConfig`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

REFERENCE: dict[str, dict[str, Any]] = {
    "dreamerv3": dict(model="dreamerv3:size1m", batch_size=16, sequence_length=64, learning_rate=4e-5,
                      warmup_steps=1000, grad_clip=0.0, weight_decay=0.0, seed_steps=0),
    "tdmpc2": dict(model="tdmpc2:5m", batch_size=256, sequence_length=4, learning_rate=3e-4,
                   warmup_steps=0, grad_clip=20.0, weight_decay=0.0, seed_steps=1000),
}
"""Family -> the reference's settings (world-model preset, batch, window, optimiser, seed steps)."""

OPTIMIZER_FIELDS = ("learning_rate", "warmup_steps", "grad_clip", "weight_decay")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named block of run settings, stacked over the reference defaults (later blocks win)."""

    algo: str
    """The family it is for: ``"dreamerv3"`` or ``"tdmpc2"``."""
    run: Mapping[str, Any]
    """:class:`~worldloom.agents.AgentRunConfig` field -> value."""
    world_model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """World-model config field -> value (overrides of the run's model preset)."""
    suite: bool = False
    """A suite block: the one an environment id selects (a run stacks at most one)."""
    source: str = ""
    """Where the values come from."""
    unmapped: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """The block's reference keys with no setting here -> what stands in for them."""

    def __post_init__(self):
        for name in ("run", "world_model", "unmapped"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))


TDMPC2_GYMNASIUM_TASKS = ("Walker2d", "HalfCheetah", "BipedalWalker", "LunarLander", "LunarLanderContinuous")
"""The Gymnasium tasks of TD-MPC2's reference (``tdmpc2/envs/mujoco.py``), which sets ``rho=0.7`` and
``discount_max=0.99`` for them."""

_DREAMER = "danijar/dreamerv3 dreamerv3/configs.yaml"
_TDMPC = "nicklashansen/tdmpc2 tdmpc2/config.yaml"
_SIZES = ("size1m", "size12m", "size25m", "size50m", "size100m", "size200m", "size400m")
_TDMPC_RUN = dict(model="tdmpc2:5m", batch_size=256, learning_rate=3e-4, grad_clip=20.0, updates_per_step=1.0,
                  total_steps=10_000_000, eval_every=50_000, eval_episodes=10, buffer_capacity=1_000_000)
_TDMPC_UNMAPPED = {
    "seed_steps": "max(1000, 5 * episode_length), worked out from the environment when the run starts",
    "model_size": "??? in config.yaml; 5 (5m) is the default of its train.py and README",
    "task, obs": "the environment id (dmc:DOMAIN-TASK, :pixels for obs=rgb)",
    "the model and planner settings": "the world-model preset (tdmpc2:5m)",
    "wandb_*, save_csv, save_video, compile": "no setting here",
}

PRESETS: dict[str, Preset] = {
    "defaults": Preset("dreamerv3", {}, suite=True, source="the defaults block alone (no suite block)"),
    "dmc_proprio": Preset("dreamerv3", dict(model="dreamerv3:size1m", train_ratio=1024.0, total_steps=1_100_000),
                          suite=True, source=_DREAMER, unmapped={
                              "task: dmc_walker_walk": "the environment id",
                              "env.dmc.image: False": "dmc:DOMAIN-TASK observes the state vector only"}),
    "dmc_vision": Preset("dreamerv3", dict(train_ratio=256.0, total_steps=1_100_000), suite=True, source=_DREAMER,
                         unmapped={
                             "task: dmc_walker_walk": "the environment id",
                             "env.dmc.proprio: False": "dmc:DOMAIN-TASK:pixels observes the image only",
                             "model size": "the block names none, so the reference's is size200m from defaults; "
                                           "here the run's default size1m stands (stack size12m ... size400m)"}),
    "atari100k": Preset("dreamerv3", dict(train_ratio=256.0, total_steps=110_000, num_envs=1), suite=True,
                        source=_DREAMER, unmapped={
                            "task: atari100k_pong": "the environment id",
                            "env.atari100k": "the atari: suite's settings (worldloom.envs.ATARI_REFERENCE)",
                            "model size": "size200m in the reference (from defaults); here size1m unless stacked"}),
    **{size: Preset("dreamerv3", dict(model=f"dreamerv3:{size}"), source=_DREAMER, unmapped={
        ".*.rssm, .*.depth, .*.units": f"the world-model preset dreamerv3:{size} holds the same values"})
       for size in _SIZES},
    "debug": Preset("dreamerv3", dict(batch_size=8, sequence_length=10, train_ratio=8.0, num_envs=4,
                                      buffer_capacity=10_000),
                    world_model=dict(reward_bins=5, enc_layers=1, dec_layers=1, head_layers=1, units=8, stoch=2,
                                     classes=4, deter=8, hidden=3, blocks=4, depth=2),
                    source=_DREAMER, unmapped={
                        "report_length: 5; run.report_every: 10": "no open-loop report setting here",
                        "run.log_every: 5, run.save_every: 15": "seconds in the reference; log_every and "
                                                                "checkpoint_every here count updates and steps",
                        "jax: {platform: cpu, debug: True, prealloc: False}": "--device cpu",
                        "policy and value .*.layers: 1, .*.units: 8, value .*.bins: 5":
                            "the actor and critic take the world model's units; their layers and critic bins "
                            "have no run setting",
                        "run.debug: True": "no setting here"}),
    "tdmpc2": Preset("tdmpc2", _TDMPC_RUN, suite=True, source=_TDMPC, unmapped=_TDMPC_UNMAPPED),
    "tdmpc2_pixels": Preset("tdmpc2", _TDMPC_RUN, suite=True, source=f"{_TDMPC} with obs=rgb",
                            unmapped={**_TDMPC_UNMAPPED, "obs: rgb": "the :pixels environment id (the pixel "
                                      "encoder; 3 stacked 64x64 frames, worldloom.envs.DMC_REFERENCE)"}),
    "tdmpc2_gymnasium": Preset("tdmpc2", _TDMPC_RUN, world_model=dict(rho=0.7, discount_max=0.99), suite=True,
                               source=f"{_TDMPC} with tdmpc2/envs/mujoco.py's rho and discount_max",
                               unmapped={**_TDMPC_UNMAPPED, "Timeout of lunarlander-continuous: 500 steps":
                                         "Gymnasium's own time limit (1000) stands; "
                                         "--set env_options={max_episode_steps: 500} sets the reference's"}),
    # Not the reference's: tuned on a 2-core CPU to learn CartPole-v1 in minutes (docs/agents.md, Presets).
    "quick": Preset("dreamerv3", dict(model="dreamerv3:size1m", sequence_length=32, train_ratio=128.0,
                                      learning_rate=2e-4, warmup_steps=100, total_steps=40_000,
                                      eval_every=1_000, eval_episodes=5, stop_return=475.0, replay_online=False),
                    suite=True, source="worldloom's CPU preset for Gymnasium ids (not the reference's)"),
}
"""Preset name -> :class:`Preset`: the reference's named blocks, and ``quick``."""


def suite_preset(env: str, algo: str) -> str | None:
    """The suite block an environment id selects, as the references choose them.

    DreamerV3: ``dmc:...`` -> ``dmc_proprio``, ``dmc:...:pixels`` -> ``dmc_vision``,
    ``atari:...`` -> ``atari100k``, a Gymnasium id -> ``quick``. TD-MPC2:
    ``dmc:...`` -> ``tdmpc2``, ``dmc:...:pixels`` -> ``tdmpc2_pixels``, the
    reference's Gymnasium tasks (:data:`TDMPC2_GYMNASIUM_TASKS`, any version)
    -> ``tdmpc2_gymnasium``, others none.
    """
    suite, _, rest = str(env).partition(":")
    pixels = rest.endswith(":pixels")
    if algo == "tdmpc2":
        if not rest and str(env).rsplit("-v", 1)[0] in TDMPC2_GYMNASIUM_TASKS:
            return "tdmpc2_gymnasium"
        return ("tdmpc2_pixels" if pixels else "tdmpc2") if suite == "dmc" and rest else None
    if suite == "dmc" and rest:
        return "dmc_vision" if pixels else "dmc_proprio"
    if suite == "atari" and rest:
        return "atari100k"
    return "quick"


def stack_presets(names, env: str, algo: str) -> tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]:
    """``(names, run values, world-model values)`` of the blocks ``names`` stacked in order (later ones win).

    ``names=None`` stacks the suite block of ``env`` alone; a list that names no
    suite block has it stacked first (``["size12m"]`` on ``dmc:walker-walk:pixels``
    is ``dmc_vision`` then ``size12m``). ``"defaults"`` stands for no suite block.

    Raises:
        ConfigError: an unknown name (with close matches), a block of the other family,
            or two suite blocks.
    """
    from worldloom.core.config import close_matches
    from worldloom.core.errors import ConfigError

    names = tuple(names or ())
    for name in names:
        if name not in PRESETS:
            raise ConfigError(f"Unknown preset {name!r}.{close_matches(name, PRESETS)} Presets: "
                              f"{', '.join(PRESETS)}.")
        if PRESETS[name].algo != algo and name != "defaults":
            raise ConfigError(f"Preset {name!r} is for {PRESETS[name].algo}; expected one for algo={algo!r}, got "
                              f"{name!r}.")
    suites = [name for name in names if PRESETS[name].suite]
    if len(suites) > 1:
        raise ConfigError(f"Expected at most one suite preset in configs, got {suites}.")
    if not suites and suite_preset(env, algo) is not None:
        names = (suite_preset(env, algo), *names)
    run, world_model = {}, {}
    for name in names:
        run.update(PRESETS[name].run)
        world_model.update(PRESETS[name].world_model)
    return names, run, world_model


def reference_settings(family: str, fields=None) -> dict[str, Any]:
    """A copy of ``REFERENCE[family]``, limited to ``fields`` when given.

    Raises:
        ConfigError: ``family`` is not ``"dreamerv3"`` or ``"tdmpc2"``.
    """
    from worldloom.core.errors import ConfigError

    if family not in REFERENCE:
        raise ConfigError(f"No reference settings for {family!r}; expected one of {sorted(REFERENCE)}.")
    values = dict(REFERENCE[family])
    return values if fields is None else {name: values[name] for name in fields}


__all__ = ["OPTIMIZER_FIELDS", "PRESETS", "REFERENCE", "TDMPC2_GYMNASIUM_TASKS", "Preset", "reference_settings",
           "stack_presets", "suite_preset"]
