"""DreamerV3 behaviour learning: sizes, returns, normaliser, update, save/load."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _agents import DREAMER_BATCH, DREAMER_LENGTH, dreamer_agent, dreamer_model, jit_update, run_settings

from worldloom.agents import DreamerAgent
from worldloom.agents.dreamer_losses import DreamerAgentConfig, imagine_with_policy, replay_returns
from worldloom.agents.dreamer_networks import Actor, Critic, policy_entropy, policy_log_prob, policy_sample
from worldloom.agents.normalizers import ema_update, percentile_normalizer


@pytest.fixture(scope="module")
def agent():
    """One tiny CartPole agent for the module (the world model's init compiles once)."""
    return dreamer_agent()


def _count(module, features):
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, features))))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))


def test_actor_critic_sizes_match_reference_size12m():
    # size12m: features 2048 + 32*16, units 256, 18 discrete actions.
    assert _count(Actor(18, True, 256), 2560) == 792_594
    assert _count(Critic(256), 2560) == 853_503
    assert 8_852_675 + 792_594 + 853_503 == 10_498_772


def test_replay_returns_match_python_loop(rng):
    batch, length, lam, discount = 3, 7, 0.95, 0.997
    rewards = rng.normal(size=(batch, length)).astype(np.float32)
    is_last = rng.random((batch, length)) > 0.7
    is_terminal = is_last & (rng.random((batch, length)) > 0.5)
    boot = rng.normal(size=(batch, length)).astype(np.float32)
    expected = np.zeros((batch, length), np.float32)
    expected[:, -1] = boot[:, -1]
    for t in reversed(range(length - 1)):
        live = discount * (1.0 - is_terminal[:, t + 1])
        if_cut = rewards[:, t + 1] + live * boot[:, t + 1]
        going_on = rewards[:, t + 1] + live * ((1 - lam) * boot[:, t + 1] + lam * expected[:, t + 1])
        expected[:, t] = np.where(is_last[:, t + 1], if_cut, going_on)
    got = replay_returns(rewards, is_last, is_terminal, boot, lam, discount)
    np.testing.assert_allclose(got, expected[:, :-1], rtol=1e-5, atol=1e-5)


def test_percentile_normalizer_and_ema():
    norm = percentile_normalizer(rate=1.0, limit=1.0)
    state, low, scale = norm.update(norm.init(), jnp.arange(101.0))
    assert float(low) == pytest.approx(5.0) and float(scale) == pytest.approx(90.0)
    _, _, small = norm.update(norm.init(), jnp.zeros(10))
    assert float(small) == 1.0  # returns smaller than the limit are not scaled up
    slow = percentile_normalizer(rate=0.01)
    state, _, _ = slow.update(slow.init(), jnp.arange(101.0))
    assert float(state.high) == pytest.approx(0.95)
    np.testing.assert_allclose(ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, 0.02)["w"], 0.02)


@pytest.mark.parametrize("discrete", [True, False])
def test_policy_distribution(discrete):
    raw = jnp.array([[0.3, -0.2, 0.5, 0.1]])
    action = policy_sample(raw, jax.random.PRNGKey(0), discrete)
    assert action.shape == ((1, 4) if discrete else (1, 2))
    log_prob = policy_log_prob(raw, action, discrete)
    assert np.isfinite(float(log_prob[0])) and np.isfinite(float(policy_entropy(raw, discrete)[0]))
    if discrete:
        assert float(action.sum()) == 1.0
        # unimix keeps every action at least 1%/4 likely
        assert float(jnp.exp(policy_log_prob(raw, jnp.eye(4)[None, 1], True))[0]) > 0.0025


@pytest.mark.slow(reason="compiles a DreamerV3 world model's initialiser and policy step (about 5 s)")
def test_acting_compiles_the_policy_step_once(agent):
    """reset, act and record_actions keep the carry where the step's outputs live: one program, not three.

    Agents of equal configs share the program, so the count is of the executables it gains, for a number of
    environments no other test acts in.
    """
    other = DreamerAgent(agent.world_model, behaviour_params=agent.behaviour_params)
    assert other._policy_step is agent._policy_step
    envs = 7
    before = agent._policy_step._cache_size()
    agent.reset(envs)
    for t in range(4):
        agent.act(np.zeros((envs, 4), np.float32), np.full(envs, t == 0))
        if t == 1:
            agent.record_actions(agent.random_actions(np.random.default_rng(0), envs))
    other.reset(envs)
    other.act(np.zeros((envs, 4), np.float32), np.ones(envs, bool))
    assert agent._policy_step._cache_size() == before + 1


