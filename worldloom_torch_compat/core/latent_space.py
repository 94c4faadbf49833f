"""The original's latent spaces at ``worldloom.core.latent_space``: torch modules over JAX functions.

Each space turns network outputs ("params") into latents and measures the KL
between two of them; the math runs in JAX (:mod:`worldloom.nn`), with torch
autograd through it. Random draws follow torch's generator
(``torch.manual_seed``): each draw takes a fresh JAX key from it.

| space | params | sample | ``kl_divergence`` |
|---|---|---|---|
| ``GaussianLatentSpace(dim)`` | ``[B, 2 * dim]`` (mean, raw std) | ``[B, dim]`` | ``[B]`` |
| ``CategoricalLatentSpace(n, c)`` | ``[B, n, c]`` or ``[B, n * c]`` logits | one-hot ``[B, n, c]`` | ``[B]`` |
| ``SimNormLatentSpace(dim, g)`` | ``[B, dim]`` | SimNorm ``[B, dim]`` | zeros ``[B]`` |

Example:
    >>> import torch
    >>> space = CategoricalLatentSpace(num_categoricals=32, num_classes=16)
    >>> space.sample(torch.randn(4, 32, 16)).shape
    torch.Size([4, 32, 16])
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import jax
import jax.numpy as jnp
import torch
from torch import nn

from worldloom.core.errors import ConfigError
from worldloom.nn import functional, layers
from worldloom_torch_compat._autograd import call_jax


def _key() -> jax.Array:
    """A JAX key drawn from torch's default generator."""
    return jax.random.PRNGKey(int(torch.randint(0, 2**31 - 1, ())))


class LatentSpace(ABC, nn.Module):
    """A kind of latent: ``sample(params, deterministic=False)`` and ``kl_divergence(posterior, prior)``."""

    @property
    @abstractmethod
    def param_dim(self) -> int:
        """Size of the params' last axis."""

    @abstractmethod
    def sample(self, params: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """A latent from ``params``; ``deterministic`` gives the mode."""

    @abstractmethod
    def kl_divergence(self, posterior_params: torch.Tensor, prior_params: torch.Tensor) -> torch.Tensor:
        """``KL[posterior || prior]`` per example, ``[B]``."""

    def forward(self, params: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self.sample(params, deterministic)


class GaussianLatentSpace(LatentSpace):
    """A diagonal Gaussian: params are ``[mean, raw_std]``, ``std = min_std + (max_std - min_std) *
    sigmoid(raw_std)``; samples are reparameterised (gradients flow to the params)."""

    def __init__(self, dim: int, min_std: float = 0.1, max_std: float = 2.0):
        super().__init__()
        if not 0.0 < min_std < max_std:
            raise ConfigError(f"GaussianLatentSpace: expected 0 < min_std < max_std, got {min_std}, {max_std}.")
        self.dim, self.min_std, self.max_std = int(dim), float(min_std), float(max_std)

    @property
    def param_dim(self) -> int:
        return 2 * self.dim

    def _moments(self, params: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, raw_std = jnp.split(params, 2, axis=-1)
        return mean, self.min_std + (self.max_std - self.min_std) * jax.nn.sigmoid(raw_std)

    def sample(self, params: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        key = None if deterministic else _key()

        def draw(values):
            mean, std = self._moments(values)
            if key is None:
                return mean
            return mean + std * jax.random.normal(key, mean.shape, mean.dtype)

        return call_jax(draw, params)

    def kl_divergence(self, posterior_params: torch.Tensor, prior_params: torch.Tensor) -> torch.Tensor:
        def kl(posterior, prior):
            p_mean, p_std = self._moments(posterior)
            q_mean, q_std = self._moments(prior)
            ratio = (p_std / q_std) ** 2
            return 0.5 * jnp.sum(ratio + ((p_mean - q_mean) / q_std) ** 2 - 1.0 - jnp.log(ratio), -1)

        return call_jax(kl, posterior_params, prior_params)


class CategoricalLatentSpace(LatentSpace):
    """``num_categoricals`` one-hot latents of ``num_classes`` classes, DreamerV3's kind.

    Samples are one-hot with straight-through gradients into the logits
    (:func:`worldloom.nn.functional.straight_through_sample`); ``deterministic``
    takes the most likely class. ``temperature`` divides the logits.
    """

    def __init__(self, num_categoricals: int = 32, num_classes: int = 32, temperature: float = 1.0,
                 straight_through: bool = True):
        super().__init__()
        self.num_categoricals, self.num_classes = int(num_categoricals), int(num_classes)
        self.temperature, self.straight_through = float(temperature), bool(straight_through)

    @property
    def param_dim(self) -> int:
        return self.num_categoricals * self.num_classes

    @property
    def sample_dim(self) -> int:
        return self.num_categoricals * self.num_classes

    def _grouped(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] == self.param_dim and (logits.ndim < 2 or logits.shape[-2:] != (
                self.num_categoricals, self.num_classes)):
            return logits.reshape(*logits.shape[:-1], self.num_categoricals, self.num_classes)
        return logits

    def sample(self, logits: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        key = None if deterministic else _key()

        def draw(values):
            probs = jax.nn.softmax(values.astype(jnp.float32) / self.temperature, -1)
            if key is None:
                return functional.straight_through_mode(probs)
            return functional.straight_through_sample(key, probs)

        return call_jax(draw, self._grouped(logits))

    def kl_divergence(self, posterior_logits: torch.Tensor, prior_logits: torch.Tensor,
                      free_nats: float = 0.0) -> torch.Tensor:
        """``KL[posterior || prior]`` summed over the latents, ``[B]``.

        With ``free_nats > 0``, the KL beyond the free nats: ``max(kl - free_nats, 0)``
        (DreamerV3's free bits, applied after summing over latents, less the constant).
        """

        def kl(posterior, prior):
            value = jnp.sum(functional.categorical_kl(jax.nn.softmax(posterior, -1), jax.nn.softmax(prior, -1)), -1)
            return jnp.maximum(value - free_nats, 0.0) if free_nats > 0 else value

        return call_jax(kl, self._grouped(posterior_logits), self._grouped(prior_logits))


class SimNormLatentSpace(LatentSpace):
    """TD-MPC2's SimNorm latent: softmax over groups of ``simnorm_dim`` (:func:`worldloom.nn.layers.simnorm`).

    Deterministic, so its KL is zero.

    Raises:
        ConfigError: ``dim`` not a multiple of ``simnorm_dim`` (a ``ValueError``).
    """

    def __init__(self, dim: int = 512, simnorm_dim: int = 8):
        super().__init__()
        if dim % simnorm_dim:
            raise ConfigError(f"SimNormLatentSpace: dim ({dim}) must be divisible by simnorm_dim ({simnorm_dim}).")
        self.dim, self.simnorm_dim = int(dim), int(simnorm_dim)
        self.num_simplices = self.dim // self.simnorm_dim

    @property
    def param_dim(self) -> int:
        return self.dim

    def sample(self, params: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return call_jax(lambda values: layers.simnorm(values, self.simnorm_dim), params)

    def kl_divergence(self, posterior_params: torch.Tensor, prior_params: torch.Tensor) -> torch.Tensor:
        return torch.zeros(posterior_params.shape[:-1], device=posterior_params.device)


__all__ = ["CategoricalLatentSpace", "GaussianLatentSpace", "LatentSpace", "SimNormLatentSpace"]
