"""MPPI planner: known optima, warm start, and the scanned iterations against a Python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldloom.models.tdmpc2.planner import (
    MPPISettings,
    mppi,
    mppi_init,
    mppi_iteration,
    mppi_select,
    warm_start,
)

# The reference's MPPI settings (without policy trajectories).
SETTINGS = MPPISettings(horizon=3, action_dim=2, iterations=6, num_samples=512, num_elites=64, num_pi_trajs=0,
                        min_std=0.05, max_std=2.0, temperature=0.5)
TARGET = jnp.array([[0.3, -0.6], [0.5, 0.1], [-0.2, 0.8]])  # [H, A]


def quadratic_value(actions, key):
    """-sum over time and dims of (a - target)^2: the best sequence is TARGET."""
    del key
    return -jnp.sum((actions - TARGET[:, None]) ** 2, (0, 2)) * 10.0


@pytest.fixture(scope="module")
def plan():
    return jax.jit(lambda key, prev, t0, pi: mppi(quadratic_value, key, prev, t0, pi, SETTINGS, eval_mode=True))


def test_mppi_finds_the_best_first_action(plan):
    action, mean = plan(jax.random.PRNGKey(0), jnp.zeros((3, 2)), True, None)
    assert action.shape == (2,) and mean.shape == (3, 2)
    # The drawn elite scatters by about min_std around the refitted mean.
    np.testing.assert_allclose(action, TARGET[0], atol=0.1)
    np.testing.assert_allclose(mean, TARGET, atol=0.1)


def test_mppi_respects_action_bounds():
    settings = SETTINGS._replace(action_dim=1, horizon=2)
    value = lambda actions, key: -jnp.sum((actions - 3.0) ** 2, (0, 2))  # optimum outside [-1, 1]
    action, mean = mppi(value, jax.random.PRNGKey(1), jnp.zeros((2, 1)), True, None, settings, eval_mode=False)
    assert float(action[0]) <= 1.0 and float(action[0]) > 0.9
    assert np.all(np.asarray(mean) <= 1.0)


def test_mppi_uses_policy_trajectories():
    # A single spike of value at one exact sequence that Gaussian samples cannot hit.
    settings = SETTINGS._replace(num_pi_trajs=4, iterations=1)
    best = jnp.full((3, 2), -0.77)
    value = lambda actions, key: jnp.where(jnp.all(actions == best[:, None], (0, 2)), 100.0, 0.0)
    pi_actions = jnp.concatenate([best[:, None], jnp.zeros((3, 3, 2))], 1)
    state = mppi_iteration(mppi_init(jnp.zeros((3, 2)), True, settings), jax.random.PRNGKey(2), value, pi_actions,
                           settings)
    np.testing.assert_allclose(state.mean, best, atol=1e-6)
    np.testing.assert_allclose(mppi_select(state, jax.random.PRNGKey(3), True), best[0], atol=1e-6)


def test_warm_start_shifts_the_previous_plan():
    prev = jnp.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(warm_start(prev, False), [[2.0, 3.0], [4.0, 5.0], [0.0, 0.0]])
    np.testing.assert_array_equal(warm_start(prev, True), np.zeros((3, 2)))


def test_warm_start_from_the_optimum_keeps_it(plan):
    # Previous plan already optimal one step ahead: its shift is the new optimum's prefix.
    prev = jnp.concatenate([jnp.zeros((1, 2)), TARGET[:2]], 0)
    action, _ = plan(jax.random.PRNGKey(4), prev, False, None)
    np.testing.assert_allclose(action, TARGET[0], atol=0.1)


def test_scanned_iterations_match_a_python_loop():
    key = jax.random.PRNGKey(5)
    iteration_key, select_key = jax.random.split(key)
    state = mppi_init(jnp.zeros((3, 2)), True, SETTINGS)
    for step_key in jax.random.split(iteration_key, SETTINGS.iterations):
        state = mppi_iteration(state, step_key, quadratic_value, None, SETTINGS)
    looped = mppi_select(state, select_key, True)
    scanned, mean = mppi(quadratic_value, key, jnp.zeros((3, 2)), True, None, SETTINGS, eval_mode=True)
    np.testing.assert_allclose(scanned, looped, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, state.mean, rtol=1e-5, atol=1e-6)
