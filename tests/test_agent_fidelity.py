"""The agents train as the reference does: pinned pieces of DreamerV3's and TD-MPC2's training."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _agents import DREAMER_TINY, TDMPC_TINY, dreamer_agent, pendulum_tdmpc

from worldloom import create_world_model
from worldloom.agents import AgentRunConfig, DreamerAgentConfig, TDMPC2Agent, evaluate, run_agent
from worldloom.agents.collect import StreamCollector, env_action
from worldloom.agents.dreamer_losses import behaviour_loss, replay_returns
from worldloom.agents.dreamer_networks import policy_entropy, policy_log_prob
from worldloom.agents.loop import terminates
from worldloom.agents.replay import StreamReplay
from worldloom.core.errors import ConfigError
from worldloom.models.tdmpc2.losses import make_chunks
from worldloom.models.tdmpc2.planner import estimate_value
from worldloom.nn.layers import BlockLinear
from worldloom.training import ReplayBuffer


@pytest.fixture(scope="module")
def dreamer():
    """The module's tiny CartPole DreamerV3 agent (tests/_agents.py): its world model compiles once."""
    return dreamer_agent()


# ---------------------------------------------------------------- DreamerV3

def test_block_linear_fan_in_is_the_whole_input():
    layer = BlockLinear(features=1024, blocks=8)
    params = jax.jit(layer.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1024)))["params"]
    std = float(jnp.std(params["kernel"]))
    assert params["kernel"].shape == (8, 128, 128)
    assert std == pytest.approx(1.0 / np.sqrt(1024), rel=0.03)  # per-block fan-in would give 1/sqrt(128)


def test_discrete_policy_has_no_unimix():
    raw = jnp.array([[4.0, -3.0, 0.0]])
    action = jnp.array([[0.0, 1.0, 0.0]])
    expected = jax.nn.log_softmax(raw)[0, 1]
    assert float(policy_log_prob(raw, action, True)[0]) == pytest.approx(float(expected), rel=1e-6)
    probs = jax.nn.softmax(raw)
    assert float(policy_entropy(raw, True)[0]) == pytest.approx(float(-(probs * jnp.log(probs)).sum()), rel=1e-6)


@pytest.mark.slow(reason="builds the module's DreamerV3 agent; compiles the gradient of the replay value loss")
def test_replay_value_loss_trains_the_world_model(dreamer, stream_batch):
    agent = dreamer
    params = agent.params
    # Give the (zero-initialised) critic output weights so gradients can flow through it.
    params["critic"] = jax.tree_util.tree_map(
        lambda x: 0.1 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape), params["critic"])
    cfg = DreamerAgentConfig(policy_scale=0.0, value_scale=0.0, repval_scale=1.0)
    batch = jax.tree_util.tree_map(jnp.asarray, stream_batch(agent, np.random.default_rng(0)))
    fns = agent.world_model.functions
    rows = {k: batch[k][:, 1:] for k in ("obs", "rewards", "is_first", "is_last", "is_terminal")}
    rows["prev_actions"] = batch["actions"][:, :-1]
    start = fns.state(batch["deter"], batch["stoch"])
    from worldloom.agents.normalizers import percentile_normalizer

    def repval(wm_params):
        _, _, post = fns.stream_loss(wm_params, rows, start, jax.random.PRNGKey(1))
        loss, _, _ = behaviour_loss(cfg, fns, (agent.actor_net, agent.critic_net), {**params, "wm": wm_params},
                                    params["critic"], percentile_normalizer(0.01).init(), post, rows,
                                    jax.random.PRNGKey(2), True)
        return loss

    grads = jax.jit(jax.grad(repval))(params["wm"])
    assert float(optax.global_norm(grads["rssm"])) > 0.0 and float(optax.global_norm(grads["encoder"])) > 0.0


