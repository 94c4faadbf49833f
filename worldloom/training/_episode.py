"""Checking one episode before it enters the buffer."""

from __future__ import annotations

from typing import Any

import numpy as np

from worldloom.core.arrays import check_finite
from worldloom.core.errors import DataError, ShapeError


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _flags(name: str, value, length: int) -> np.ndarray | None:
    """A ``[T]`` bool array (``[T, 1]`` accepted), or None."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (length,):
        raise ShapeError(f"{name}: expected shape [{length}] (one flag per transition), got {_shape_text(arr.shape)}.")
    if arr.dtype != bool:
        if arr.dtype.kind not in "biuf" or not np.all((arr == 0) | (arr == 1)):
            raise DataError(f"{name}: expected booleans (or 0/1), got dtype {arr.dtype} with other values.")
        arr = arr.astype(bool)
    return arr


def one_hot_actions(actions, action_dim: int, length: int) -> np.ndarray:
    """Actions ``[T, action_dim]`` f32; discrete indices ``[T]``/``[T, 1]`` become one-hot.

    Indices are recognised when ``action_dim > 1`` and the array is ``[T]`` or
    ``[T, 1]`` of integers (or of floats that are whole numbers).

    Raises:
        ShapeError: any other shape.
        DataError: indices outside ``[0, action_dim)`` or non-finite values.
    """
    arr = np.asarray(actions)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "iuf":
        raise DataError(f"actions: expected numbers, got dtype {arr.dtype}.")
    check_finite("actions", arr)
    column = arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)
    if arr.shape[:1] == (length,) and column and (action_dim > 1 or arr.ndim == 1):
        flat = arr.reshape(length)
        if action_dim == 1:
            return flat[:, None].astype(np.float32)
        if arr.dtype.kind in "iu" or np.all(flat == np.round(flat)):
            index = flat.astype(np.int64)
            if np.any(index < 0) or np.any(index >= action_dim):
                raise DataError(f"actions: discrete indices must lie in [0, {action_dim}), got values from "
                                f"{index.min()} to {index.max()}.")
            return np.eye(action_dim, dtype=np.float32)[index]
    if arr.shape != (length, action_dim):
        raise ShapeError(f"actions: expected shape [{length}, {action_dim}] (or discrete indices [{length}] / "
                         f"[{length}, 1]), got {_shape_text(arr.shape)}.")
    return arr.astype(np.float32)


def _observations(name: str, obs, lead: tuple, obs_shape: tuple, obs_dtype: np.dtype) -> np.ndarray:
    arr = np.asarray(obs)
    if arr.shape != (*lead, *obs_shape):
        want = _shape_text(("T", *obs_shape)) if lead else _shape_text(obs_shape)
        raise ShapeError(f"{name}: expected shape {want}, got {_shape_text(arr.shape)}.")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name}: expected numbers, got dtype {arr.dtype}.")
    check_finite(name, arr)
    if arr.dtype != obs_dtype:
        cast = arr.astype(obs_dtype)
        if obs_dtype.kind in "iub" and not np.array_equal(cast, arr):
            raise DataError(f"{name}: the buffer stores {obs_dtype} observations; got {arr.dtype} values "
                            "that do not fit (e.g. floats for a uint8 image buffer).")
        arr = cast
    return arr


def check_episode(obs, actions, rewards, dones, terminated, truncated, final_obs, *, obs_shape: tuple,
                  obs_dtype: np.dtype, action_dim: int) -> dict[str, Any]:
    """Validate and convert one episode.

    Returns:
        ``obs [T, *obs_shape]`` (``obs_dtype``), ``actions [T, A]`` f32,
        ``rewards [T]`` f32, ``dones [T]`` bool (the episode stops after the
        row; an end before the last row splits the episode there),
        ``terminals [T]`` bool (continue 0) and ``final_obs`` or None.

    Raises:
        ShapeError: wrong shapes; DataError: NaN/inf, bad flags, too long.
    """
    obs_arr = np.asarray(obs)
    if obs_arr.ndim != len(obs_shape) + 1 or obs_arr.shape[0] < 1:
        raise ShapeError(f"obs: expected shape {_shape_text(('T', *obs_shape))} with T >= 1, "
                         f"got {_shape_text(obs_arr.shape)}.")
    length = obs_arr.shape[0]
    obs_arr = _observations("obs", obs_arr, (length,), obs_shape, obs_dtype)
    actions_arr = one_hot_actions(actions, action_dim, length)
    reward_arr = np.asarray(rewards)
    if reward_arr.ndim == 2 and reward_arr.shape[1] == 1:
        reward_arr = reward_arr[:, 0]
    if reward_arr.shape != (length,):
        raise ShapeError(f"rewards: expected shape [{length}] (one per transition), "
                         f"got {_shape_text(reward_arr.shape)}.")
    if reward_arr.dtype.kind not in "biuf":
        raise DataError(f"rewards: expected numbers, got dtype {reward_arr.dtype}.")
    check_finite("rewards", reward_arr)

    done_arr = _flags("dones", dones, length)
    term_arr = _flags("terminated", terminated, length)
    trunc_arr = _flags("truncated", truncated, length)
    if done_arr is None and term_arr is None and trunc_arr is None:
        raise DataError("add_episode needs dones= (or terminated=/truncated=) flags, one per transition.")
    zeros = np.zeros(length, bool)
    if term_arr is not None:
        terminals = term_arr
    else:
        terminals = (done_arr if done_arr is not None else zeros) & ~(trunc_arr if trunc_arr is not None else zeros)
    ends = terminals.copy()
    for flags in (done_arr, trunc_arr):
        if flags is not None:
            ends |= flags
    final = None if final_obs is None else _observations("final_obs", final_obs, (), obs_shape, obs_dtype)
    return {"obs": obs_arr, "actions": actions_arr, "rewards": reward_arr.astype(np.float32), "dones": ends,
            "terminals": terminals, "final_obs": final}
