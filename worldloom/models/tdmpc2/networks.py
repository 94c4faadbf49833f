"""TD-MPC2 Flax modules: encoders, latent dynamics, heads, Q ensemble, policy prior.

Every network is an MLP of :class:`NormedLinear` layers (``Linear -> [Dropout]
-> LayerNorm -> Mish``) whose output is either a plain linear layer or a
``NormedLinear`` with SimNorm (latents). Linear weights are initialised
trunc-normal with std 0.02 and zero biases; the reward and Q output weights are
zero, so both predict exactly 0 at initialisation (up to float rounding).

Shapes: ``z`` is a SimNorm latent ``[..., latent_dim]``; actions ``[..., A]``;
two-hot logits ``[..., num_bins]``; the Q ensemble returns ``[num_q, ..., num_bins]``.
The methods of :class:`TDMPC2Networks` are called through ``module.apply(...,
method=...)`` by :mod:`worldloom.models.tdmpc2.losses`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from worldloom.models.tdmpc2.config import TDMPC2Config
from worldloom.nn.functional import bernoulli16, mish
from worldloom.nn.layers import simnorm, tdmpc_init

LOG_SQRT_2PI = 0.9189385175704956  # log(sqrt(2 pi)), the Gaussian log-density constant
LAYER_NORM_EPS = 1e-5  # PyTorch's LayerNorm default


def _torch_uniform(fan_in: int):
    """PyTorch's default conv init: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (weights and biases)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class NormedLinear(nn.Module):
    """``Linear(features) -> [Dropout] -> LayerNorm -> Mish`` (or SimNorm when ``activation="simnorm"``).

    Dropout (rate ``dropout``) is applied only when a ``dropout_key`` is
    given; its mask is ``bernoulli16(dropout_key, 1 - dropout, x.shape)``, kept
    units scaled by ``1 / (1 - dropout)`` (as ``torch.nn.Dropout``).
    """

    features: int
    activation: str = "mish"
    simnorm_dim: int = 8
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        x = nn.Dense(self.features, kernel_init=tdmpc_init(0.02), bias_init=nn.initializers.zeros,
                     name="linear")(x)
        if self.dropout > 0.0 and dropout_key is not None:
            keep = bernoulli16(dropout_key, 1.0 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - self.dropout), jnp.zeros_like(x))
        x = nn.LayerNorm(epsilon=LAYER_NORM_EPS, name="norm")(x)
        if self.activation == "simnorm":
            return simnorm(x, self.simnorm_dim)
        return mish(x)


class MLP(nn.Module):
    """``NormedLinear`` hidden layers, then a linear output (or a SimNorm ``NormedLinear``).

    Attributes:
        hidden: Widths of the hidden layers.
        out_features: Output size.
        simnorm_out: If True the output layer is ``NormedLinear`` with SimNorm
            (a latent); otherwise a plain ``Linear``.
        dropout: Dropout rate of the first hidden layer only (the reference's Q
            networks), applied when ``__call__`` gets a ``dropout_key``.
        zero_out: Zero-initialise the output weights (reward and Q heads).
    """

    hidden: tuple
    out_features: int
    simnorm_out: bool = False
    simnorm_dim: int = 8
    dropout: float = 0.0
    zero_out: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = NormedLinear(width, dropout=self.dropout if i == 0 else 0.0, name=f"hidden_{i}")(
                x, dropout_key if i == 0 else None)
        if self.simnorm_out:
            return NormedLinear(self.out_features, activation="simnorm", simnorm_dim=self.simnorm_dim,
                                name="out")(x)
        kernel_init = nn.initializers.zeros if self.zero_out else tdmpc_init(0.02)
        return nn.Dense(self.out_features, kernel_init=kernel_init, bias_init=nn.initializers.zeros,
                        name="out")(x)


def shift_augment(key: jax.Array, images: jax.Array, pad: int) -> jax.Array:
    """Random shift of each image by up to ``pad`` pixels (replicate padding).

    The reference pads by ``pad`` with edge replication and resamples with a
    bilinear grid whose offsets are whole pixels, which is exactly a random
    ``H x W`` crop of the padded image; that is what this computes.

    Args:
        key: PRNG key.
        images: ``[N, H, W, C]``, any dtype (kept).
        pad: Padding in pixels; each image moves by ``0 .. 2*pad`` along each axis.

    Returns:
        ``[N, H, W, C]`` shifted images.
    """
    if pad == 0:
        return images
    n, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


