"""TD-MPC2's training step: one pure ``step(state, batch, key)`` for a trainer to jit and scan.

One step does what the reference's ``_update`` does, in the same order:

1. world-model loss (consistency, reward, value, termination) on the latent
   rollout; Adam on every network but the policy, the encoder at
   ``enc_lr_scale`` times the learning rate, after a global-norm clip;
2. policy loss on the rollout latents with the *updated* Q networks and the
   running scale updated from step-0 Q values; a separate Adam
   (``eps=pi_adam_eps``) with the same clip;
3. Polyak update of the target Q networks towards the updated ones.

The state is a dict: ``params`` (the model params, policy included),
``opt_state``, ``pi_opt_state``, ``target_q`` and ``scale``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from worldloom.models.base import OptimizerSettings, UpdateFunctions, owned_state
from worldloom.models.tdmpc2.functions import TDMPC2Functions
from worldloom.models.tdmpc2.losses import make_chunks, policy_loss, world_model_loss
from worldloom.models.tdmpc2.scale import running_scale
from worldloom.nn.optim import global_norm, kernels

POLICY = "pi"


def split_policy(params) -> tuple[dict, dict]:
    """``(model_params, pi_params)``: everything but the policy, and the policy."""
    return {k: v for k, v in params.items() if k != POLICY}, params[POLICY]


def _adam(settings: OptimizerSettings, eps: float, post=()) -> optax.GradientTransformation:
    chain = []
    if settings.grad_clip:
        chain.append(optax.clip_by_global_norm(settings.grad_clip))
    chain.append(optax.scale_by_adam(eps=eps))
    if settings.weight_decay:
        chain.append(optax.add_decayed_weights(settings.weight_decay, mask=kernels))
    chain.append(optax.scale_by_learning_rate(settings.schedule()))
    chain.extend(post)
    return optax.chain(*chain)


def model_optimizer(settings: OptimizerSettings, enc_lr_scale: float) -> optax.GradientTransformation:
    """Clip -> Adam -> learning rate, with the encoder's updates scaled by ``enc_lr_scale``."""

    def labels(params):
        return {name: jax.tree_util.tree_map(lambda _, label=("encoder" if name == "encoder" else "rest"): label, sub)
                for name, sub in params.items()}

    encoder_scale = optax.multi_transform({"encoder": optax.scale(enc_lr_scale), "rest": optax.identity()},
                                          labels)
    return _adam(settings, eps=1e-8, post=(encoder_scale,))


def policy_optimizer(settings: OptimizerSettings, eps: float) -> optax.GradientTransformation:
    """Clip -> Adam(eps) -> learning rate, for the policy prior."""
    return _adam(settings, eps=eps)


def make_update(fns: TDMPC2Functions, settings: OptimizerSettings) -> UpdateFunctions:
    """The pure ``init``/``step`` pair of TD-MPC2 for ``settings``.

    ``settings.grad_clip`` is the global-norm clip of both optimisers (the
    reference uses 20); ``settings.learning_rate`` the Adam rate (3e-4).
    """
    cfg = fns.config
    model_tx = model_optimizer(settings, cfg.enc_lr_scale)
    pi_tx = policy_optimizer(settings, cfg.pi_adam_eps)
    scale = running_scale(cfg.tau)

    def init(params):
        model_params, pi_params = split_policy(params)
        state = {
            "params": params,
            "opt_state": model_tx.init(model_params),
            "pi_opt_state": pi_tx.init(pi_params),
            "target_q": params["Qs"],
            "scale": scale.init(),
        }
        return owned_state(state, params)  # own, committed buffers: donated, compiled once

    def step(state, batch, key):
        chunks = make_chunks(batch, cfg.horizon)
        wm_key, pi_key = jax.random.split(key)
        model_params, pi_params = split_policy(state["params"])

        def wm_loss(trainable):
            return world_model_loss(fns, {**trainable, POLICY: pi_params}, state["target_q"], chunks, wm_key)

        (_, aux), grads = jax.value_and_grad(wm_loss, has_aux=True)(model_params)
        updates, opt_state = model_tx.update(grads, state["opt_state"], model_params)
        model_params = optax.apply_updates(model_params, updates)

        def pi_loss(policy):
            return policy_loss(fns, scale, {**model_params, POLICY: policy}, state["scale"], aux.zs, aux.live,
                               chunks.task, pi_key)

        (pi_value, (scale_state, stats)), pi_grads = jax.value_and_grad(pi_loss, has_aux=True)(pi_params)
        pi_updates, pi_opt_state = pi_tx.update(pi_grads, state["pi_opt_state"], pi_params)
        pi_params = optax.apply_updates(pi_params, pi_updates)

        target_q = jax.tree_util.tree_map(lambda target, online: target + cfg.tau * (online - target),
                                          state["target_q"], model_params["Qs"])
        new_state = {
            "params": {**model_params, POLICY: pi_params},
            "opt_state": opt_state,
            "pi_opt_state": pi_opt_state,
            "target_q": target_q,
            "scale": scale_state,
        }
        metrics = dict(aux.metrics)
        metrics.update(stats)
        metrics["loss/policy"] = pi_value
        metrics["grad_norm"] = global_norm(grads)
        metrics["pi_grad_norm"] = global_norm(pi_grads)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        return new_state, metrics

    return UpdateFunctions(init=init, step=step, params=lambda state: state["params"])