@pytest.mark.slow(reason="needs the module's DreamerV3 agent (its world model compiles first); one scan program")
def test_window_from_its_stored_latent_continues_the_unbroken_scan(dreamer, stream_batch):
    agent = dreamer
    fns, wm = agent.world_model.functions, agent.world_model.params
    rng = np.random.default_rng(1)
    batch = stream_batch(agent, rng, length=8)

    @jax.jit
    def unbroken_and_window(wm, batch):
        tokens = fns.encode(wm, batch["obs"])
        prev = jnp.concatenate([jnp.zeros_like(batch["actions"][:, :1]), batch["actions"][:, :-1]], 1)
        whole, _ = fns.observe_scan(wm, tokens, prev, batch["is_first"], fns.initial(wm, 2),
                                    jax.random.PRNGKey(0), stochastic=False)
        # The replay stores row 0's posterior; a window of rows 1.. starts from it.
        rows = {k: batch[k][:, 1:] for k in ("obs", "rewards", "is_first", "is_terminal")}
        rows["prev_actions"] = batch["actions"][:, :-1]
        start = fns.state(whole.deterministic[:, 0], whole.stochastic[:, 0])
        _, _, post = fns.stream_loss(wm, rows, start, jax.random.PRNGKey(5), stochastic=False)
        return whole, post

    whole, post = unbroken_and_window(wm, batch)
    np.testing.assert_allclose(post.deterministic, whole.deterministic[:, 1:], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(post.stochastic, whole.stochastic[:, 1:])


@pytest.mark.slow(reason="needs the module's DreamerV3 agent (its world model compiles first); one loss program")
def test_terminal_reward_and_continue_come_from_the_posterior(dreamer, stream_batch):
    agent = dreamer
    fns, wm = agent.world_model.functions, agent.world_model.params
    batch = jax.tree_util.tree_map(jnp.asarray, stream_batch(agent, np.random.default_rng(2), terminal_at=6))
    rows = {k: batch[k][:, 1:] for k in ("obs", "rewards", "is_first", "is_terminal")}
    rows["prev_actions"] = batch["actions"][:, :-1]
    start = fns.state(batch["deter"], batch["stoch"])

    @jax.jit
    def head_losses(params):
        _, metrics, _ = fns.stream_loss(params, rows, start, jax.random.PRNGKey(3))
        return metrics["loss/rew"], metrics["loss/con"]

    before = head_losses(wm)
    rssm = dict(wm["rssm"])
    rssm["prior_out"] = jax.tree_util.tree_map(lambda x: x + 1.0, rssm["prior_out"])
    after = head_losses({**wm, "rssm": rssm})
    np.testing.assert_allclose(before, after, rtol=1e-6)  # the prior never feeds the heads


def test_replay_returns_at_episode_ends():
    discount, lam = 0.997, 0.95
    rewards = jnp.array([[0.0, 1.0, 2.0, 0.0, 1.0]])
    boot = jnp.array([[10.0, 20.0, 30.0, 40.0, 50.0]])
    # Rows 0-2: an episode that terminates at row 2; rows 3-4: the next, cut at row 4 by a time limit.
    is_last = jnp.array([[False, False, True, False, True]])
    is_terminal = jnp.array([[False, False, True, False, False]])
    returns = replay_returns(rewards, is_last, is_terminal, boot, lam, discount)
    assert float(returns[0, 1]) == pytest.approx(2.0)  # into the terminal row: its reward only
    assert float(returns[0, 3]) == pytest.approx(1.0 + discount * 50.0)  # truncated: reward + bootstrap
    expected0 = 1.0 + discount * ((1 - lam) * 20.0 + lam * 2.0)
    assert float(returns[0, 0]) == pytest.approx(expected0)


@pytest.mark.slow(reason="needs the module's DreamerV3 agent (its world model and policy step compile first)")
def test_stream_collector_rows_follow_the_reference_layout(dreamer):
    env = gym.make("CartPole-v1")
    agent = dreamer
    lengths = []
    collector = StreamCollector([env], agent, 2000, True, 0, lambda ret, length: lengths.append(length))
    collector.reset([0], agent)
    steps = 0
    while len(lengths) < 2:
        steps += collector.step(agent)
    collector.step(agent)  # stores the terminal row and starts the next episode
    data = collector.replay.data
    rows = int(collector.replay.written[0])
    first, last, term = (data[k][0, :rows] for k in ("is_first", "is_last", "is_terminal"))
    assert first[0] and np.flatnonzero(first).tolist() == [0, lengths[0] + 1]
    ends = np.flatnonzero(last)
    assert ends.tolist() == [lengths[0], lengths[0] + 1 + lengths[1]]
    assert term[ends].all()  # CartPole falls: true terminals
    assert np.all(data["rewards"][0, :rows][first] == 0.0) and np.all(data["rewards"][0, ends] == 1.0)
    assert rows == steps + 2  # every step is a row, plus one reset row per episode
    # Learning starts at B x T windows of T + 1 rows: the reference's len(replay) >= batch_size * batch_length.
    windows = rows - 8
    assert collector.replay.window_count(9) == windows and windows >= 8
    assert collector.ready(windows // 8, 8) and not collector.ready(windows // 8 + 1, 8)
    # The stored latent is the agent's posterior at that step.
    deter, _ = agent.latent()
    np.testing.assert_allclose(data["deter"][0, rows - 1], deter[0], rtol=1e-6)


@pytest.mark.slow(reason="needs the module's DreamerV3 agent (its world model and policy step compile first)")
def test_random_actions_feed_the_acting_latent(dreamer):
    agent = dreamer
    agent.reset(1)
    agent.act(np.zeros((1, 4)), np.array([True]))
    ran = np.array([[0.0, 1.0]], np.float32)
    agent.record_actions(ran)
    np.testing.assert_array_equal(np.asarray(agent.acting_state()[1]), ran)
    assert AgentRunConfig(algo="dreamerv3").resolved("seed_steps") == 0


@pytest.mark.slow(reason="needs the module's DreamerV3 agent (its world model and policy step compile first)")
def test_replay_stores_the_acting_latents_one_hot(dreamer):
    """The straight-through sample's ones are not all exactly 1 in f32 (0.99999994): stored, they stay ones."""
    agent, rng = dreamer, np.random.default_rng(0)
    replay = StreamReplay(40, 1, (4,), np.float32, 2, deter=agent.world_model.config.deter,
                          stoch=agent.world_model.config.stoch_size)
    agent.reset(1)
    latents = []
    for t in range(12):
        agent.act(rng.normal(size=(1, 4)).astype(np.float32), np.array([t == 0]))
        deter, stoch = agent.latent()
        latents.append(stoch[0])
        replay.add({"obs": np.zeros((1, 4), np.float32), "actions": np.zeros((1, 2)), "rewards": np.zeros(1),
                    "is_first": np.array([t == 0]), "is_last": np.zeros(1, bool), "is_terminal": np.zeros(1, bool),
                    "deter": deter, "stoch": stoch})
    latents = np.stack(latents)
    assert np.any((latents > 0.5) & (latents != 1.0)), "no inexact one in 12 steps: the test shows nothing"
    stored = replay.data["stoch"][0, :12].reshape(12, agent.world_model.config.stoch, -1)
    np.testing.assert_array_equal(stored.sum(-1), 1)  # one class per latent, none lost
    np.testing.assert_array_equal(replay.data["stoch"][0, :12], latents.round())


def test_agent_actions_map_to_the_box_bounds_and_unbounded_dimensions_keep_theirs():
    space = gym.spaces.Box(np.array([-2.0, -np.inf, 0.0], np.float32), np.array([2.0, np.inf, 10.0], np.float32))
    with np.errstate(all="raise"):  # no inf - inf on the way
        np.testing.assert_allclose(env_action(np.array([0.5, 0.3, -1.0]), space, False), [1.0, 0.3, 0.0])
        np.testing.assert_allclose(env_action(np.array([-3.0, 5.0, 1.0]), space, False), [-2.0, 1.0, 10.0])
    assert env_action(np.zeros(3), space, False).dtype == np.float32
    assert env_action(np.array([0.1, 0.7, 0.2]), gym.spaces.Discrete(3), True) == 1


def test_stream_replay_write_back_and_files(tmp_path):
    replay = StreamReplay(40, 2, (3,), np.float32, 2, deter=5, stoch=4, seed=1)
    for t in range(12):
        replay.add({"obs": np.full((2, 3), t, np.float32), "actions": np.zeros((2, 2)), "rewards": np.zeros(2),
                    "is_first": np.full(2, t == 0), "is_last": np.zeros(2, bool), "is_terminal": np.zeros(2, bool),
                    "deter": np.full((2, 5), t, np.float32), "stoch": np.zeros((2, 4))})
    batch, where = replay.sample(3, 4)
    np.testing.assert_array_equal(batch["deter"][:, 0], batch["obs"][:, 0, 0])  # row 0's stored latent
    replay.write_latents(where, np.full((3, 3, 5), -1.0), np.ones((3, 3, 4)))
    stream, slots = where
    assert np.all(replay.data["deter"][stream[:, None], slots[:, 1:]] == -1.0)
    replay.save(tmp_path / "replay.npz")
    again = StreamReplay(60, 2, (3,), np.float32, 2, deter=5, stoch=4).load_state(tmp_path / "replay.npz")
    np.testing.assert_array_equal(again.data["deter"], replay.data["deter"])
    np.testing.assert_array_equal(again.sample(3, 4)[0]["obs"], replay.sample(3, 4)[0]["obs"])


@pytest.mark.slow(reason="a DreamerV3 run of 150 steps with 15 evaluations (world model, policy step)")
def test_no_transition_is_lost_across_evaluations(tmp_path):
    # Collection is under test, not training: 150 steps replay 150 * 0.01 rows, less than one 2 x 8 window, so no
    # update runs (its compile is left to the runs that train).
    config = AgentRunConfig(env="CartPole-v1", algo="dreamerv3", total_steps=150, train_ratio=0.01, batch_size=2,
                            sequence_length=8, eval_every=10, eval_episodes=1, checkpoint_every=0,
                            out_dir=str(tmp_path / "run"), seed=0)
    result = run_agent(config, progress=False, **DREAMER_TINY)
    assert len(result["eval"]) == 15 and result["updates"] == 0
    with np.load(tmp_path / "run" / "checkpoints" / "replay.npz") as saved:
        rows = int(saved["written"][0])
        first, last = saved["is_first"][0, :rows], saved["is_last"][0, :rows]
    # Every episode but the one in flight runs to its end: each new first row follows a last row.
    starts = np.flatnonzero(first)
    assert starts[0] == 0 and len(starts) >= 3
    assert last[starts[1:] - 1].all()
    assert int((~first).sum()) in (149, 150)


# ---------------------------------------------------------------- TD-MPC2

def _tdmpc(obs_shape=(4,), episodic=False, **overrides):
    return create_world_model("tdmpc2:1m", obs_shape=obs_shape, action_dim=2, action_type="continuous",
                              episodic=episodic, **{**TDMPC_TINY, **overrides})


@pytest.mark.slow(reason="compiles a TD-MPC2 model and its value estimate")
def test_planner_stops_at_a_predicted_termination():
    model = _tdmpc(episodic=True)
    params = model.params
    # A termination head that always predicts termination.
    head = dict(params["termination"])
    last = sorted(head)[-1]
    head[last] = {**head[last], "bias": jnp.full_like(head[last]["bias"], 50.0)}
    params = {**params, "termination": head}
    fns = model.functions
    actions = jnp.full((fns.config.horizon, 3, 2), 0.3)

    @jax.jit
    def value_and_first_reward(params):
        z = fns.encode(params, jnp.ones((3, 4)))
        return estimate_value(fns, params, z, actions, jax.random.PRNGKey(0)), fns.reward(params, z, actions[0])

    value, first_reward = value_and_first_reward(params)
    np.testing.assert_allclose(value, first_reward, rtol=1e-5, atol=1e-6)  # nothing after the termination


def test_episode_uniform_windows_end_on_the_final_observation():
    buffer = ReplayBuffer(2000, (1,), 1, seed=0)
    buffer.add_episode(obs=np.arange(1000)[:, None], actions=np.zeros((1000, 1)), rewards=np.ones(1000),
                       truncated=np.eye(1000, dtype=bool)[-1], final_obs=np.array([1000.0]))
    buffer.add_episode(obs=np.full((4, 1), -1.0), actions=np.zeros((4, 1)), rewards=np.ones(4),
                       terminated=np.eye(4, dtype=bool)[-1], final_obs=np.array([-2.0]))
    batch = buffer.sample_episodes(4000, 4)
    short = batch["obs"][:, 0, 0] < 0
    assert 0.45 < short.mean() < 0.55  # episodes drawn uniformly, not rows
    assert not (np.any(batch["obs"][:, :, 0] < 0, 1) & np.any(batch["obs"][:, :, 0] >= 0, 1)).any()  # no crossing
    final_rows = batch["is_final"][short]
    assert final_rows[:, -1].mean() > 0.4 and not final_rows[:, :-1].any()
    ends = short & batch["is_final"][:, -1]
    assert np.all(batch["obs"][ends, -1, 0] == -2.0) and np.all(batch["terminals"][ends, -2])
    chunks = jax.jit(make_chunks, static_argnums=1)(batch, 3)  # one program, not one per operation
    # The terminal transition before a final observation trains consistency and value.
    assert bool(jnp.all(chunks.next_valid[-1][ends]))
    assert bool(jnp.all(chunks.terminals[-1][ends] == 1.0))


@pytest.mark.slow(reason="compiles a TD-MPC2 image model and two acting programs")
def test_image_observations_are_shifted_when_acting_too():
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)

    def actions(augment):
        model = create_world_model("tdmpc2:1m", obs_shape=(64, 64, 3), action_dim=2, action_type="continuous",
                                   augment_acting=augment, num_channels=4, **TDMPC_TINY)
        return [np.asarray(model.act(obs, eval_mode=True, use_policy=True, key=jax.random.PRNGKey(k)))
                for k in range(6)]

    shifted, plain = actions(True), actions(False)
    assert len({a.tobytes() for a in shifted}) > 1
    assert len({a.tobytes() for a in plain}) == 1


@pytest.mark.slow(reason="an agent run: a TD-MPC2 model compiles; orbax, TensorBoard, matplotlib load (5 s alone)")
def test_episodic_mode_follows_the_environment(tmp_path):
    assert terminates("CartPole-v1", 0) and not terminates("Pendulum-v1", 0, steps=400)
    # The run decides the mode before it steps; a few random-action steps (no update, no plan) then save the agent.
    config = AgentRunConfig(env="CartPole-v1", algo="tdmpc2", total_steps=4, seed_steps=40, batch_size=4,
                            eval_every=60, eval_episodes=0, checkpoint_every=0, out_dir=str(tmp_path / "run"))
    assert run_agent(config, progress=False, **TDMPC_TINY)["updates"] == 0
    assert TDMPC2Agent.load(tmp_path / "run" / "agent").world_model.config.episodic
    # Told it is not episodic, a run on a task that terminates stops at the first termination, as the reference's
    # trainer does, instead of training a model without a termination head on it.
    forced = config.replace(episodic=False, total_steps=60, out_dir=str(tmp_path / "forced"))
    with pytest.raises(ConfigError, match=r"ended an episode of \d+ step\(s\) with a termination, but the TD-MPC2 "
                                          r"model is not episodic \(episodic=False\).*Expected episodic=True"):
        run_agent(forced, progress=False, **TDMPC_TINY)


@pytest.mark.slow(reason="compiles two TD-MPC2 plans and evaluates a 200-step episode")
def test_evaluation_keeps_the_kept_plan():
    agent = TDMPC2Agent(pendulum_tdmpc())  # run_agent's Pendulum model: its evaluation plan is test_agent_loop's
    agent.act(np.zeros((2, 3)), np.array([True, True]))
    plan = np.asarray(agent.acting_state())
    evaluate(agent, "Pendulum-v1", 1, seed=0)
    np.testing.assert_array_equal(np.asarray(agent.acting_state()), plan)  # the training episodes' plans


@pytest.mark.slow(reason="compiles a TD-MPC2 model and its MPPI plan (about 5 s)")
def test_discrete_tdmpc2_replays_the_vectors_it_plans_with():
    """Replay holds the relaxed vectors MPPI chose (not one-hots), and the environment ran their argmax."""
    model = create_world_model("tdmpc2:1m", obs_shape=(4,), action_dim=2, action_type="discrete", episodic=True,
                               **TDMPC_TINY)  # CartPole terminates
    agent = TDMPC2Agent(model)
    env = gym.make("CartPole-v1")
    ran = []
    step = env.step
    env.step = lambda action: ran.append(action) or step(action)
    from worldloom.agents.collect import EpisodeCollector

    collector = EpisodeCollector([env], agent, 200, True, 0, lambda *_: None)
    collector.reset([0], agent)
    seeded = agent.random_actions(np.random.default_rng(0), 500)
    assert seeded.min() < -0.9 and seeded.max() > 0.9 and len(np.unique(seeded)) > 900  # uniform in [-1, 1]^A
    while collector.buffer.num_episodes == 0:
        collector.step(agent)
    stored = collector.buffer._actions[:len(ran)]
    assert np.abs(stored).max() <= 1.0
    assert not np.isin(stored, [0.0, 1.0]).all()  # vectors, not one-hots
    np.testing.assert_array_equal(stored.argmax(-1), ran)
    assert set(ran) == {0, 1}