class PixelEncoder(nn.Module):
    """64x64 image ``[N, 64, 64, C]`` -> SimNorm latent ``[N, latent_dim]``.

    Four VALID convolutions (kernels 7/5/3/3, strides 2/2/2/1, ``num_channels``
    each, ReLU between) give ``4 x 4 x num_channels`` features, flattened in the
    reference's channel-first order, then SimNorm. Inputs: uint8 in [0, 255]
    or floats in [0, 1], both mapped to [-0.5, 0.5]. When ``16 * num_channels``
    differs from ``latent_dim`` (the reference only supports equality) a linear
    projection to ``latent_dim`` is added before SimNorm.
    """

    config: TDMPC2Config

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        cfg = self.config
        x = obs.astype(jnp.float32)
        x = x / 255.0 - 0.5 if obs.dtype == jnp.uint8 else x - 0.5
        for i, (kernel, stride) in enumerate(((7, 2), (5, 2), (3, 2), (3, 1))):
            fan_in = x.shape[-1] * kernel * kernel
            x = nn.Conv(cfg.num_channels, (kernel, kernel), strides=(stride, stride), padding="VALID",
                        kernel_init=_torch_uniform(fan_in), bias_init=_torch_uniform(fan_in),
                        name=f"conv_{i}")(x)
            if i < 3:
                x = jax.nn.relu(x)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        if x.shape[-1] != cfg.latent_dim:
            x = nn.Dense(cfg.latent_dim, kernel_init=tdmpc_init(0.02), name="project")(x)
        return simnorm(x, cfg.simnorm_dim)


class QFunction(nn.Module):
    """One Q network: ``[z, a] -> num_bins`` two-hot logits, dropout on its first layer."""

    config: TDMPC2Config

    @nn.compact
    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        return MLP((cfg.mlp_dim, cfg.mlp_dim), cfg.num_bins, dropout=cfg.dropout, zero_out=True,
                   name="mlp")(x, dropout_key)


class QEnsemble(nn.Module):
    """``num_q`` Q networks evaluated with ``nn.vmap`` over stacked params.

    Params carry a leading ``[num_q]`` axis. ``dropout_keys`` (``[num_q]``
    keys, one per member, or ``None`` for no dropout) give each member its
    own mask, so a member's output depends only on its params and its key:
    evaluating some members alone gives what they give in the whole ensemble.
    Returns logits ``[num_q, ..., num_bins]``.
    """

    config: TDMPC2Config

    @nn.compact
    def __call__(self, x: jax.Array, dropout_keys: jax.Array | None = None) -> jax.Array:
        ensemble = nn.vmap(
            QFunction,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(None, 0),
            out_axes=0,
            axis_size=self.config.num_q,
        )
        return ensemble(self.config, name="ensemble")(x, dropout_keys)


def tanh_gaussian(mean: jax.Array, log_std_raw: jax.Array, eps: jax.Array, log_std_min: float,
                  log_std_max: float) -> tuple[jax.Array, dict]:
    """The reference's squashed Gaussian policy sample, with its entropy terms.

    ``log_std = min + (max - min) * (tanh(raw) + 1) / 2``; ``action = tanh(mean
    + eps * exp(log_std))``; the log-probability gets the tanh correction
    ``log(relu(1 - action^2) + 1e-6)``. As in the reference, the entropy used
    by the loss is scaled by the action dimension:
    ``scaled_entropy = entropy * (A * log_prob_gaussian) / (log_prob + 1e-8)``.

    Args:
        mean, log_std_raw, eps: ``[..., A]`` network outputs and standard-normal noise.
        log_std_min, log_std_max: Bounds of the log standard deviation.

    Returns:
        ``(action, info)``: action ``[..., A]`` in (-1, 1); ``info`` holds
        ``mean`` (squashed) and ``log_std`` ``[..., A]``, ``entropy`` and
        ``scaled_entropy`` ``[...]``.
    """
    log_std = log_std_min + 0.5 * (log_std_max - log_std_min) * (jnp.tanh(log_std_raw) + 1.0)
    log_prob = jnp.sum(-0.5 * eps**2 - log_std - LOG_SQRT_2PI, -1)
    scaled_log_prob = log_prob * eps.shape[-1]
    action = jnp.tanh(mean + eps * jnp.exp(log_std))
    log_prob = log_prob - jnp.sum(jnp.log(jax.nn.relu(1.0 - action**2) + 1e-6), -1)
    entropy_scale = scaled_log_prob / (log_prob + 1e-8)
    info = {
        "mean": jnp.tanh(mean),
        "log_std": log_std,
        "entropy": -log_prob,
        "scaled_entropy": -log_prob * entropy_scale,
    }
    return action, info