@pytest.mark.slow(reason="needs the module's DreamerV3 agent: its world model's initialiser compiles first (about 5 s)")
def test_imagination_shapes(agent):
    wm = agent.world_model
    start = wm.encode(np.zeros((5, 4)))

    @jax.jit
    def imagine(params, behaviour, start):
        actor = lambda f: agent.actor_net.apply({"params": behaviour["actor"]}, f)  # noqa: E731
        return imagine_with_policy(wm.functions, params, actor, start, 4, jax.random.PRNGKey(0), True)

    states, actions = imagine(wm.params, agent.behaviour_params, start)
    assert states.features.shape == (5, 5, wm.config.feature_size) and actions.shape == (5, 5, 2)
    np.testing.assert_array_equal(states.features[0], start.features)


@pytest.mark.slow(reason="compiles the DreamerV3 agent's update (run_agent's, shared through the compilation cache)")
def test_update_runs_and_checkpoint_acts_identically(agent, tmp_path, rng, stream_batch):
    # run_agent's update on its windows (CartPole, batch 2 x 8 rows): the program a run of this agent compiles.
    wm = agent.world_model
    update = agent.make_update(run_settings("dreamerv3"))
    state = update.init(agent.params)
    step = jit_update(update)
    batch = stream_batch(agent, rng, DREAMER_BATCH, DREAMER_LENGTH, terminal_at=3)
    batch["is_first"][:, 4] = True
    for i in range(3):
        state, metrics, posteriors = step(state, batch, jax.random.PRNGKey(i))
    # The write-back travels as its own output, not among the metrics.
    assert posteriors["deter"].shape == (DREAMER_BATCH, DREAMER_LENGTH, wm.config.deter)
    assert posteriors["stoch"].shape == (DREAMER_BATCH, DREAMER_LENGTH, wm.config.stoch_size)
    assert not any(name.startswith("context/") for name in metrics)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert {"loss/policy", "loss/value", "loss/repval", "loss/rec", "loss/dyn"} <= set(metrics)
    agent.load_params(update.params(state))
    agent.save(tmp_path / "agent")
    loaded = DreamerAgent.load(tmp_path / "agent")
    obs = rng.normal(size=(4, 6, 4)).astype("f")
    agent.reset(4), loaded.reset(4)
    for t in range(6):
        key = jax.random.PRNGKey(100 + t)
        first = np.full(4, t == 0)
        np.testing.assert_array_equal(agent.act(obs[:, t], first, key=key), loaded.act(obs[:, t], first, key=key))


def test_agents_of_equal_configs_share_their_update_functions(agent, rng, stream_batch):
    """So that a second run of a configuration in a process traces and compiles no update: jax.jit reuses the
    programs of the function it wraps."""
    settings = run_settings("dreamerv3")
    update = agent.make_update(settings)
    # The agent's loss is the one its update differentiates (traced, not compiled): the total and every term.
    state = update.init(agent.params)
    batch = stream_batch(agent, rng, DREAMER_BATCH, DREAMER_LENGTH)
    args = state["params"], state["slow_critic"], state["retnorm"], batch, jax.random.PRNGKey(0)
    total, (metrics, _, posterior) = jax.eval_shape(agent.loss, *args)
    _, step_metrics, _ = jax.eval_shape(update.step, state, batch, jax.random.PRNGKey(0))
    assert total.shape == () and set(metrics) | {"grad_norm", "skipped"} == set(step_metrics)
    assert posterior.deterministic.shape == (DREAMER_BATCH, DREAMER_LENGTH, agent.world_model.config.deter)
    assert dreamer_agent(seed=1).make_update(settings) is update  # other params, the same configs
    assert agent.make_update(run_settings("dreamerv3", learning_rate=1e-3)) is not update
    assert agent.make_update(settings, skip_nonfinite=False) is not update
    other = DreamerAgent(agent.world_model, DreamerAgentConfig(actor_layers=1))
    assert other.make_update(settings) is not update and other.actor_net is not agent.actor_net


@pytest.mark.slow
@pytest.mark.parametrize("reward_bins, critic_bins", [(5, 255), (255, 7)])
def test_the_critic_reads_its_values_over_its_own_bins(rng, stream_batch, reward_bins, critic_bins):
    """The reward head and the critic each have their bins (the reference's ``bins`` of each head); the debug
    preset's world model has 5 reward bins beside the critic's 255."""
    agent = DreamerAgent(dreamer_model(reward_bins=reward_bins), DreamerAgentConfig(critic_bins=critic_bins))
    update = agent.make_update(run_settings("dreamerv3"))
    state = jax.eval_shape(update.init, agent.params)
    batch = stream_batch(agent, rng, DREAMER_BATCH, DREAMER_LENGTH)
    _, metrics, _ = jax.eval_shape(update.step, state, batch, jax.random.PRNGKey(0))  # traced: shapes must agree
    assert metrics["loss/value"].shape == () and metrics["loss/rew"].shape == ()
