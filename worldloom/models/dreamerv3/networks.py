"""DreamerV3 Flax modules: encoder, RSSM cell, decoder and heads.

Each method computes one step (or one time-parallel pass); the scans over
time live in :mod:`worldloom.models.dreamerv3.losses`, which calls these
methods through ``module.apply``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from worldloom.models.dreamerv3.config import DreamerV3Config
from worldloom.nn.functional import conv_same, sigmoid, silu, symlog
from worldloom.nn.layers import BlockLinear, Dense, RMSNorm, dreamer_init


def _dtype(config: DreamerV3Config):
    return jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32


class NormAct(nn.Module):
    """``Dense(units) -> RMSNorm -> SiLU``."""

    units: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = Dense(self.units, dtype=self.dtype)(x)
        return silu(RMSNorm()(x))


class ConvParams(nn.Module):
    """A conv layer's kernel ``[k, k, in, out]`` and bias ``[out]``, under ``nn.Conv``'s names and init order."""

    features: int
    kernel: int
    outscale: float = 1.0

    @nn.compact
    def __call__(self, channels: int):
        kernel = self.param("kernel", dreamer_init(self.outscale),
                            (self.kernel, self.kernel, channels, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return kernel, bias


def _phase_taps(kernel: int, pooled: bool) -> np.ndarray:
    """0/1 maps from a ``kernel``-tap same-padded 1-D filter at full resolution to ``2r+1`` taps at half.

    Full-resolution position ``2i + a`` (phase ``a``) filtered at offset ``d``
    reads position ``2i + a + d``, which is half-resolution cell
    ``i + (a + d) // 2`` and, inside it, phase ``(a + d) % 2``. For a nearest
    upsampling before the filter (``pooled=False``) both phases of a cell hold
    the same value, and the map is ``[2 (a), 2r+1 (cell offset), kernel (d)]``;
    for a filter before a 2x2 pool (``pooled=True``) it keeps the input phase:
    ``[2 (a), 2r+1, 2 (input phase), kernel]``. Zero padding agrees: a position
    is outside the image exactly when its cell is.
    """
    pad = kernel // 2
    reach = -(-pad // 2)
    shape = (2, 2 * reach + 1, 2, kernel) if pooled else (2, 2 * reach + 1, kernel)
    taps = np.zeros(shape, np.float32)
    for a in range(2):
        for d in range(-pad, pad + 1):
            cell, phase = divmod(a + d, 2)
            index = (a, cell + reach, phase, d + pad) if pooled else (a, cell + reach, d + pad)
            taps[index] = 1.0
    return taps


class ConvPool(nn.Module):
    """Same-padded conv then 2x2 max pool: ``[N, H, W, C] -> [N, H/2, W/2, features]``.

    Computed at half resolution: the input's 2x2 phases become channels
    (``[N, H/2, W/2, 4C]``), the kernel is rearranged into a 3x3 one that gives
    all four output phases at once (``4 * features`` channels), and the pool is a
    max over them. The same sums as the full-resolution conv, in shapes that run
    several times faster than a 5x5 conv over few channels.
    """

    features: int
    kernel: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        kernel, bias = ConvParams(self.features, self.kernel, name="Conv_0")(c)
        taps = jnp.asarray(_phase_taps(self.kernel, pooled=True))
        span = taps.shape[1]
        kernel = jnp.einsum("ausy,bvtx,yxio->uvstiabo", taps, taps, kernel).reshape(
            span, span, 4 * c, 4 * self.features)
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)
        y = conv_same(x.astype(self.dtype), kernel.astype(self.dtype))
        y = y.reshape(n, h // 2, w // 2, 4, self.features).max(3)
        return y + bias.astype(y.dtype)


class UpConv(nn.Module):
    """Nearest 2x upsampling then a same-padded conv: ``[N, H, W, C] -> [N, 2H, 2W, features]``.

    Computed at the input's resolution: a 3x3 kernel rearranged from the
    ``kernel x kernel`` one gives the four output phases as channels, which are
    then interleaved (depth to space). The same sums as upsampling first, with
    ``9 / kernel**2`` of the multiplies.
    """

    features: int
    kernel: int
    outscale: float = 1.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        kernel, bias = ConvParams(self.features, self.kernel, self.outscale, name="Conv_0")(c)
        taps = jnp.asarray(_phase_taps(self.kernel, pooled=False))
        span = taps.shape[1]
        kernel = jnp.einsum("auy,bvx,yxio->uviabo", taps, taps, kernel).reshape(span, span, c, 4 * self.features)
        y = conv_same(x.astype(self.dtype), kernel.astype(self.dtype)).reshape(n, h, w, 2, 2, self.features)
        y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, self.features)
        return y + bias.astype(y.dtype)


class Encoder(nn.Module):
    """Observation ``[N, *obs_shape]`` -> tokens ``[N, token_dim]``."""

    config: DreamerV3Config

    @nn.compact
    def __call__(self, obs):
        cfg, dtype = self.config, _dtype(self.config)
        if not cfg.is_image:
            x = symlog(obs.reshape(obs.shape[0], -1).astype(jnp.float32))
            for _ in range(cfg.enc_layers):
                x = NormAct(cfg.units, dtype)(x)
            return x
        if obs.dtype == jnp.uint8:
            x = obs.astype(jnp.float32) / 255.0 - 0.5
        else:
            x = obs.astype(jnp.float32) - 0.5
        for i, mult in enumerate(cfg.cnn_mults):
            x = ConvPool(cfg.depth * mult, cfg.kernel, dtype=dtype, name=f"Conv_{i}")(x)
            x = silu(RMSNorm()(x))
        return x.reshape(x.shape[0], -1)


class Decoder(nn.Module):
    """Features (deter ``[N, D]``, stoch ``[N, S]``) -> reconstruction ``[N, *obs_shape]``.

    Vectors come out in symlog space; images in [0, 1] (sigmoid).
    """

    config: DreamerV3Config

    @nn.compact
    def __call__(self, deter, stoch):
        cfg, dtype = self.config, _dtype(self.config)
        if not cfg.is_image:
            x = jnp.concatenate([deter, stoch], -1)
            for _ in range(cfg.dec_layers):
                x = NormAct(cfg.units, dtype)(x)
            x = Dense(cfg.obs_size)(x).astype(jnp.float32)
            return x.reshape(x.shape[0], *cfg.obs_shape)
        depths = [cfg.depth * m for m in cfg.cnn_mults]
        factor = 2 ** len(depths)
        min_h, min_w = cfg.obs_shape[0] // factor, cfg.obs_shape[1] // factor
        shape = (min_h, min_w, depths[-1])
        size, groups = math.prod(shape), cfg.decoder_blocks
        x0 = BlockLinear(size, groups, dtype=dtype)(deter)
        # '(g h w c) -> h w (g c)'
        x0 = x0.reshape(-1, groups, min_h, min_w, size // (groups * min_h * min_w))
        x0 = x0.transpose(0, 2, 3, 1, 4).reshape(-1, *shape)
        x1 = silu(RMSNorm()(Dense(2 * cfg.units, dtype=dtype)(stoch)))
        x1 = Dense(size, dtype=dtype)(x1).reshape(-1, *shape)
        x = silu(RMSNorm()(x0 + x1))
        for i, depth in enumerate(reversed(depths[:-1])):
            x = silu(RMSNorm()(UpConv(depth, cfg.kernel, dtype=dtype, name=f"Conv_{i}")(x)))
        x = UpConv(cfg.obs_shape[-1], cfg.kernel, dtype=dtype, name=f"Conv_{len(depths) - 1}")(x)
        return sigmoid(x.astype(jnp.float32))


class RSSM(nn.Module):
    """The recurrent state-space model's cell, prior and posterior.

    ``deter`` is the GRU state ``[N, D]``; ``stoch`` the flat one-hot sample
    ``[N, 32 * classes]``; logits are ``[N, 32, classes]``.
    """

    config: DreamerV3Config

    def setup(self):
        cfg, dtype = self.config, _dtype(self.config)
        self.dyn_in = [NormAct(cfg.hidden, dtype) for _ in range(3)]
        self.dyn_hidden = BlockLinear(cfg.deter, cfg.blocks, dtype=dtype)
        self.dyn_hidden_norm = RMSNorm()
        self.dyn_gru = BlockLinear(3 * cfg.deter, cfg.blocks, dtype=dtype)
        self.prior_layers = [NormAct(cfg.hidden, dtype) for _ in range(cfg.img_layers)]
        self.prior_out = Dense(cfg.stoch_size, dtype=dtype)
        self.post_layers = [NormAct(cfg.hidden, dtype) for _ in range(cfg.obs_layers)]
        self.post_out = Dense(cfg.stoch_size, dtype=dtype)

    def core(self, deter, stoch, action):
        """One GRU step: ``deter [N, D], stoch [N, S], action [N, A] -> deter [N, D]``."""
        cfg = self.config
        action = action / jax.lax.stop_gradient(jnp.maximum(1.0, jnp.abs(action)))
        branches = [layer(x) for layer, x in zip(self.dyn_in, (deter, stoch, action))]
        x = jnp.concatenate(branches, -1)
        # Group-major [G, N, D/G] from here to the output: each block sees its slice of deter and
        # all of x (the reference broadcasts x to every block).
        groups, lead = cfg.blocks, deter.shape[:-1]
        deter_groups = jnp.moveaxis(deter.reshape(*lead, groups, -1), -2, 0)
        x = self.dyn_hidden(deter_groups.astype(x.dtype), shared=x, grouped=True)
        x = silu(self.dyn_hidden_norm(x, grouped=True))
        x = self.dyn_gru(x, grouped=True).astype(jnp.float32)
        reset, cand, update = jnp.split(x, 3, -1)
        reset = sigmoid(reset)
        cand = jnp.tanh(reset * cand)
        update = sigmoid(update - 1.0)
        deter_groups = update * cand + (1.0 - update) * deter_groups
        return jnp.moveaxis(deter_groups, 0, -2).reshape(*lead, cfg.deter)

    def prior(self, deter):
        """Prior logits ``[N, 32, classes]`` from ``deter [N, D]``."""
        x = deter
        for layer in self.prior_layers:
            x = layer(x)
        return self._logits(self.prior_out(x))

    def posterior(self, deter, tokens):
        """Posterior logits ``[N, 32, classes]`` from ``deter`` and encoder ``tokens``."""
        x = jnp.concatenate([deter, tokens.astype(deter.dtype)], -1)
        for layer in self.post_layers:
            x = layer(x)
        return self._logits(self.post_out(x))

    def _logits(self, x):
        cfg = self.config
        return x.astype(jnp.float32).reshape(*x.shape[:-1], cfg.stoch, cfg.classes)

    def __call__(self, deter, stoch, action, tokens):
        deter = self.core(deter, stoch, action)
        return self.prior(deter), self.posterior(deter, tokens)


class Head(nn.Module):
    """``head_layers x NormAct(units)`` then a linear output of ``outputs``."""

    config: DreamerV3Config
    outputs: int
    outscale: float = 1.0

    @nn.compact
    def __call__(self, features):
        cfg = self.config
        x = features
        for _ in range(cfg.head_layers):
            x = NormAct(cfg.units, _dtype(cfg))(x)
        return Dense(self.outputs, outscale=self.outscale)(x).astype(jnp.float32)


class DreamerV3Networks(nn.Module):
    """All DreamerV3 world-model networks under one params tree.

    Params: ``encoder``, ``rssm``, ``decoder``, ``reward``, ``continue``.
    """

    config: DreamerV3Config

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg)
        self.rssm = RSSM(cfg)
        self.decoder = Decoder(cfg)
        self.reward = Head(cfg, cfg.reward_bins, outscale=0.0)
        self.cont = Head(cfg, 1, name="continue")

    def encode(self, obs):
        return self.encoder(obs)

    def core(self, deter, stoch, action):
        return self.rssm.core(deter, stoch, action)

    def prior(self, deter):
        return self.rssm.prior(deter)

    def posterior(self, deter, tokens):
        return self.rssm.posterior(deter, tokens)

    def observe(self, deter, stoch, action, tokens, first, first_deter):
        """A posterior step before sampling: ``(cont_deter, deter [N, D], logits [N, 32, classes])``.

        ``cont_deter`` is the GRU step from ``(deter, stoch, action)``; the new
        ``deter`` is ``first_deter`` ``[1, D]`` instead where ``first`` ``[N]``.
        """
        cont = self.rssm.core(deter, stoch, action)
        deter = jnp.where(first[:, None], jnp.broadcast_to(first_deter, cont.shape), cont)
        return cont, deter, self.rssm.posterior(deter, tokens)

    def decode(self, deter, stoch):
        return self.decoder(deter, stoch)

    def reward_logits(self, features):
        return self.reward(features)

    def continue_logit(self, features):
        return self.cont(features)[..., 0]

    def __call__(self, obs, action):
        """Touches every parameter once (used by ``init``)."""
        cfg = self.config
        batch = obs.shape[0]
        deter = jnp.zeros((batch, cfg.deter))
        stoch = jnp.zeros((batch, cfg.stoch_size))
        tokens = self.encode(obs)
        _, post = self.rssm(deter, stoch, action, tokens)
        features = jnp.concatenate([deter, post.reshape(batch, -1)], -1)
        return (self.decode(deter, stoch), self.reward_logits(features), self.continue_logit(features))
