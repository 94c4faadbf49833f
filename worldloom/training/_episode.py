"""Checking what enters the buffer: one episode, integer and shape arguments, and the bytes a sample needs."""

from __future__ import annotations

import functools
import operator
import os
from typing import Any

import numpy as np

from worldloom.core.arrays import check_finite
from worldloom.core.errors import ConfigError, DataError, ShapeError
from worldloom.core.validation import check_action_indices


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def integer(name: str, value, *, minimum: int = 1, error: type[Exception] = ConfigError) -> int:
    """``value`` as an ``int`` if it is an integer (Python or NumPy, not a bool) ``>= minimum``.

    Floats are refused even when whole (``2.0``), so nothing is silently rounded.

    Raises:
        ``error`` (ConfigError by default): any other type, or a value below ``minimum``.
    """
    number = None
    if not isinstance(value, (bool, np.bool_)):
        try:
            number = operator.index(value)
        except TypeError:
            number = None
    if number is None:
        raise error(f"{name}: expected an integer >= {minimum}, got {value!r} ({type(value).__name__}).")
    if number < minimum:
        raise error(f"{name}: expected an integer >= {minimum}, got {number}.")
    return int(number)


def storage_dtype(name: str, value) -> np.dtype:
    """``value`` as a NumPy number dtype (bool, integer or float); ConfigError otherwise."""
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise ConfigError(f"{name}: expected a NumPy number dtype such as 'uint8' or 'float32', got {value!r}.")
    return dtype


def as_array(name: str, value) -> np.ndarray:
    """``np.asarray(value)``, with what NumPy cannot read (ragged lists, ...) as a ShapeError."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise ShapeError(f"{name}: expected an array (NumPy, JAX or nested lists of equal lengths), "
                         f"got a {type(value).__name__} NumPy cannot read ({err}).") from err


def stored(name: str, arr: np.ndarray, dtype) -> np.ndarray:
    """``arr`` cast to the storage ``dtype``, refusing finite values the cast would turn into inf.

    Raises:
        DataError: values outside the range of a float ``dtype`` (say float64
            ``1e300`` into float32), with their count and the first index.
    """
    dtype = np.dtype(dtype)
    if arr.dtype == dtype:
        return arr
    with np.errstate(over="ignore", invalid="ignore"):
        cast = arr.astype(dtype)
    if dtype.kind == "f" and arr.dtype.kind in "biuf":
        overflow = ~np.isfinite(cast)
        if overflow.any():
            first = tuple(int(i) for i in np.argwhere(overflow)[0])
            limit = float(np.finfo(dtype).max)
            raise DataError(f"{name}: expected values within the {dtype} range [-{limit:.7g}, {limit:.7g}], got "
                            f"{int(overflow.sum())} outside it (first at index {list(first)}: {arr[first]}); "
                            f"stored as {dtype} they would become inf.")
    return cast


# Bytes per sampled row beyond the stored fields: the int64 row and slot indices.
INDEX_BYTES = 16
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


@functools.lru_cache(maxsize=1)
def memory_limit() -> int:
    """Bytes of memory this process may use: physical RAM, or the cgroup limit when lower (16 GiB if unknown)."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        pass
    for name in _CGROUP_LIMITS:
        try:
            with open(name) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    limits = [limit for limit in limits if limit > 0]
    return min(limits) if limits else 16 * 2**30


def shape_tuple(name: str, value) -> tuple[int, ...]:
    """A tuple of positive integer sizes (an int alone is one axis); ShapeError otherwise."""
    items = np.atleast_1d(value).tolist() if isinstance(value, np.ndarray) else value
    if isinstance(items, (int, np.integer)) and not isinstance(items, (bool, np.bool_)):
        items = (items,)
    try:
        sizes = tuple(integer(name, size, error=ShapeError) for size in items)
    except (TypeError, ShapeError):
        sizes = ()
    if not sizes or isinstance(items, (str, bytes, dict, set)):
        raise ShapeError(f"{name}: expected a tuple of positive integer sizes such as (4,) or (64, 64, 3), "
                         f"got {value!r}.")
    return sizes


