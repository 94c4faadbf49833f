"""What the models accept at their public edges: one set of rules for both faces.

Every protocol method (``encode``, ``observe``, ``observe_sequence``,
``predict``, ``imagine``, ``compute_loss``; TD-MPC2's ``act``), the agents'
``act``, :class:`~worldloom.training.ReplayBuffer` and, through them, the
torch face check what they are given with these functions:

- **Observations** are finite. Image observations (``obs_shape`` of three
  axes) are ``uint8`` pixels, scaled by 1/255 inside the model; any other
  integer type holding 0..255 is read as ``uint8`` (scaled the same way);
  floats are read as [0, 1]: a float image whose values are all non-negative
  and reach above 1 is taken for 0..255 pixels and refused, not read as 255
  times too bright (values with negatives, e.g. standardised images, pass);
  ``bool`` images are refused.
- **Actions** are finite. Discrete indices lie in ``[0, action_dim)``. The
  action vectors of a discrete DreamerV3 model are one-hot rows (zeros and a
  single 1). TD-MPC2's actions lie in its action bounds [-1, 1] (its planner
  and policy keep them there; outside them the dynamics were never trained).
- **Rewards** are finite; **continues** (and TD-MPC2's ``terminals``) lie in [0, 1].
- **States** (a ``LatentState`` passed back in) are finite.
- **Episode flags** (``is_first``, ``is_final``) are booleans or 0/1 values.

Where the values are read: a host array (NumPy, a Python list, a torch CPU
tensor, a JAX array on the CPU) is checked with NumPy before it is copied to
the device, a few passes over memory already at hand. An array already on an
accelerator is checked by one small jitted reduction whose few numbers are then
read (one host sync), unless the model's ``check_device_inputs`` is False.
Values traced by an eager ``jax.vjp`` over concrete inputs (torch inputs that
require grad, which the torch face passes through it) are read through the
tracer; values traced inside ``jax.jit`` cannot be read and are not checked.

Every refusal is a :class:`~worldloom.core.errors.DataError` whose message says
what was expected and what was got.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from worldloom.core.errors import DataError

IMAGE_TOLERANCE = 1e-3
"""How far above 1 a non-negative float image may reach (rounding) before it is taken for 0..255 pixels."""
ACTION_BOUND = 1.0
"""TD-MPC2's action bounds: actions lie in ``[-ACTION_BOUND, ACTION_BOUND]``."""
ACTION_TOLERANCE = 1e-3
"""How far outside its bounds a TD-MPC2 action may stray (rounding) before it is refused."""


@dataclasses.dataclass(frozen=True)
class Summary:
    """What the rules need to know of an array's values.

    Attributes:
        size: Number of values.
        nonfinite: Number of NaN and inf values (0 for integers).
        low, high: Smallest and largest finite value (NaN when there is none).
        bad_rows: Rows (along the last axis) that are not one-hot, when asked for.
        first_nonfinite: Index of the first NaN/inf (host arrays only).
        first_bad_row: The first row that is not one-hot (host arrays only).
    """

    size: int
    nonfinite: int = 0
    low: float = float("nan")
    high: float = float("nan")
    bad_rows: int = 0
    first_nonfinite: tuple | None = None
    first_bad_row: list | None = None


def is_traced(x) -> bool:
    """Whether ``x`` is a JAX tracer (its values cannot be read)."""
    return isinstance(x, jax.core.Tracer)


def readable(x):
    """``x``, or the concrete value a tracer holds (an eager ``jax.vjp`` over concrete inputs); None where the
    values cannot be read (inside ``jax.jit``)."""
    if not is_traced(x):
        return x
    try:
        return x.to_concrete_value()
    except Exception:  # noqa: BLE001 - a tracer without one: nothing to read
        return None


def on_accelerator(x) -> bool:
    """Whether ``x`` is a JAX array held by a device other than the CPU (reading it is a transfer)."""
    if not isinstance(x, jax.Array) or is_traced(x):
        return False
    try:
        return any(device.platform != "cpu" for device in x.devices())
    except (AttributeError, RuntimeError):  # a deleted or donated array: the model's call will say so
        return False


def _is_float(dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))


def host_summary(x, one_hot_rows: bool = False) -> Summary:
    """:class:`Summary` of an array's values computed with NumPy (on the host)."""
    arr = np.asarray(x)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.size == 0:
        return Summary(0)
    nonfinite, first = 0, None
    if _is_float(arr.dtype):
        arr = arr.astype(np.float32) if arr.dtype.itemsize < 4 else arr  # bfloat16/float16: NumPy reduces f32
        finite = np.isfinite(arr)
        nonfinite = int(arr.size - np.count_nonzero(finite))
        if nonfinite:
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            values = arr[finite]
        else:
            values = arr
        low, high = (float(values.min()), float(values.max())) if values.size else (float("nan"),) * 2
    else:
        low, high = int(arr.min()), int(arr.max())
    bad_rows, first_row = 0, None
    if one_hot_rows and arr.ndim >= 1:
        rows = arr.reshape(-1, arr.shape[-1])
        good = np.all((rows == 0) | (rows == 1), axis=-1) & (rows.sum(-1) == 1)
        bad_rows = int(good.size - np.count_nonzero(good))
        if bad_rows:
            first_row = rows[int(np.argmin(good))].tolist()
    return Summary(int(arr.size), nonfinite, low, high, bad_rows, first, first_row)


