"""TD-MPC2 pure functions over ``params``: encode, dynamics, heads, policy, Q.

:class:`TDMPC2Functions` wraps :class:`~worldloom.models.tdmpc2.networks.TDMPC2Networks`
for one config. Each method is a pure function of explicit params (and keys
where it is random); everything jits. Inputs may carry any leading axes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from worldloom.models.tdmpc2.config import TDMPC2Config
from worldloom.models.tdmpc2.networks import TDMPC2Networks, shift_augment, tanh_gaussian
from worldloom.nn.functional import tdmpc_twohot_mean
from worldloom.nn.layers import simnorm

Params = Any


class TDMPC2Functions:
    """Pure functions of one TD-MPC2 config. ``task`` is ``None`` for single-task models."""

    def __init__(self, config: TDMPC2Config):
        self.config = config
        self.net = TDMPC2Networks(config)
        # The same networks with a two-member Q ensemble: q_two applies it to the two chosen heads' params.
        self._two_q = TDMPC2Networks(dataclasses.replace(config, num_q=2))

    def _apply(self, params, method, *args):
        return self.net.apply({"params": params}, *args, method=method)

    def init(self, key: jax.Array) -> Params:
        """Fresh params (target Q networks excluded)."""
        cfg = self.config
        obs = jnp.zeros((1, *cfg.obs_shape), jnp.uint8 if cfg.is_image else jnp.float32)
        task = jnp.zeros((1,), jnp.int32) if cfg.multitask else None
        return self.net.init(key, obs, jnp.zeros((1, cfg.action_dim)), task)["params"]

    # ------------------------------------------------------------ model

    def encode(self, params, obs, task=None, key=None) -> jax.Array:
        """Latents ``[..., latent_dim]`` of observations ``[..., *obs_shape]``.

        ``key`` enables the random-shift augmentation of image observations
        (training only); state observations ignore it.
        """
        cfg = self.config
        lead = obs.shape[: obs.ndim - len(cfg.obs_shape)]
        flat = obs.reshape(-1, *cfg.obs_shape)
        if key is not None and cfg.is_image:
            flat = shift_augment(key, flat, cfg.shift_pad)
        if task is not None:
            task = jnp.broadcast_to(task, lead).reshape(-1)
        z = self._apply(params, TDMPC2Networks.encode, flat, task)
        return z.reshape(*lead, cfg.latent_dim)

    def next(self, params, z, action, task=None) -> jax.Array:
        """Latent dynamics ``z_{t+1} = d(z_t, a_t)``, ``[..., latent_dim]``."""
        return self._apply(params, TDMPC2Networks.next, z, action, task)

    def reward_logits(self, params, z, action, task=None) -> jax.Array:
        return self._apply(params, TDMPC2Networks.reward_logits, z, action, task)

    def reward(self, params, z, action, task=None) -> jax.Array:
        """Predicted reward in real units ``[...]``."""
        cfg = self.config
        return tdmpc_twohot_mean(self.reward_logits(params, z, action, task), cfg.vmin, cfg.vmax)

    def termination_logit(self, params, z, task=None) -> jax.Array:
        """Termination logit of arriving in ``z`` ``[...]`` (``-inf``, i.e. never, unless episodic)."""
        if not self.config.episodic:
            return jnp.full(z.shape[:-1], -jnp.inf, jnp.float32)
        return self._apply(params, TDMPC2Networks.termination_logit, z, task)

    def continue_prob(self, params, z, task=None) -> jax.Array:
        """Probability that the episode goes on after arriving in ``z`` (1 unless episodic)."""
        return 1.0 - jax.nn.sigmoid(self.termination_logit(params, z, task))

    def pi(self, params, z, key, task=None) -> tuple[jax.Array, dict]:
        """Sample of the policy prior and its info (see :func:`tanh_gaussian`)."""
        cfg = self.config
        mean, log_std_raw = self._apply(params, TDMPC2Networks.pi_outputs, z, task)
        eps = jax.random.normal(key, mean.shape, mean.dtype)
        return tanh_gaussian(mean, log_std_raw, eps, cfg.log_std_min, cfg.log_std_max)

    def pi_mean(self, params, z, task=None) -> jax.Array:
        """The policy prior's deterministic action ``tanh(mean)``, ``[..., A]``."""
        mean, _ = self._apply(params, TDMPC2Networks.pi_outputs, z, task)
        return jnp.tanh(mean)

    def _dropout_keys(self, dropout_key):
        """One dropout key per Q head, ``[num_q]`` (``None`` when dropout is off)."""
        if dropout_key is None or self.config.dropout == 0.0:
            return None
        return jax.random.split(dropout_key, self.config.num_q)

    def q_logits(self, params, z, action, task=None, dropout_key=None) -> jax.Array:
        """Logits of every Q head ``[num_q, ..., num_bins]``; ``dropout_key`` turns dropout on.

        Head ``i`` draws its dropout mask from ``split(dropout_key, num_q)[i]``.
        """
        return self._apply(params, TDMPC2Networks.q_logits, z, action, task, self._dropout_keys(dropout_key))

    def q_all(self, params, z, action, task=None, dropout_key=None) -> jax.Array:
        """Q values of every head in real units, ``[num_q, ...]``."""
        cfg = self.config
        return tdmpc_twohot_mean(self.q_logits(params, z, action, task, dropout_key), cfg.vmin, cfg.vmax)

    def q_two(self, params, z, action, key, reduce: str, task=None, dropout_key=None) -> jax.Array:
        """``min`` or ``avg`` of two randomly chosen Q heads (the same two for the whole batch).

        Only the two chosen heads are evaluated: their params are gathered from
        the ensemble and, with dropout on, their dropout keys from the
        ensemble's. The values (and gradients) are those of evaluating every
        head with :meth:`q_all` and picking two, for ``2 / num_q`` of the work.
        """
        cfg = self.config
        heads = jax.random.permutation(key, cfg.num_q)[:2]
        chosen = {**params, "Qs": jax.tree_util.tree_map(lambda p: p[heads], params["Qs"])}
        keys = self._dropout_keys(dropout_key)
        keys = None if keys is None else keys[heads]
        logits = self._two_q.apply({"params": chosen}, z, action, task, keys, method=TDMPC2Networks.q_logits)
        values = tdmpc_twohot_mean(logits, cfg.vmin, cfg.vmax)
        return jnp.min(values, 0) if reduce == "min" else jnp.mean(values, 0)

    def with_q(self, params, q_params) -> Params:
        """``params`` with the Q ensemble replaced (to apply target networks)."""
        return {**params, "Qs": q_params}

    # ------------------------------------------------------------ rollouts

    def rollout(self, params, z0, actions, task=None) -> jax.Array:
        """Latent rollout under ``actions`` ``[H, N, A]`` from ``z0`` ``[N, L]``, one ``lax.scan``.

        Returns:
            ``[H + 1, N, L]``: ``z0`` followed by the ``H`` predicted latents.
        """

        def step(z, action):
            nxt = self.next(params, z, action, task)
            return nxt, nxt

        _, zs = jax.lax.scan(step, z0, actions)
        return jnp.concatenate([z0[None], zs], 0)

    def initial_latent(self, batch_size: int) -> jax.Array:
        """The SimNorm of zeros (every entry ``1/simnorm_dim``), ``[batch_size, L]``."""
        cfg = self.config
        return simnorm(jnp.zeros((batch_size, cfg.latent_dim), jnp.float32), cfg.simnorm_dim)
