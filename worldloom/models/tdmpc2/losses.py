"""TD-MPC2 losses: windows cut into horizon chunks, latent rollout, world-model and policy losses.

Time alignment (buffer convention): row ``t`` of a ``[B, T]`` window holds
``obs_t, action_t, reward_t, continue_t``, where ``reward_t``/``continue_t``
follow ``action_t``; the observation after the last row of an episode is
usually not stored. A window is cut into chunks of ``horizon + 1`` rows with
stride ``horizon`` (rows ``0..H``, ``H..2H``, ...; the last chunk is padded
past row ``T - 1``), so every transition ``t < T - 1`` starts a rollout step
in exactly one chunk. In a chunk, step ``t`` encodes ``z_0 = enc(obs_0)``,
predicts ``z_{t+1} = d(z_t, a_t)`` and is trained against
``sg(enc(obs_{t+1}))``, ``reward_t`` and the TD target
``reward_t + gamma * continue_t * min(two random target Qs at (enc(obs_{t+1}), pi))``.

Masks (transition ``t`` of a chunk):

- its next observation is *valid* when row ``t + 1`` lies inside the window,
  does not start a new episode (``is_first``) and ``t`` is not terminal, or
  when row ``t + 1`` is the stored final observation of the episode
  (``is_final``, from :meth:`ReplayBuffer.sample_episodes`): then even a
  terminal transition trains consistency, as the reference's does;
- the rollout is *live* at step ``t`` while every earlier transition had a
  valid next observation; nothing after a break is trained in that chunk
  (those rows start their own chunk in other windows);
- consistency trains where the next observation is valid;
- reward and termination train at every live step (they need no next
  observation), so the last transition of an episode keeps its reward and
  termination even when the observation after it is not stored;
- value trains at live steps with a valid next observation or a terminal
  transition (whose target is just the reward);
- the policy trains on every live latent ``z_0 .. z_H``.

Reductions (each step's loss first averaged over its valid entries; with
nothing masked these are the reference's, ``TDMPC2._update`` and
``TDMPC2.update_pi`` in nicklashansen/tdmpc2 ``tdmpc2/tdmpc2.py``):

- consistency and reward: weighted ``rho**t``, summed over the ``H`` steps,
  divided by ``horizon``;
- value: likewise, each step's cross-entropy averaged over the Q heads (the
  reference sums the heads and divides by ``horizon * num_q``);
- termination: an unweighted mean over all live steps;
- policy: ``mean_t(rho**t * loss_t)`` over the ``H + 1`` latents.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from worldloom.models.tdmpc2.functions import TDMPC2Functions
from worldloom.models.tdmpc2.scale import RunningScale, ScaleState
from worldloom.nn.functional import tdmpc_twohot_loss

sg = jax.lax.stop_gradient


class Chunks(NamedTuple):
    """A batch cut into ``N = B * num_chunks`` rollouts of ``H`` steps, time first.

    Attributes:
        obs: ``[H + 1, N, *obs_shape]`` (zeros past the window).
        actions: ``[H, N, A]``.
        rewards: ``[H, N]`` f32.
        terminals: ``[H, N]`` f32, 1 where the transition ends the episode.
        next_valid: ``[H, N]`` bool, whether ``obs[t + 1]`` follows transition ``t``.
        task: ``[N]`` int task ids, or ``None``.
    """

    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    terminals: jax.Array
    next_valid: jax.Array
    task: jax.Array | None


def num_chunks(length: int, horizon: int) -> int:
    """Chunks of ``horizon + 1`` rows, stride ``horizon``, covering ``length`` rows."""
    return max(1, -(-(length - 1) // horizon))


def make_chunks(batch, horizon: int) -> Chunks:
    """Cut a prepared ``[B, T, ...]`` batch (T >= 2) into rollout chunks (shapes are static)."""
    rewards = batch["rewards"].astype(jnp.float32)
    batch_size, length = rewards.shape
    count = num_chunks(length, horizon)
    padded = 1 + count * horizon
    index = (jnp.arange(count) * horizon)[:, None] + jnp.arange(horizon + 1)[None]  # [n, H+1]

    if batch.get("terminals") is not None:
        terminals = batch["terminals"].astype(jnp.float32)
    else:
        terminals = (batch["continues"] < 0.5).astype(jnp.float32)
    is_first = batch.get("is_first")
    is_first = jnp.zeros((batch_size, length), bool) if is_first is None else is_first.astype(bool)
    exists = jnp.ones((batch_size, length), bool)

    def gather(x, steps):
        pad = [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2)
        x = jnp.pad(x, pad)[:, index[:, :steps]]  # [B, n, steps, ...]
        x = x.reshape(batch_size * count, steps, *x.shape[3:])
        return jnp.swapaxes(x, 0, 1)  # [steps, N, ...]

    is_final = batch.get("is_final")
    is_final = jnp.zeros((batch_size, length), bool) if is_final is None else is_final.astype(bool)
    exists_next = gather(exists, horizon + 1)[1:]
    first_next = gather(is_first, horizon + 1)[1:]
    final_next = gather(is_final, horizon + 1)[1:]
    chunk_terminals = gather(terminals, horizon)
    next_valid = exists_next & ~first_next & ((chunk_terminals < 0.5) | final_next)
    task = batch.get("task")
    if task is not None:
        task = jnp.repeat(task.astype(jnp.int32), count)
    return Chunks(
        obs=gather(batch["obs"], horizon + 1),
        actions=gather(batch["actions"].astype(jnp.float32), horizon),
        rewards=gather(rewards, horizon),
        terminals=chunk_terminals,
        next_valid=next_valid,
        task=task,
    )


def live_mask(next_valid: jax.Array) -> jax.Array:
    """``[H + 1, N]``: step 0 is live; step ``t + 1`` is live while every earlier next obs was valid."""
    ones = jnp.ones_like(next_valid[:1], jnp.float32)
    return jnp.concatenate([ones, jnp.cumprod(next_valid.astype(jnp.float32), 0)], 0)


def rho_weights(rho: float, steps: int) -> jax.Array:
    """``[rho**0, rho**1, ..., rho**(steps-1)]``."""
    return rho ** jnp.arange(steps, dtype=jnp.float32)


def masked_mean(x: jax.Array, mask: jax.Array, axis) -> jax.Array:
    """Mean of ``x`` over ``axis`` counting only entries where ``mask`` is 1 (0 if none)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask, axis) / jnp.maximum(jnp.sum(mask, axis), 1.0)


