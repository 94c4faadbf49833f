"""DreamerV3 pure functions: the scanned posterior, imagination and the loss.

Time alignment (buffer convention): row ``t`` holds ``obs_t, action_t,
reward_t, continue_t``, where ``reward_t``/``continue_t`` follow ``action_t``.
State ``s_t`` summarises ``obs_0..t`` and ``action_0..t-1``. The reward and
continue of transition ``t`` are predicted from the state the model reaches
after ``action_t``: the posterior ``s_{t+1}`` when ``obs_{t+1}`` is in the same
window and episode; otherwise (last row of a window, or the next row starts a
new episode) from the prior step ``img_step(s_t, action_t)``, exactly as
imagination predicts them. So no transition's reward or termination is
dropped, the terminal one included.

The online agent stores steps in the reference's own layout instead (the
terminal observation is a row; see :meth:`DreamerV3Functions.stream_loss`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from worldloom.core.types import LatentState
from worldloom.models.dreamerv3.config import DreamerV3Config
from worldloom.models.dreamerv3.networks import DreamerV3Networks
from worldloom.nn.functional import (
    categorical_entropy,
    categorical_kl,
    dreamer_bins,
    split_key,
    straight_through_mode,
    straight_through_sample,
    symexp,
    symlog,
    twohot_loss,
    twohot_mean,
    unimix_probs,
)
from worldloom.nn.scan import apply_tapped, scan_hoisted

sg = jax.lax.stop_gradient


# Frames per chunk of the image encoder and decoder under ``remat="cnn"`` (one 64-step sequence's worth).
REMAT_FRAMES = 64


class DreamerV3Functions:
    """Pure functions over ``params`` for one config. Everything here jits."""

    def __init__(self, config: DreamerV3Config):
        self.config = config
        self.net = DreamerV3Networks(config)
        self.bins = dreamer_bins(config.reward_bins)

    # ------------------------------------------------------------ pieces

    def _apply(self, params, method, *args):
        return self.net.apply({"params": params}, *args, method=method)

    def init(self, key) -> Any:
        cfg = self.config
        obs = jnp.zeros((1, *cfg.obs_shape), jnp.uint8 if cfg.is_image else jnp.float32)
        return self.net.init(key, obs, jnp.zeros((1, cfg.action_dim)))["params"]

    def encode(self, params, obs):
        """Tokens for ``obs`` ``[..., *obs_shape]`` -> ``[..., token_dim]``."""
        lead = obs.shape[: obs.ndim - len(self.config.obs_shape)]
        flat = obs.reshape(-1, *self.config.obs_shape)
        tokens = self._apply(params, DreamerV3Networks.encode, flat)
        return tokens.reshape(*lead, tokens.shape[-1])

    def _over_frames(self, params, method, *frames):
        """``method`` on frames ``[B, T, ...]`` -> ``[B, T, ...]``, as one batch of ``B * T``.

        With ``remat="cnn"`` an image model runs in chunks of ``B x c`` frames
        (``c`` consecutive steps of every sequence, ``B * c`` near
        :data:`REMAT_FRAMES`) and recomputes each chunk's activations in the
        backward pass: the encoder's and decoder's memory is one chunk's, for
        one more forward pass of each. Chunks keep the batch axis whole, so a
        batch sharded over devices stays sharded.
        """
        batch_size, length = frames[0].shape[:2]
        if self.config.remat == "cnn" and self.config.is_image:
            steps = max([c for c in range(1, length + 1) if length % c == 0 and batch_size * c <= REMAT_FRAMES],
                        default=1)
            run = jax.checkpoint(lambda *chunk: self._apply(params, method, *chunk))

            def one_chunk(chunk):
                out = run(*(x.reshape(batch_size * steps, *x.shape[2:]) for x in chunk))
                return out.reshape(batch_size, steps, *out.shape[1:])

            chunks = [jnp.moveaxis(x.reshape(batch_size, length // steps, steps, *x.shape[2:]), 1, 0)
                      for x in frames]
            out = jnp.moveaxis(jax.lax.map(one_chunk, chunks), 0, 1)
            return out.reshape(batch_size, length, *out.shape[3:])
        out = self._apply(params, method, *(x.reshape(-1, *x.shape[2:]) for x in frames))
        return out.reshape(batch_size, length, *out.shape[1:])

    def core(self, params, deter, stoch, action):
        return self._apply(params, DreamerV3Networks.core, deter, stoch, action)

    def prior(self, params, deter):
        return self._apply(params, DreamerV3Networks.prior, deter)

    def posterior(self, params, deter, tokens):
        return self._apply(params, DreamerV3Networks.posterior, deter, tokens)

    def sample(self, logits, key, stochastic: bool = True):
        """Flat straight-through one-hot latent ``[..., 32*classes]`` from logits."""
        probs = unimix_probs(logits, self.config.unimix)
        onehot = straight_through_sample(key, probs) if stochastic else straight_through_mode(probs)
        return onehot.reshape(*onehot.shape[:-2], -1)

    @staticmethod
    def state(deter, stoch, posterior_logits=None, prior_logits=None) -> LatentState:
        """A state; step functions carry ``state(deter, stoch)`` (no logits)."""
        return LatentState(deter, stoch, posterior_logits, prior_logits)

    def initial(self, params, batch_size: int) -> LatentState:
        """The all-zero state (the reference's ``initial``) for ``batch_size``."""
        cfg = self.config
        deter = jnp.zeros((batch_size, cfg.deter), jnp.float32)
        stoch = jnp.zeros((batch_size, cfg.stoch_size), jnp.float32)
        return self.state(deter, stoch)

    # ------------------------------------------------------------ recurrences

    def img_step(self, params, state: LatentState, action, key, stochastic=True) -> LatentState:
        """Prior step: ``s_t, a_t -> s_{t+1}`` without an observation (``prior_logits`` set)."""
        deter = self.core(params, state.deterministic, state.stochastic, action)
        logits = self.prior(params, deter)
        return self.state(deter, self.sample(logits, key, stochastic), prior_logits=logits)

    def observe_step(self, params, state: LatentState, action, tokens, key, stochastic=True) -> LatentState:
        """One posterior step: ``s_{t-1}, a_{t-1}, tokens(o_t) -> s_t`` with both logits.

        The same step as :meth:`obs_step` without resets: from the zero state and
        a zero action it lands where a reset does, so it also encodes a first
        observation.
        """
        deter = self.core(params, state.deterministic, state.stochastic, action)
        logits = self.posterior(params, deter, tokens)
        return self.state(deter, self.sample(logits, key, stochastic), logits, self.prior(params, deter))

    def observe_scan(self, params, tokens, prev_actions, is_first, start: LatentState, key,
                     stochastic=True):
        """Posterior over a sequence, one ``lax.scan`` over time.

        Args:
            tokens: Encoder tokens ``[B, T, E]``.
            prev_actions: Action leading into each step ``[B, T, A]``.
            is_first: ``[B, T]`` bool; the carry and action reset there.
            start: State before step 0 ``[B, ...]``.

        Returns:
            ``(posterior, cont_deter)``: posterior states ``[B, T, ...]`` (with
            ``posterior_logits``) and the
            GRU output before resets ``[B, T, D]`` (the continuation of the
            previous state, which differs from the posterior's deter only where
            ``is_first``).
        """
        batch = tokens.shape[0]
        first_deter = self.first_deter(params, prev_actions.shape[-1])
        keys = split_key(key, tokens.shape[1])

        def step(params, first_deter, carry, inputs, taps):
            return self._obs_step(params, carry, inputs, first_deter, stochastic, taps)

        time_major = jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), (tokens, prev_actions, is_first))
        carry = (start.deterministic.reshape(batch, -1), start.stochastic.reshape(batch, -1))
        _, (deter, stoch, logits, cont) = scan_hoisted(step, params, first_deter, carry, (*time_major, keys))
        deter, stoch, logits, cont = (jnp.swapaxes(x, 0, 1) for x in (deter, stoch, logits, cont))
        return self.state(deter, stoch, posterior_logits=logits), cont

    def first_deter(self, params, action_dim: int):
        """GRU output from the zero state and zero action ``[1, D]``: every reset lands here."""
        zero = self.initial(params, 1)
        return self.core(params, zero.deterministic, zero.stochastic, jnp.zeros((1, action_dim), jnp.float32))

    def obs_step(self, params, carry, inputs, first_deter, stochastic=True):
        """One posterior step: what :meth:`observe_scan` does at each step.

        Args:
            carry: ``(deter [B, D], stoch [B, S])`` of the previous step.
            inputs: ``(token [B, E], prev_action [B, A], is_first [B], key)``.
            first_deter: :meth:`first_deter`, where resets land.

        Returns:
            ``(carry, (deter, stoch, logits, cont_deter))``.
        """
        carry, outputs, _, _ = self._obs_step(params, carry, inputs, first_deter, stochastic, taps=None)
        return carry, outputs

    def _obs_step(self, params, carry, inputs, first_deter, stochastic, taps):
        """:meth:`obs_step` with its linear layers tapped: ``(carry, outputs, layer inputs, taps)``."""
        deter, stoch = carry
        token, prev_action, first, step_key = inputs
        (cont, deter, logits), layer_inputs, taps = apply_tapped(
            self.net, params, taps, deter, stoch, prev_action, token, first, first_deter,
            method=DreamerV3Networks.observe)
        stoch = self.sample(logits, step_key, stochastic)
        return (deter, stoch), (deter, stoch, logits, cont), layer_inputs, taps

    def imagine(self, params, start: LatentState, actions, key, stochastic=True):
        """Prior rollout over ``actions`` ``[H, B, A]`` -> states ``[H, B, ...]``."""
        keys = jax.random.split(key, actions.shape[0])

        def step(state, inputs):
            action, step_key = inputs
            nxt = self.img_step(params, state, action, step_key, stochastic)
            return nxt.core(), nxt

        _, states = jax.lax.scan(step, start.core(), (actions, keys))
        return states

    # ------------------------------------------------------------ heads

    def reward(self, params, features):
        """Predicted reward in real units ``[...]``."""
        logits = self._apply(params, DreamerV3Networks.reward_logits, features)
        return twohot_mean(logits, self.bins)

    def continue_prob(self, params, features):
        return jax.nn.sigmoid(self._apply(params, DreamerV3Networks.continue_logit, features))

    def decode_obs(self, params, deter, stoch):
        """Reconstruction in observation units ``[..., *obs_shape]`` (images in [0, 1])."""
        lead = deter.shape[:-1]
        out = self._apply(params, DreamerV3Networks.decode, deter.reshape(-1, deter.shape[-1]),
                          stoch.reshape(-1, stoch.shape[-1]))
        out = out.reshape(*lead, *self.config.obs_shape)
        return out if self.config.is_image else symexp(out)

    # ------------------------------------------------------------ loss

    def loss(self, params, batch, key, stochastic=True):
        """World-model loss on a ``[B, T, ...]`` batch.

        Returns:
            ``(loss, metrics)``: the scalar total and a dict with ``loss`` and
            ``loss/<term>`` per term plus entropies, all f32 scalars.
        """
        total, metrics, _ = self.loss_and_posterior(params, batch, key, stochastic)
        return total, metrics

    def loss_and_posterior(self, params, batch, key, stochastic=True):
        """:meth:`loss` plus the posterior states ``[B, T, ...]`` (imagination starts)."""
        obs = batch["obs"]
        actions = batch["actions"].astype(jnp.float32)
        rewards = batch["rewards"].astype(jnp.float32)
        continues = batch["continues"].astype(jnp.float32)
        batch_size, length = rewards.shape
        is_first = batch.get("is_first")
        is_first = jnp.zeros((batch_size, length), bool) if is_first is None else is_first.astype(bool)
        prev_actions = jnp.concatenate([jnp.zeros_like(actions[:, :1]), actions[:, :-1]], 1)
        scan_key, next_key = split_key(key, 2)

        tokens = self._over_frames(params, DreamerV3Networks.encode, obs)
        start = self.initial(params, batch_size)
        post, cont_deter = self.observe_scan(params, tokens, prev_actions, is_first, start, scan_key, stochastic)

        # Priors for the KL and for the states after each action, in one pass.
        last_deter = self.core(params, post.deterministic[:, -1], post.stochastic[:, -1], actions[:, -1])
        after_deter = jnp.concatenate([cont_deter[:, 1:], last_deter[:, None]], 1)
        all_prior = self.prior(params, jnp.concatenate([cont_deter, last_deter[:, None]], 1))
        # From the zero start, step 0 and every reset step share one deter, so
        # the prior of step 0 stands for all of them.
        reset = is_first.at[:, 0].set(True)
        prior_logits = jnp.where(reset[..., None, None], all_prior[:, :1], all_prior[:, :-1])

        after_prior_stoch = self.sample(all_prior[:, 1:], next_key, stochastic)
        use_prior = jnp.concatenate([is_first[:, 1:], jnp.ones((batch_size, 1), bool)], 1)
        next_post_stoch = jnp.concatenate([post.stochastic[:, 1:], post.stochastic[:, -1:]], 1)
        after_stoch = jnp.where(use_prior[..., None], after_prior_stoch, next_post_stoch)
        features = jnp.concatenate([after_deter, after_stoch], -1)
        total, metrics = self.loss_terms(params, obs, post, prior_logits, features, rewards, continues)
        return total, metrics, post

    def stream_loss(self, params, batch, start: LatentState, key, stochastic=True):
        """World-model loss on replayed steps in the reference's layout (:mod:`worldloom.agents.replay`).

        Row ``t`` holds ``obs_t``, the action that led to it and the reward and
        terminal flag that arrived with it; the reward and continue heads read
        the posterior of ``obs_t`` itself, so a terminal observation trains them
        from its own posterior, and a first row trains reward 0 and continue 1.

        Args:
            batch: ``obs [B, T, ...]``, ``prev_actions [B, T, A]``, ``rewards``,
                ``is_first`` and ``is_terminal`` ``[B, T]``.
            start: The state before row 0 ``[B, ...]`` (a stored latent).

        Returns:
            ``(loss, metrics, posterior [B, T, ...])``.
        """
        obs = batch["obs"]
        is_first = batch["is_first"].astype(bool)
        tokens = self._over_frames(params, DreamerV3Networks.encode, obs)
        post, _ = self.observe_scan(params, tokens, batch["prev_actions"].astype(jnp.float32), is_first, start,
                                    key, stochastic)
        prior_logits = self.prior(params, post.deterministic)
        continues = 1.0 - batch["is_terminal"].astype(jnp.float32)
        total, metrics = self.loss_terms(params, obs, post, prior_logits, post.features,
                                         batch["rewards"].astype(jnp.float32), continues)
        return total, metrics, post

    def loss_terms(self, params, obs, post: LatentState, prior_logits, features, rewards, continues):
        """The weighted world-model loss from a posterior ``[B, T, ...]`` and its priors.

        Args:
            obs: Observations the posterior saw ``[B, T, ...]`` (reconstruction targets).
            prior_logits: ``[B, T, 32, classes]`` priors of the posterior steps (KL terms).
            features: ``[B, T, F]`` the reward and continue heads read.
            rewards, continues: ``[B, T]`` targets of those heads.

        Returns:
            ``(loss, metrics)`` with ``loss/<term>`` and the prior/posterior entropies.
        """
        cfg = self.config
        batch_size, length = rewards.shape
        post_probs = unimix_probs(post.posterior_logits, cfg.unimix)
        prior_probs = unimix_probs(prior_logits, cfg.unimix)
        dyn = categorical_kl(sg(post_probs), prior_probs).sum(-1)
        rep = categorical_kl(post_probs, sg(prior_probs)).sum(-1)
        losses = {
            "dyn": jnp.maximum(dyn, cfg.free_nats),
            "rep": jnp.maximum(rep, cfg.free_nats),
        }

        recon = self._over_frames(params, DreamerV3Networks.decode, post.deterministic, post.stochastic)
        if cfg.is_image:
            target = obs.astype(jnp.float32) / (255.0 if obs.dtype == jnp.uint8 else 1.0)
        else:
            target = symlog(obs.astype(jnp.float32))
        sq = (recon - sg(target)) ** 2
        losses["rec"] = sq.reshape(batch_size, length, -1).sum(-1)

        reward_logits = self._apply(params, DreamerV3Networks.reward_logits, features)
        losses["rew"] = twohot_loss(reward_logits, rewards, self.bins)
        cont_logit = self._apply(params, DreamerV3Networks.continue_logit, features)
        cont_target = continues * (1.0 - 1.0 / cfg.contdisc_horizon)
        losses["con"] = -(cont_target * jax.nn.log_sigmoid(cont_logit)
                          + (1.0 - cont_target) * jax.nn.log_sigmoid(-cont_logit))

        scales = {"rec": cfg.loss_scale_rec, "rew": cfg.loss_scale_rew, "con": cfg.loss_scale_con,
                  "dyn": cfg.loss_scale_dyn, "rep": cfg.loss_scale_rep}
        total = sum(scales[k] * losses[k].mean() for k in scales)
        metrics = {"loss": total}
        metrics.update({f"loss/{k}": v.mean() for k, v in losses.items()})
        metrics["prior_entropy"] = categorical_entropy(prior_probs).sum(-1).mean()
        metrics["post_entropy"] = categorical_entropy(post_probs).sum(-1).mean()
        return total, metrics
