"""MPPI planning in TD-MPC2's latent space, as pure jittable functions.

:func:`mppi` is generic: it optimises action sequences ``[H, A]`` in [-1, 1]
for any ``value_fn(actions [H, N, A], key) -> [N]``. :func:`estimate_value`
is TD-MPC2's value of a sequence (discounted predicted rewards plus the
discounted Q of the policy's action at the last latent) and :func:`plan` ties
them to a model for one latent. Iterations run in ``lax.scan``; the samples
of an iteration are one batched evaluation (no Python loop over either).

Example (a known optimum: the best first action is 0.3):
    >>> settings = MPPISettings(horizon=3, action_dim=1, iterations=6, num_samples=256,
    ...                         num_elites=32, num_pi_trajs=0, min_std=0.05, max_std=2.0,
    ...                         temperature=0.5)
    >>> value = lambda actions, key: -jnp.sum((actions - 0.3) ** 2, (0, 2))
    >>> action, mean = mppi(value, jax.random.PRNGKey(0), jnp.zeros((3, 1)), True, None, settings,
    ...                     eval_mode=True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from worldloom.models.tdmpc2.config import TDMPC2Config
from worldloom.models.tdmpc2.functions import TDMPC2Functions


class MPPISettings(NamedTuple):
    """Static settings of :func:`mppi` (hashable, so they can be jit-static)."""

    horizon: int
    action_dim: int
    iterations: int
    num_samples: int
    num_elites: int
    num_pi_trajs: int
    min_std: float
    max_std: float
    temperature: float

    @classmethod
    def from_config(cls, config: TDMPC2Config) -> MPPISettings:
        return cls(config.horizon, config.action_dim, config.mppi_iterations, config.num_samples,
                   config.num_elites, config.num_pi_trajs, config.min_std, config.max_std, config.temperature)


def warm_start(prev_mean: jax.Array, t0) -> jax.Array:
    """Initial mean ``[H, A]``: the previous plan shifted one step (zeros at the end), or zeros when ``t0``."""
    shifted = jnp.concatenate([prev_mean[1:], jnp.zeros_like(prev_mean[:1])], 0)
    return jnp.where(jnp.asarray(t0, bool), jnp.zeros_like(prev_mean), shifted)


class MPPIState(NamedTuple):
    """Carry of the MPPI iterations: the sampling distribution and the last elites."""

    mean: jax.Array  # [H, A]
    std: jax.Array  # [H, A]
    elite_actions: jax.Array  # [H, E, A]
    score: jax.Array  # [E], sums to 1


def mppi_init(prev_mean: jax.Array, t0, settings: MPPISettings) -> MPPIState:
    """The distribution before the first iteration: warm-started mean, ``max_std``."""
    s = settings
    return MPPIState(
        mean=warm_start(prev_mean, t0),
        std=jnp.full((s.horizon, s.action_dim), s.max_std, jnp.float32),
        elite_actions=jnp.zeros((s.horizon, s.num_elites, s.action_dim), jnp.float32),
        score=jnp.full((s.num_elites,), 1.0 / s.num_elites, jnp.float32),
    )


def mppi_iteration(state: MPPIState, key: jax.Array, value_fn, pi_actions: jax.Array | None,
                   settings: MPPISettings) -> MPPIState:
    """One MPPI iteration: sample, evaluate, keep elites, refit ``mean``/``std``."""
    s = settings
    num_random = s.num_samples - (0 if pi_actions is None else pi_actions.shape[1])
    noise_key, value_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, (s.horizon, num_random, s.action_dim))
    actions = jnp.clip(state.mean[:, None] + state.std[:, None] * noise, -1.0, 1.0)
    if pi_actions is not None:
        actions = jnp.concatenate([pi_actions, actions], 1)
    values = jnp.nan_to_num(value_fn(actions, value_key), nan=0.0)
    elite_values, elite_index = jax.lax.top_k(values, s.num_elites)
    elite_actions = actions[:, elite_index]  # [H, E, A]
    score = jnp.exp(s.temperature * (elite_values - jnp.max(elite_values)))
    score = score / jnp.sum(score)
    total = jnp.sum(score) + 1e-9
    mean = jnp.sum(score[None, :, None] * elite_actions, 1) / total
    var = jnp.sum(score[None, :, None] * (elite_actions - mean[:, None]) ** 2, 1) / total
    std = jnp.clip(jnp.sqrt(var), s.min_std, s.max_std)
    return MPPIState(mean, std, elite_actions, score)


def mppi_select(state: MPPIState, key: jax.Array, eval_mode) -> jax.Array:
    """First action of an elite drawn by score, plus ``std[0]`` noise unless ``eval_mode``; in [-1, 1].

    ``eval_mode`` is a bool or a traced bool scalar: one compiled program serves acting and evaluation.
    """
    choice_key, noise_key = jax.random.split(key)
    action = state.elite_actions[0, jax.random.categorical(choice_key, jnp.log(state.score))]
    noisy = action + state.std[0] * jax.random.normal(noise_key, action.shape)
    return jnp.clip(jnp.where(eval_mode, action, noisy), -1.0, 1.0)


def mppi(value_fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array, prev_mean: jax.Array, t0,
         pi_actions: jax.Array | None, settings: MPPISettings, eval_mode=False):
    """Model predictive path integral optimisation of one action sequence.

    Each iteration samples ``num_samples - num_pi_trajs`` sequences from
    ``N(mean, std)`` clipped to [-1, 1], adds the policy's ``pi_actions``,
    keeps the ``num_elites`` best by ``value_fn`` and refits ``mean``/``std``
    with weights ``exp(temperature * (value - max))``. The returned action is
    the first action of an elite drawn by those weights, plus ``std[0]``
    Gaussian noise unless ``eval_mode``.

    Args:
        value_fn: ``(actions [H, N, A], key) -> values [N]``.
        key: PRNG key.
        prev_mean: Previous plan ``[H, A]`` (ignored when ``t0``).
        t0: True at the first step of an episode (bool or bool scalar array).
        pi_actions: ``[H, num_pi_trajs, A]`` sequences from the policy prior, or None.
        settings: :class:`MPPISettings`.
        eval_mode: No exploration noise on the returned action (bool or bool scalar array).

    Returns:
        ``(action [A] in [-1, 1], mean [H, A])``; ``mean`` warm-starts the next call.
    """
    iteration_key, select_key = jax.random.split(key)

    def body(state, step_key):
        return mppi_iteration(state, step_key, value_fn, pi_actions, settings), None

    keys = jax.random.split(iteration_key, settings.iterations)
    state, _ = jax.lax.scan(body, mppi_init(prev_mean, t0, settings), keys)
    return mppi_select(state, select_key, eval_mode), state.mean


def estimate_value(fns: TDMPC2Functions, params, z: jax.Array, actions: jax.Array, key: jax.Array, task=None):
    """TD-MPC2's value of action sequences from latents ``z`` ``[N, L]``.

    ``G = sum_t gamma^t (1 - term_t) r(z_t, a_t) + gamma^H (1 - term_H) Q_avg(z_H, pi(z_H))``,
    where ``term`` latches once a predicted termination probability exceeds
    0.5 (episodic models) and ``Q_avg`` is the mean of two random heads.

    Args:
        actions: ``[H, N, A]``.

    Returns:
        ``[N]`` values.
    """
    gamma = fns.config.gamma
    pi_key, head_key = jax.random.split(key)

    def step(carry, action):
        z, ret, discount, terminated = carry
        reward = fns.reward(params, z, action, task)
        z = fns.next(params, z, action, task)
        ret = ret + discount * (1.0 - terminated) * reward
        if fns.config.episodic:
            ended = (fns.continue_prob(params, z, task) < 0.5).astype(jnp.float32)
            terminated = jnp.minimum(terminated + ended, 1.0)
        return (z, ret, discount * gamma, terminated), None

    zeros = jnp.zeros(z.shape[:-1], jnp.float32)
    (z, ret, discount, terminated), _ = jax.lax.scan(step, (z, zeros, jnp.ones(()), zeros), actions)
    final_action, _ = fns.pi(params, z, pi_key, task)
    return ret + discount * (1.0 - terminated) * fns.q_two(params, z, final_action, head_key, "avg", task)


def policy_actions(fns: TDMPC2Functions, params, z: jax.Array, key: jax.Array, count: int, horizon: int,
                   task=None) -> jax.Array:
    """``count`` sequences ``[H, count, A]`` sampled from the policy prior through the dynamics."""
    keys = jax.random.split(key, horizon)
    start = jnp.broadcast_to(z, (count, z.shape[-1]))

    def step(z, step_key):
        action, _ = fns.pi(params, z, step_key, task)
        return fns.next(params, z, action, task), action

    _, actions = jax.lax.scan(step, start, keys)
    return actions


def plan(fns: TDMPC2Functions, params, z: jax.Array, prev_mean: jax.Array, t0, key: jax.Array,
         eval_mode=False, task=None):
    """Plan from one latent ``z`` ``[L]``: returns ``(action [A], mean [H, A])``.

    Policy trajectories (``num_pi_trajs``) join the Gaussian samples, as the reference.
    """
    cfg = fns.config
    settings = MPPISettings.from_config(cfg)
    pi_key, mppi_key = jax.random.split(key)
    pi_actions = None
    if cfg.num_pi_trajs > 0:
        pi_actions = policy_actions(fns, params, z, pi_key, cfg.num_pi_trajs, cfg.horizon, task)

    def value_fn(actions, value_key):
        start = jnp.broadcast_to(z, (actions.shape[1], z.shape[-1]))
        return estimate_value(fns, params, start, actions, value_key, task)

    return mppi(value_fn, mppi_key, prev_mean, t0, pi_actions, settings, eval_mode)