class WorldModelAux(NamedTuple):
    """What the world-model loss hands to the policy update."""

    metrics: dict
    zs: jax.Array  # [H + 1, N, L] rollout latents (not yet stopped)
    live: jax.Array  # [H + 1, N]


def world_model_loss(fns: TDMPC2Functions, params, target_q, chunks: Chunks, key: jax.Array,
                     train: bool = True) -> tuple[jax.Array, WorldModelAux]:
    """Consistency, reward, value (and termination) losses of one batch of chunks.

    Args:
        fns: The model's pure functions.
        params: Model params (gradients flow into all but ``pi``, which only
            picks bootstrap actions here).
        target_q: Target Q-ensemble params (same structure as ``params["Qs"]``).
        chunks: From :func:`make_chunks`.
        key: PRNG key (augmentation, dropout, policy samples, Q-head choice).
        train: Dropout and image augmentation on.

    Returns:
        ``(total, aux)``: the weighted total (f32 scalar) and :class:`WorldModelAux`.
    """
    cfg = fns.config
    horizon = cfg.horizon
    aug_key, pi_key, head_key, dropout_key = jax.random.split(key, 4)
    task = chunks.task

    latents = fns.encode(params, chunks.obs, task, aug_key if train else None)  # [H+1, N, L]
    next_z = sg(latents[1:])

    # TD targets from the target Q networks, with the policy's action at the next latent.
    frozen = sg(params)
    next_action, _ = fns.pi(frozen, next_z, pi_key, task)
    next_q = fns.q_two(fns.with_q(frozen, sg(target_q)), next_z, next_action, head_key, "min", task)
    td_target = sg(chunks.rewards + cfg.gamma * (1.0 - chunks.terminals) * next_q)  # [H, N]

    zs = fns.rollout(params, latents[0], chunks.actions, task)  # [H+1, N, L]
    live = live_mask(chunks.next_valid)
    step_mask = live[:-1]
    next_mask = live[1:]
    value_mask = step_mask * jnp.maximum(chunks.next_valid.astype(jnp.float32), chunks.terminals)

    consistency = jnp.mean((zs[1:] - next_z) ** 2, -1)  # [H, N]
    reward_ce = tdmpc_twohot_loss(fns.reward_logits(params, zs[:-1], chunks.actions, task), chunks.rewards,
                                  cfg.vmin, cfg.vmax)
    q_logits = fns.q_logits(params, zs[:-1], chunks.actions, task, dropout_key if train else None)
    value_ce = tdmpc_twohot_loss(q_logits, td_target[None], cfg.vmin, cfg.vmax).mean(0)  # [H, N]

    rho = rho_weights(cfg.rho, horizon)
    losses = {
        "consistency": jnp.sum(rho * masked_mean(consistency, next_mask, 1)) / horizon,
        "reward": jnp.sum(rho * masked_mean(reward_ce, step_mask, 1)) / horizon,
        "value": jnp.sum(rho * masked_mean(value_ce, value_mask, 1)) / horizon,
    }
    total = (cfg.consistency_coef * losses["consistency"] + cfg.reward_coef * losses["reward"]
             + cfg.value_coef * losses["value"])
    if cfg.episodic:
        logits = fns.termination_logit(params, zs[1:], task)  # [H, N]
        bce = jax.nn.softplus(logits) - logits * chunks.terminals
        losses["termination"] = masked_mean(bce, step_mask, (0, 1))
        total = total + cfg.termination_coef * losses["termination"]
    metrics = {f"loss/{k}": v.astype(jnp.float32) for k, v in losses.items()}
    metrics["loss"] = total.astype(jnp.float32)
    metrics["td_target"] = masked_mean(td_target, value_mask, (0, 1))
    return total, WorldModelAux(metrics, zs, live)