@functools.partial(jax.jit, static_argnames="one_hot_rows")
def _device_numbers(x, one_hot_rows: bool):
    """``[nonfinite, low, high, bad_rows]`` (f32) of ``x``, computed where ``x`` lives."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if _is_float(x.dtype):
        x = x.astype(jnp.float32)
        finite = jnp.isfinite(x)
        nonfinite = x.size - jnp.count_nonzero(finite)
        low = jnp.min(jnp.where(finite, x, jnp.inf))
        high = jnp.max(jnp.where(finite, x, -jnp.inf))
        none = nonfinite == x.size
        low, high = jnp.where(none, jnp.nan, low), jnp.where(none, jnp.nan, high)
    else:
        nonfinite, low, high = jnp.zeros((), jnp.int32), jnp.min(x), jnp.max(x)
    bad_rows = jnp.zeros((), jnp.int32)
    if one_hot_rows and x.ndim >= 1:
        good = jnp.all((x == 0) | (x == 1), axis=-1) & (x.sum(-1) == 1)
        bad_rows = good.size - jnp.count_nonzero(good)
    return jnp.stack([jnp.asarray(v, jnp.float32) for v in (nonfinite, low, high, bad_rows)])


def device_summary(x, one_hot_rows: bool = False) -> Summary:
    """:class:`Summary` of a JAX array computed on its device; reading it is one host sync."""
    if x.size == 0:
        return Summary(0)
    nonfinite, low, high, bad_rows = np.asarray(_device_numbers(x, one_hot_rows)).tolist()
    return Summary(int(x.size), int(nonfinite), low, high, int(bad_rows))


def summary(x, *, one_hot_rows: bool = False, device_checks: bool = True) -> Summary | None:
    """:class:`Summary` of ``x``, or None where its values are not read.

    Host arrays are summarised with NumPy; arrays on an accelerator on their
    device (one host sync), or not at all when ``device_checks`` is False;
    traced values never.
    """
    x = readable(x)
    if x is None:
        return None
    if on_accelerator(x):
        return device_summary(x, one_hot_rows) if device_checks else None
    return host_summary(x, one_hot_rows)


def _range_text(values: Summary) -> str:
    return f"values from {_number(values.low)} to {_number(values.high)}"


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _nonfinite_error(name: str, values: Summary, expected: str = "finite numbers") -> DataError:
    where = f" (the first at index {list(values.first_nonfinite)})" if values.first_nonfinite is not None else ""
    return DataError(f"{name} contains {values.nonfinite} NaN or inf value{'s' if values.nonfinite != 1 else ''}"
                     f"{where}; expected {expected}.")


def check_finite(name: str, x, *, device_checks: bool = True) -> None:
    """DataError if ``x`` holds NaN or inf."""
    values = summary(x, device_checks=device_checks)
    if values is not None and values.nonfinite:
        raise _nonfinite_error(name, values)


def check_unit_interval(name: str, x, *, device_checks: bool = True) -> None:
    """DataError unless every value of ``x`` is finite and in [0, 1] (continues, terminal flags)."""
    if np.dtype(x.dtype).kind == "b":
        return
    values = summary(x, device_checks=device_checks)
    if values is None or values.size == 0:
        return
    if values.nonfinite:
        raise _nonfinite_error(name, values, "finite values in [0, 1]")
    if values.low < 0 or values.high > 1:
        raise DataError(f"{name}: expected values in [0, 1] (1: the episode goes on, 0: it ended), "
                        f"got {_range_text(values)}.")


def check_flags(name: str, x, *, device_checks: bool = True) -> None:
    """DataError unless ``x`` holds booleans or the numbers 0 and 1 (episode flags such as ``is_first``)."""
    if np.dtype(x.dtype).kind == "b":
        return
    x = readable(x)
    if x is None or (on_accelerator(x) and not device_checks):
        return
    values = np.asarray(jax.device_get(x))
    bad = ~((values == 0) | (values == 1))
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{name}: expected booleans (or 0 and 1), got {int(bad.sum())} other value"
                        f"{'s' if bad.sum() != 1 else ''}, the first {values[first].item()!r} at index {list(first)}.")


def check_observations(name: str, obs, *, image: bool, device_checks: bool = True):
    """``obs`` as the model reads it; DataError for values it cannot mean.

    Args:
        name: How messages name the array (``"obs"``).
        obs: A NumPy or JAX array (or a traced value).
        image: The model's observations are images (``obs_shape`` of three axes).
        device_checks: Read the values of arrays on an accelerator (one host sync).

    Returns:
        ``obs`` itself, except integer images other than ``uint8``, which come
        back as ``uint8`` (the same values), so they are scaled as ``uint8`` is.

    Raises:
        DataError: NaN/inf; a ``bool`` or non-number dtype; integer images
            outside 0..255; non-negative float images that reach above 1 (0..255 pixels).
    """
    dtype = np.dtype(obs.dtype)
    if dtype == np.uint8:
        return obs
    if dtype.kind not in "biuf" and not _is_float(dtype):
        raise DataError(f"{name}: expected real numbers, got dtype {dtype}.")
    if dtype.kind == "b":
        if image:
            raise DataError(f"{name}: expected image pixels as uint8 in 0..255 or floats in [0, 1], got bool.")
        return obs
    if dtype.kind in "iu" and not image:
        return obs
    values = summary(obs, device_checks=device_checks)
    if dtype.kind in "iu":
        if values is not None and values.size and (values.low < 0 or values.high > 255):
            raise DataError(f"{name}: expected image pixels in 0..255 ({dtype} images are read as uint8), "
                            f"got {_range_text(values)}.")
        return obs.astype(np.uint8) if isinstance(obs, np.ndarray) else obs.astype(jnp.uint8)
    if values is None or values.size == 0:
        return obs
    if values.nonfinite:
        raise _nonfinite_error(name, values)
    if image and values.low >= -IMAGE_TOLERANCE and values.high > 1 + IMAGE_TOLERANCE:
        raise DataError(f"{name}: expected float image pixels in [0, 1], got {_range_text(values)}. These look like "
                        "0..255 pixels: pass them as uint8, or divide them by 255.")
    return obs


def check_action_indices(name: str, indices, action_dim: int, *, device_checks: bool = True) -> None:
    """DataError unless every discrete action index lies in ``[0, action_dim)``."""
    values = summary(indices, device_checks=device_checks)
    if values is None or values.size == 0:
        return
    if values.low < 0 or values.high >= action_dim:
        raise DataError(f"{name}: expected discrete action indices in [0, {action_dim}), "
                        f"got {_range_text(values)}.")


def check_action_vectors(name: str, actions, *, one_hot: bool = False, bound: float | None = None,
                         device_checks: bool = True) -> None:
    """DataError for action vectors ``[..., A]`` a model cannot mean.

    Args:
        one_hot: Each row must be one-hot (a discrete DreamerV3 model's actions).
        bound: Values must lie in ``[-bound, bound]`` (TD-MPC2's action bounds).

    Raises:
        DataError: NaN/inf, rows that are not one-hot, values outside the bounds.
    """
    values = summary(actions, one_hot_rows=one_hot, device_checks=device_checks)
    if values is None or values.size == 0:
        return
    if values.nonfinite:
        raise _nonfinite_error(name, values)
    if one_hot and values.bad_rows:
        example = f", e.g. {values.first_bad_row}" if values.first_bad_row is not None else ""
        raise DataError(f"{name}: expected one-hot rows (zeros and a single 1) or integer indices for a discrete "
                        f"model, got {values.bad_rows} row{'s' if values.bad_rows != 1 else ''} that "
                        f"{'are' if values.bad_rows != 1 else 'is'} not{example}.")
    if bound is not None and (values.low < -bound - ACTION_TOLERANCE or values.high > bound + ACTION_TOLERANCE):
        raise DataError(f"{name}: expected actions in the action bounds [-{bound:g}, {bound:g}], got "
                        f"{_range_text(values)}; scale the environment's actions to [-1, 1].")


def check_environment_observations(obs, *, image: bool, device_checks: bool = True):
    """An agent's observations ``[N, *obs_shape]``, one row per environment, checked as :func:`check_observations`.

    A refusal names the environments (rows) whose observations are not finite,
    in its message and as its ``environments`` attribute (row indices).
    """
    try:
        return check_observations("obs", obs, image=image, device_checks=device_checks)
    except DataError as err:
        obs = readable(obs)
        if obs is None or (on_accelerator(obs) and not device_checks) or not _is_float(obs.dtype):
            raise
        rows = np.asarray(obs).reshape(len(obs), -1)
        bad = np.flatnonzero(~np.isfinite(rows).all(-1)) if rows.size else np.zeros(0, int)
        if not len(bad):
            raise
        which = ", ".join(str(int(i)) for i in bad[:8]) + (", ..." if len(bad) > 8 else "")
        refusal = DataError(f"The observation of environment {which} (of {len(obs)}) holds NaN or inf: expected "
                            f"finite observations. {err}")
        refusal.environments = [int(i) for i in bad]
        raise refusal from err