def _uniform_embedding(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -0.02, 0.02)


class TDMPC2Networks(nn.Module):
    """All TD-MPC2 networks under one params tree.

    Params: ``encoder``, ``dynamics``, ``reward``, ``pi``, ``Qs`` (leading
    ``[num_q]`` axis), plus ``termination`` when episodic and ``task_emb`` when
    multitask. Target Q networks are not here: they live in the training state
    and are applied by passing them in place of ``Qs``.
    """

    config: TDMPC2Config

    def setup(self):
        cfg = self.config
        hidden = (cfg.mlp_dim, cfg.mlp_dim)
        if cfg.is_image:
            self.encoder = PixelEncoder(cfg)
        else:
            self.encoder = MLP((cfg.enc_dim,) * max(cfg.num_enc_layers - 1, 1), cfg.latent_dim,
                               simnorm_out=True, simnorm_dim=cfg.simnorm_dim)
        self.dynamics = MLP(hidden, cfg.latent_dim, simnorm_out=True, simnorm_dim=cfg.simnorm_dim)
        self.reward = MLP(hidden, cfg.num_bins, zero_out=True)
        self.pi = MLP(hidden, 2 * cfg.action_dim)
        self.Qs = QEnsemble(cfg)
        if cfg.episodic:
            self.termination = MLP(hidden, 1)
        if cfg.multitask:
            self.task_emb = nn.Embed(cfg.num_tasks, cfg.task_dim, embedding_init=_uniform_embedding)

    def _with_task(self, x: jax.Array, task) -> jax.Array:
        """``concat([x, emb(task)])``; the embedding is renormalised to norm <= 1 (``max_norm=1``)."""
        if not self.config.multitask:
            return x
        emb = self.task_emb(jnp.asarray(task, jnp.int32))
        norm = jnp.linalg.norm(emb, axis=-1, keepdims=True)
        emb = emb * jax.lax.stop_gradient(jnp.where(norm > 1.0, 1.0 / (norm + 1e-7), 1.0))
        emb = jnp.broadcast_to(emb, (*x.shape[:-1], emb.shape[-1]))
        return jnp.concatenate([x, emb.astype(x.dtype)], -1)

    def encode(self, obs: jax.Array, task=None) -> jax.Array:
        """Observations ``[N, *obs_shape]`` -> latents ``[N, latent_dim]``."""
        if self.config.is_image:
            return self.encoder(obs)
        x = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
        return self.encoder(self._with_task(x, task))

    def next(self, z: jax.Array, action: jax.Array, task=None) -> jax.Array:
        """Latent dynamics ``z_t, a_t -> z_{t+1}``."""
        return self.dynamics(jnp.concatenate([self._with_task(z, task), action], -1))

    def reward_logits(self, z: jax.Array, action: jax.Array, task=None) -> jax.Array:
        """Two-hot reward logits ``[..., num_bins]`` of taking ``action`` in ``z``."""
        return self.reward(jnp.concatenate([self._with_task(z, task), action], -1))

    def pi_outputs(self, z: jax.Array, task=None) -> tuple[jax.Array, jax.Array]:
        """Policy prior's ``(mean, raw log-std)`` before squashing, ``[..., A]`` each."""
        out = self.pi(self._with_task(z, task))
        return jnp.split(out, 2, axis=-1)

    def q_logits(self, z: jax.Array, action: jax.Array, task=None, dropout_keys=None) -> jax.Array:
        """Two-hot logits of every ensemble member, ``[num_q, ..., num_bins]``.

        ``dropout_keys``: ``[num_q]`` keys turn dropout on (one mask per member).
        """
        return self.Qs(jnp.concatenate([self._with_task(z, task), action], -1), dropout_keys)

    def termination_logit(self, z: jax.Array, task=None) -> jax.Array:
        """Logit that the episode has ended on arriving in ``z``, ``[...]`` (episodic models)."""
        return self.termination(self._with_task(z, task))[..., 0]

    def __call__(self, obs: jax.Array, action: jax.Array, task=None):
        """Touches every parameter once (used by ``init``)."""
        z = self.encode(obs, task)
        out = [self.next(z, action, task), self.reward_logits(z, action, task), self.pi_outputs(z, task),
               self.q_logits(z, action, task)]
        if self.config.episodic:
            out.append(self.termination_logit(z, task))
        return out