def policy_loss(fns: TDMPC2Functions, scale: RunningScale, params, scale_state: ScaleState, zs: jax.Array,
                live: jax.Array, task, key: jax.Array, train: bool = True):
    """The policy prior's loss ``-(Q / S + entropy_coef * scaled_entropy)`` over rollout latents.

    Q is the mean of two random heads of the (frozen) online ensemble at the
    policy's sampled action; ``S`` is the running scale, first updated with
    the Q values of step 0. Steps are weighted ``rho**t`` and averaged over
    the ``H + 1`` latents, as the reference.

    Args:
        fns: The model's pure functions.
        scale: The running-scale transform.
        params: Model params; gradients flow only into ``params["pi"]``.
        scale_state: Running-scale state before this update.
        zs: Latents ``[H + 1, N, L]`` (stopped here).
        live: ``[H + 1, N]`` mask from :func:`live_mask`.
        task: ``[N]`` task ids or ``None``.
        key: PRNG key.
        train: Dropout in the Q networks.

    Returns:
        ``(loss, (new_scale_state, info))`` with ``info`` the mean entropies.
    """
    cfg = fns.config
    pi_key, head_key, dropout_key = jax.random.split(key, 3)
    zs = sg(zs)
    pi_params = params["pi"]
    frozen = {**sg(params), "pi": pi_params}
    action, info = fns.pi(frozen, zs, pi_key, task)
    q = fns.q_two(frozen, zs, action, head_key, "avg", task, dropout_key if train else None)  # [H+1, N]
    scale_state = scale.update(scale_state, q[0])
    objective = cfg.entropy_coef * info["scaled_entropy"] + q / sg(scale_state.value)
    loss = jnp.mean(rho_weights(cfg.rho, zs.shape[0]) * masked_mean(-objective, live, 1))
    stats = {
        "pi_entropy": masked_mean(info["entropy"], live, (0, 1)),
        "pi_scaled_entropy": masked_mean(info["scaled_entropy"], live, (0, 1)),
        "pi_scale": scale_state.value,
    }
    return loss.astype(jnp.float32), (scale_state, stats)


def loss_metrics(fns: TDMPC2Functions, scale: RunningScale, params, batch, key: jax.Array,
                 train: bool = True) -> dict:
    """Every loss term on a prepared ``[B, T, ...]`` batch without updating anything.

    The online Q networks stand in for the targets and the running scale
    starts fresh (the handle keeps neither; the training state does).
    """
    chunks = make_chunks(batch, fns.config.horizon)
    wm_key, pi_key = jax.random.split(key)
    _, aux = world_model_loss(fns, params, params["Qs"], chunks, wm_key, train)
    pi_loss, (_, stats) = policy_loss(fns, scale, params, scale.init(), aux.zs, aux.live, chunks.task, pi_key,
                                      train)
    return {**aux.metrics, "loss/policy": pi_loss, **stats}
