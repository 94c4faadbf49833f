"""Turning user arrays into JAX arrays and checking them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from worldloom.core.errors import ShapeError


def as_array(x: Any, dtype=None) -> jax.Array:
    """Convert NumPy, JAX, DLPack-capable or array-like input to a JAX array."""
    if isinstance(x, jax.Array):
        return x if dtype is None else x.astype(dtype)
    if not isinstance(x, np.ndarray) and hasattr(x, "__dlpack__"):
        try:
            out = jnp.from_dlpack(x)
            return out if dtype is None else out.astype(dtype)
        except Exception:  # noqa: BLE001 - fall back to a copy
            pass
    return jnp.asarray(np.asarray(x), dtype=dtype)


def check_trailing_shape(name: str, x, expected: Sequence[int], min_lead: int = 1) -> None:
    """Raise ShapeError unless ``x.shape`` ends with ``expected`` after >= min_lead axes."""
    expected = tuple(expected)
    shape = tuple(x.shape)
    tail = shape[len(shape) - len(expected):] if expected else ()
    if len(shape) < len(expected) + min_lead or tail != expected:
        lead = ", ".join(["B", "T"][:min_lead] if min_lead <= 2 else ["..."])
        want = "[" + ", ".join([lead] + [str(d) for d in expected]) + "]" if expected else f"[{lead}]"
        raise ShapeError(f"{name}: expected shape {want}, got {list(shape)}.")


def check_finite(name: str, x) -> None:
    """Raise DataError if a float array holds NaN or inf (host-side check; the rule of
    :func:`worldloom.core.validation.check_finite`)."""
    from worldloom.core.validation import check_finite as finite

    finite(name, np.asarray(x))
