"""``symlog`` and ``symexp`` on torch tensors, at the original's path ``worldloom.models.dreamer.heads``.

Both run :mod:`worldloom.nn`'s JAX functions, with torch autograd through them.
``symexp`` saturates at the largest finite value of the input's dtype instead
of overflowing to ``inf`` (its input is clipped just below ``log(finfo.max)``, so
the gradient beyond that point is zero).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import torch

from worldloom.nn import functional
from worldloom_torch_compat._autograd import call_jax


def symlog(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log(1 + |x|)``, elementwise."""
    return call_jax(functional.symlog, torch.as_tensor(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * (exp(|x|) - 1)``, elementwise; finite for every finite ``x`` (see the module docstring)."""
    x = torch.as_tensor(x)
    # Just below log(finfo.max), so that exp of the clipped value rounds to a finite number.
    limit = math.log(torch.finfo(x.dtype).max) * (1 - 1e-5) if x.is_floating_point() else math.inf

    def saturated(values):
        return functional.symexp(jnp.clip(values, -limit, limit))

    return call_jax(saturated, x)


__all__ = ["symexp", "symlog"]