def size_text(count: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit} ({count:,} bytes)"
    return f"{count} bytes"

def _flags(name: str, value, length: int) -> np.ndarray | None:
    """A ``[T]`` bool array (``[T, 1]`` accepted), or None."""
    if value is None:
        return None
    arr = as_array(name, value)
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
    arr = as_array("actions", actions)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "iuf":
        raise DataError(f"actions: expected numbers, got dtype {arr.dtype}.")
    check_finite("actions", arr)
    column = arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)
    if arr.shape[:1] == (length,) and column and (action_dim > 1 or arr.ndim == 1):
        flat = arr.reshape(length)
        if action_dim == 1:
            return stored("actions", flat[:, None], np.float32)
        if arr.dtype.kind in "iu" or np.all(flat == np.round(flat)):
            check_action_indices("actions", flat, action_dim)
            return np.eye(action_dim, dtype=np.float32)[flat.astype(np.int64)]
    if arr.shape != (length, action_dim):
        raise ShapeError(f"actions: expected shape [{length}, {action_dim}] (or discrete indices [{length}] / "
                         f"[{length}, 1]), got {_shape_text(arr.shape)}.")
    return stored("actions", arr, np.float32)


def _observations(name: str, obs, lead: tuple, obs_shape: tuple, obs_dtype: np.dtype) -> np.ndarray:
    arr = as_array(name, obs)
    if arr.shape != (*lead, *obs_shape):
        want = _shape_text(("T", *obs_shape)) if lead else _shape_text(obs_shape)
        raise ShapeError(f"{name}: expected shape {want}, got {_shape_text(arr.shape)}.")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name}: expected numbers, got dtype {arr.dtype}.")
    check_finite(name, arr)
    cast = stored(name, arr, obs_dtype)
    if cast is not arr and obs_dtype.kind in "iub" and not np.array_equal(cast, arr):
        raise DataError(f"{name}: the buffer stores {obs_dtype} observations; got {arr.dtype} values "
                        "that do not fit (e.g. floats for a uint8 image buffer).")
    return cast


def check_episode(obs, actions, rewards, dones, terminated, truncated, final_obs, *, obs_shape: tuple,
                  obs_dtype: np.dtype, action_dim: int) -> dict[str, Any]:
    """Validate and convert one episode.

    Returns:
        ``obs [T, *obs_shape]`` (``obs_dtype``), ``actions [T, A]`` f32,
        ``rewards [T]`` f32, ``dones [T]`` bool (the episode stops after the
        row; an end before the last row splits the episode there),
        ``terminals [T]`` bool (continue 0) and ``final_obs`` or None.

    Raises:
        ShapeError: wrong shapes; DataError: NaN/inf, values a float32 (or
        ``obs_dtype``) cannot hold, bad flags, too long.
    """
    obs_arr = as_array("obs", obs)
    if obs_arr.ndim != len(obs_shape) + 1 or obs_arr.shape[0] < 1:
        raise ShapeError(f"obs: expected shape {_shape_text(('T', *obs_shape))} with T >= 1, "
                         f"got {_shape_text(obs_arr.shape)}.")
    length = obs_arr.shape[0]
    obs_arr = _observations("obs", obs_arr, (length,), obs_shape, obs_dtype)
    actions_arr = one_hot_actions(actions, action_dim, length)
    reward_arr = as_array("rewards", rewards)
    if reward_arr.ndim == 2 and reward_arr.shape[1] == 1:
        reward_arr = reward_arr[:, 0]
    if reward_arr.shape != (length,):
        raise ShapeError(f"rewards: expected shape [{length}] (one per transition), "
                         f"got {_shape_text(reward_arr.shape)}.")
    if reward_arr.dtype.kind not in "biuf":
        raise DataError(f"rewards: expected numbers, got dtype {reward_arr.dtype}.")
    check_finite("rewards", reward_arr)
    reward_arr = stored("rewards", reward_arr, np.float32)

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
    return {"obs": obs_arr, "actions": actions_arr, "rewards": reward_arr, "dones": ends,
            "terminals": terminals, "final_obs": final}
