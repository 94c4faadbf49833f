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
"""

from __future__ import annotations

from typing import Any

REFERENCE: dict[str, dict[str, Any]] = {
    "dreamerv3": dict(model="dreamerv3:size1m", batch_size=16, sequence_length=64, learning_rate=4e-5,
                      warmup_steps=1000, grad_clip=0.0, weight_decay=0.0, seed_steps=0),
    "tdmpc2": dict(model="tdmpc2:5m", batch_size=256, sequence_length=4, learning_rate=3e-4,
                   warmup_steps=0, grad_clip=20.0, weight_decay=0.0, seed_steps=1000),
}
"""Family -> the reference's settings (world-model preset, batch, window, optimiser, seed steps)."""

OPTIMIZER_FIELDS = ("learning_rate", "warmup_steps", "grad_clip", "weight_decay")


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


__all__ = ["OPTIMIZER_FIELDS", "REFERENCE", "reference_settings"]
