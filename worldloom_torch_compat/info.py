"""``list_models`` and ``get_model_info`` with image shapes channels first."""

from __future__ import annotations

from collections.abc import Sequence

import worldloom
from worldloom_torch_compat.model import channels_first, channels_last


def get_model_info(name: str, obs_shape: Sequence[int] | None = None, action_dim: int | None = None) -> dict:
    """As :func:`worldloom.get_model_info`; ``obs_shape`` in and ``space["obs_shape"]`` out are ``(C, H, W)``
    for images (``config`` stays the JAX model's, channels last)."""
    info = worldloom.get_model_info(name, channels_last(obs_shape), action_dim)
    if "obs_shape" in info.get("space", {}):
        info["space"]["obs_shape"] = list(channels_first(info["space"]["obs_shape"]))
    return info


def list_models(verbose: bool = False) -> list:
    """As :func:`worldloom.list_models` (verbose entries from :func:`get_model_info`)."""
    names = worldloom.list_models()
    return [get_model_info(name) for name in names] if verbose else names
