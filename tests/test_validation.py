"""Nothing silently wrong at the model's edges: one set of input rules on both faces, the agents and the buffer.

Each case is an input that once gave a plausible wrong answer (a zero action, an
image read 255 times too bright, NaN latents, a NaN action sent to the
environment, a buffer that kept 3 of 10 episodes) and now gets a worldloom error
that says what was expected and what was got, or the right answer.
"""

from __future__ import annotations

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldloom import ConfigError, DataError, DeviceError, ShapeError, create_world_model
from worldloom.agents import DreamerAgent, TDMPC2Agent
from worldloom.training import ReplayBuffer

OBS, ACT, B, T = 4, 2, 3, 5
TINY = {"dreamerv3": dict(deter=64, hidden=32, units=32, classes=4, stoch=4, depth=2),
        "tdmpc2": dict(enc_dim=32, mlp_dim=32, latent_dim=16, num_q=2, num_channels=4, num_samples=16,
                       num_elites=4, num_pi_trajs=2, iterations=1)}
PRESET = {"dreamerv3": "dreamerv3:size1m", "tdmpc2": "tdmpc2:1m"}
IMAGE = {"dreamerv3": (16, 16, 3), "tdmpc2": (64, 64, 3)}  # TD-MPC2's encoder takes 64x64 frames


def tiny(family, obs_shape=(OBS,), **changes):
    return create_world_model(PRESET[family], obs_shape=obs_shape, action_dim=ACT,
                              **{"action_type": "discrete", **TINY[family], **changes}).eval()


@pytest.fixture(scope="module", params=list(PRESET))
def model(request):
    """A tiny discrete vector model of each family (its programs compile once for the module)."""
    return tiny(request.param)


@pytest.fixture(scope="module", params=list(PRESET))
def image_model(request):
    return tiny(request.param, IMAGE[request.param])


def sequences(model, seed=0, **changes):
    rng = np.random.default_rng(seed)
    shape = model.config.obs_shape
    obs = (rng.integers(0, 256, (B, T, *shape), dtype=np.uint8) if len(shape) == 3
           else rng.normal(size=(B, T, *shape)).astype(np.float32))
    batch = {"obs": obs, "actions": rng.integers(0, ACT, (B, T)), "rewards": rng.normal(size=(B, T)).astype(np.float32),
             "continues": np.ones((B, T), np.float32)}
    return {**batch, **changes}


def first_state(model):
    return model.encode(sequences(model)["obs"][:, 0])


# ---------------------------------------------------------------- actions


@pytest.mark.parametrize("index", [5, -1, 7, 9])
def test_out_of_range_discrete_indices_are_refused_not_read_as_a_zero_action(model, index):
    state = first_state(model)
    bad = np.full((B,), index)
    with pytest.raises(DataError, match=r"expected discrete action indices in \[0, 2\)"):
        model.observe(state, bad, np.zeros((B, OBS), np.float32))
    with pytest.raises(DataError, match=r"indices in \[0, 2\)"):
        model.imagine(state, np.full((4, B), index))
    with pytest.raises(DataError, match=r"indices in \[0, 2\)"):
        model.compute_loss(sequences(model, actions=np.full((B, T), index)))
    with pytest.raises(DataError, match=r"indices in \[0, 2\)"):
        model.predict(state, bad[:, None])  # [B, 1] indices too


def test_action_vectors_that_are_not_one_hot_or_outside_the_bounds_are_refused(model):
    state = first_state(model)
    rows = np.tile(np.array([[5.0, -2.0]], np.float32), (B, 1))
    # DreamerV3 reads a discrete model's vectors as one-hot; TD-MPC2's lie in its action bounds [-1, 1].
    message = "one-hot rows" if model.family == "dreamerv3" else r"action bounds \[-1, 1\]"
    with pytest.raises(DataError, match=message):
        model.observe(state, rows, np.zeros((B, OBS), np.float32))
    with pytest.raises(DataError, match=message):
        model.compute_loss(sequences(model, actions=np.tile(rows, (T, 1, 1)).swapaxes(0, 1)))
    one_hot = np.eye(ACT, dtype=np.float32)[[0, 1, 1]]
    assert model.predict(state, one_hot).deterministic.shape[0] == B  # valid rows still pass
    np.testing.assert_array_equal(model.predict(state, one_hot).deterministic,
                                  model.predict(state, np.array([0, 1, 1])).deterministic)


def test_tdmpc2_imagine_refuses_actions_far_outside_its_bounds():
    model = tiny("tdmpc2", action_type="continuous")
    state = first_state(model)
    with pytest.raises(DataError, match=r"expected actions in the action bounds \[-1, 1\], got values from .*1e\+06"):
        model.imagine(state, np.full((3, B, ACT), 1e6, np.float32))
    edge = model.imagine(state, np.ones((3, B, ACT), np.float32))  # the bounds themselves are actions
    assert np.isfinite(np.asarray(edge.rewards)).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_actions_are_refused(model, bad):
    state = first_state(model)
    actions = np.zeros((B, ACT), np.float32)
    actions[1, 0] = bad
    with pytest.raises(DataError, match=r"contains 1 NaN or inf value \(the first at index \[1, 0\]\); expected"):
        model.predict(state, actions)


# ---------------------------------------------------------------- observations


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_observations_are_refused_not_turned_into_nan_latents(model, bad):
    obs = np.zeros((B, OBS), np.float32)
    obs[2, 1] = bad
    with pytest.raises(DataError, match="obs contains .*NaN or inf"):
        model.encode(obs)
    with pytest.raises(DataError, match="obs contains .*NaN or inf"):
        model.observe(first_state(model), np.zeros(B, int), obs)
    seq = sequences(model)
    seq["obs"][0, 3, 0] = bad
    with pytest.raises(DataError, match=r"obs contains 1 NaN or inf value \(the first at index \[0, 3, 0\]\)"):
        model.observe_sequence(seq["obs"], seq["actions"])
    with pytest.raises(DataError, match="obs contains .*NaN or inf"):
        model.compute_loss(seq)


def test_float64_observations_beyond_float32_are_refused():
    model = tiny("dreamerv3")
    with pytest.raises(DataError, match="NaN or inf"):
        model.encode(np.full((B, OBS), 1e300))  # inf once held as float32, as JAX holds it


def test_integer_images_are_read_as_uint8_on_the_jax_face(image_model):
    seq = sequences(image_model)
    uint8 = seq["obs"][:, 0]
    reference = np.asarray(image_model.encode(uint8).deterministic)
    for dtype in (np.int32, np.int64, np.uint16):
        np.testing.assert_array_equal(np.asarray(image_model.encode(uint8.astype(dtype)).deterministic), reference)
    scaled = np.asarray(image_model.encode(uint8.astype(np.float32) / 255.0).deterministic)
    np.testing.assert_allclose(scaled, reference, rtol=1e-4, atol=1e-4)  # floats in [0, 1]: the same image
    with pytest.raises(DataError, match=r"expected image pixels in 0..255 .*got values from 0 to 300"):
        image_model.encode(np.where(uint8 > 128, 300, 0).astype(np.int32))
    with pytest.raises(DataError, match="expected image pixels as uint8"):
        image_model.encode(uint8 > 128)


def test_float_images_in_0_255_are_refused_not_read_255_times_too_bright(image_model):
    seq = sequences(image_model)
    pixels = seq["obs"].astype(np.float32)
    with pytest.raises(DataError, match=r"expected float image pixels in \[0, 1\].*look like 0..255 pixels"):
        image_model.compute_loss({**seq, "obs": pixels})
    with pytest.raises(DataError, match="look like 0..255 pixels"):
        image_model.encode(pixels[:, 0])


def test_integer_images_give_the_same_dreamer_losses_as_uint8():
    model = tiny("dreamerv3", IMAGE["dreamerv3"])
    seq = sequences(model)
    key = jax.random.PRNGKey(0)
    reference = model.compute_loss(seq, key=key)
    widened = model.compute_loss({**seq, "obs": seq["obs"].astype(np.int32)}, key=key)
    assert float(widened["loss/rec"]) == float(reference["loss/rec"]) < 1e4  # once about 16 million


# ---------------------------------------------------------------- batches and sequences


@pytest.mark.parametrize("continues", [5.0, -1.0, np.nan])
def test_continues_outside_0_1_are_refused(model, continues):
    seq = sequences(model, continues=np.full((B, T), continues, np.float32))
    with pytest.raises(DataError, match=r"continues.* expected (finite )?values in \[0, 1\]"):
        model.compute_loss(seq)


def test_nonfinite_rewards_are_refused(model):
    rewards = np.zeros((B, T), np.float32)
    rewards[1, 2] = np.nan
    with pytest.raises(DataError, match=r"rewards contains 1 NaN or inf value \(the first at index \[1, 2\]\)"):
        model.compute_loss(sequences(model, rewards=rewards))


def test_a_sequence_of_no_steps_is_a_shape_error(model):
    with pytest.raises(ShapeError, match=r"at least one step .*got shape \[3, 0, 4\]"):
        model.observe_sequence(np.zeros((B, 0, OBS), np.float32), np.zeros((B, 0), int))


def test_an_empty_batch_is_a_shape_error(model):
    with pytest.raises(ShapeError, match=r"obs: expected shape \[B, 4\] with a batch of at least one, got \[0, 4\]"):
        model.encode(np.zeros((0, OBS), np.float32))


def test_states_that_hold_nan_are_refused(model):
    from worldloom import LatentState

    state = first_state(model)
    bad = LatentState(np.full(np.shape(state.deterministic), np.nan, np.float32), state.stochastic)
    with pytest.raises(DataError, match=r"state.deterministic contains \d+ NaN or inf values"):
        model.predict(bad, np.zeros(B, int))
    with pytest.raises(DataError, match=r"initial_state.deterministic contains"):
        model.imagine(bad, np.zeros((2, B), int))


def test_episode_flags_are_booleans_or_0_and_1(model):
    with pytest.raises(DataError, match=r"is_first: expected booleans \(or 0 and 1\), got 3 other values, the "
                                        r"first nan at index \[0, 1\]"):
        model.compute_loss(sequences(model, is_first=np.array([[0, np.nan, 0, 0, 0]] * B, np.float32)))
    model.compute_loss(sequences(model, is_first=np.eye(B, T)), key=jax.random.PRNGKey(0))  # 0/1 numbers pass
    with pytest.raises(ConfigError, match=r"key: expected a PRNG key .*got str 'abc'"):
        model.compute_loss(sequences(model), key="abc")


def test_tdmpc2_acting_inputs_are_checked():
    model = tiny("tdmpc2")
    obs = np.zeros((B, OBS), np.float32)
    model.act(obs, t0=True)
    with pytest.raises(ShapeError, match=r"t0: expected a bool or \[3\] bools .*got shape \[2\]"):
        model.act(obs, t0=np.array([True, False]))
    with pytest.raises(DataError, match=r"t0: expected booleans \(or 0 and 1\).*the first 0.5"):
        model.act(obs, t0=np.array([0.5, 1.0, 0.0]))
    plan = np.zeros((B, model.config.horizon, ACT), np.float32)
    with pytest.raises(DataError, match=r"prev_plan contains \d+ NaN"):
        model.act(obs, prev_plan=plan + np.nan)
    with pytest.raises(DataError, match=r"prev_plan: expected actions in the action bounds \[-1, 1\]"):
        model.act(obs, prev_plan=plan + 1e6)
    with pytest.raises(ConfigError, match=r"reduce must be 'mean', 'min' or 'all', got 'max'"):
        model.predict_q(first_state(model), np.zeros(B, int), reduce="max")


# ---------------------------------------------------------------- the replay buffer


def test_buffer_episode_index_must_be_an_int():
    buffer = ReplayBuffer(100, (OBS,), ACT)
    buffer.add_episode(np.zeros((5, OBS), np.float32), np.zeros((5, ACT), np.float32), np.zeros(5, np.float32),
                       dones=np.arange(5) == 4)
    for index in ("0", 0.5, True):
        with pytest.raises(DataError, match="episode index: expected an int"):
            buffer.episode(index)
    assert buffer.episode(np.int64(-1))["obs"].shape == (5, OBS)


def test_buffer_refuses_float_images_in_0_255_and_integers_beyond():
    buffer = ReplayBuffer(100, (8, 8, 3), 2)
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3))
    flags = dict(actions=np.zeros(6, int), rewards=np.zeros(6), dones=np.eye(6)[-1])
    with pytest.raises(DataError, match="look like 0..255 pixels"):
        buffer.add_episode(obs=pixels.astype(np.float32), **flags)
    with pytest.raises(DataError, match="0..255"):
        buffer.add_episode(obs=pixels * 4, **flags)
    assert buffer.num_episodes == 0
    buffer.add_episode(obs=pixels.astype(np.float32) / 255, **flags)  # [0, 1] floats are images
    assert buffer.num_episodes == 1


def test_buffer_load_with_a_smaller_capacity_is_refused_not_truncated(tmp_path):
    buffer = ReplayBuffer(1000, (OBS,), ACT)
    for _ in range(10):
        buffer.add_episode(obs=np.zeros((30, OBS)), actions=np.zeros(30, int), rewards=np.zeros(30),
                           dones=np.eye(30)[-1])
    buffer.save(tmp_path / "buffer.npz")
    with pytest.raises(ConfigError, match=r"capacity=100: expected at least the 300 transitions \(10 episodes\)"):
        ReplayBuffer.load(tmp_path / "buffer.npz", capacity=100)
    assert ReplayBuffer.load(tmp_path / "buffer.npz", capacity=300).num_episodes == 10


# ---------------------------------------------------------------- agents


class NaNAfter(gym.Env):
    """CartPole's spaces; its observation turns NaN at step ``bad_step`` of each episode."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    action_space = gym.spaces.Discrete(ACT)
    spec = gym.envs.registration.EnvSpec("NaNAfter-v0")

    def __init__(self, bad_step=3):
        self.bad_step, self.t = bad_step, 0

    def obs(self):
        return np.full(OBS, np.nan if self.t >= self.bad_step else 0.1, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.obs(), {}

    def step(self, action):
        self.t += 1
        return self.obs(), 0.0, False, False, {}


@pytest.fixture(scope="module")
def agents():
    dreamer = DreamerAgent(tiny("dreamerv3"), seed=0)
    planner = TDMPC2Agent(tiny("tdmpc2"), seed=0)
    return dreamer, planner


@pytest.mark.slow(reason="compiles a Dreamer policy step and an MPPI plan (shared with the collection test)")
def test_agents_refuse_a_nonfinite_observation_naming_the_environment(agents):
    obs = np.zeros((3, OBS), np.float32)
    obs[1, 2] = np.nan
    for agent in agents:
        agent.reset(3)
        with pytest.raises(DataError, match=r"environment 1 \(of 3\) holds NaN or inf") as err:
            agent.act(obs, np.ones(3, bool))
        assert err.value.environments == [1]
        assert agent.act(np.zeros((3, OBS), np.float32), np.ones(3, bool)).shape == (3, ACT)


def test_collection_names_the_environment_and_its_step(agents):
    from worldloom.agents.collect import EpisodeCollector, StreamCollector

    for agent, collector_type in zip(agents, (StreamCollector, EpisodeCollector)):
        envs = [NaNAfter(), NaNAfter(bad_step=2), NaNAfter()]  # three, as the acting test: the same programs
        collector = collector_type(envs, agent, 200, True, 0, lambda *args: None)
        collector.reset([0, 1, 2], agent)
        collector.step(agent)
        collector.step(agent)
        with pytest.raises(DataError, match=r"NaNAfter-v0 #1 at step 2 of its episode: The observation of "
                                            r"environment 1 \(of 3\) holds NaN"):
            collector.step(agent)


# ---------------------------------------------------------------- where values are read


def test_device_summary_reads_what_the_host_summary_reads():
    from worldloom.core import validation

    rng = np.random.default_rng(0)
    floats = rng.normal(size=(5, 3)).astype(np.float32)
    floats[2, 1], floats[4, 0] = np.nan, np.inf
    one_hot = np.eye(3, dtype=np.float32)[[0, 2, 1, 1, 0]]
    one_hot[3] = [5, -2, 0]
    flags = np.array([[False, True], [False, False]])  # is_first, is_last: read as 0 and 1
    for array, rows in ((floats, False), (one_hot, True), (rng.integers(-4, 9, (6,)), False), (flags, False)):
        host, device = validation.host_summary(array, rows), validation.device_summary(jnp.asarray(array), rows)
        assert (host.size, host.nonfinite, host.bad_rows) == (device.size, device.nonfinite, device.bad_rows)
        np.testing.assert_allclose([host.low, host.high], [device.low, device.high], rtol=1e-6)
    assert validation.host_summary(one_hot, True).first_bad_row == [5, -2, 0]
    flags_summary = validation.host_summary(flags)
    assert (flags_summary.low, flags_summary.high) == (0, 1)


def test_device_inputs_are_checked_unless_the_handle_opts_out(monkeypatch):
    from worldloom.core import validation

    model = tiny("dreamerv3")
    reads = []
    device_summary = validation.device_summary

    def counted(x, one_hot_rows=False):
        reads.append(x.shape)
        return device_summary(x, one_hot_rows)

    # Here every array lives on the CPU; take JAX arrays as accelerator arrays to exercise that path.
    monkeypatch.setattr(validation, "on_accelerator",
                        lambda x: isinstance(x, jax.Array) and not validation.is_traced(x))
    monkeypatch.setattr(validation, "device_summary", counted)
    obs = jnp.full((B, OBS), jnp.nan)
    with pytest.raises(DataError, match="NaN or inf"):
        model.encode(obs)
    assert reads == [(B, OBS)]
    model.check_device_inputs = False
    state = model.encode(obs)  # not read: the caller vouches for device inputs
    assert reads == [(B, OBS)] and np.isnan(np.asarray(state.posterior_logits)).all()
    with pytest.raises(DataError, match="NaN or inf"):
        model.encode(np.asarray(obs))  # host inputs are always checked


def test_traced_inputs_pass_unchecked():
    model = tiny("dreamerv3")
    traced = jax.jit(lambda obs: model.functions.encode(model.params, model._obs(obs, 1)))
    assert traced(jnp.zeros((B, OBS))).shape[0] == B


# ---------------------------------------------------------------- the torch face


@pytest.fixture(scope="module")
def torch_faces():
    pytest.importorskip("torch")
    from worldloom_torch_compat.model import wrap

    return {family: wrap(tiny(family)) for family in PRESET}


def test_torch_face_applies_the_same_rules(torch_faces):
    import torch

    for model in torch_faces.values():
        with pytest.raises(ConfigError, match="batch_size: expected a positive int, got 2.7"):
            model.initial_state(2.7)
        with pytest.raises(DeviceError, match=r"\.to: expected a device .*got 'banana'"):
            model.to("banana")

    for model in torch_faces.values():
        with torch.no_grad():
            state = model.encode(torch.zeros(B, OBS))
            with pytest.raises(DataError, match=r"indices in \[0, 2\)"):
                model.observe(state, torch.full((B,), 5), torch.zeros(B, OBS))
            with pytest.raises(DataError, match=r"indices in \[0, 2\)"):
                model.imagine(state, torch.full((4, B), -1))
            batch = {"obs": torch.zeros(B, T, OBS), "actions": torch.full((B, T), 7), "rewards": torch.zeros(B, T),
                     "continues": torch.ones(B, T)}
            with pytest.raises(DataError, match=r"indices in \[0, 2\)"):
                model.compute_loss(batch)
            with pytest.raises(DataError, match="continues"):
                model.compute_loss({**batch, "actions": torch.zeros(B, T, dtype=torch.int64),
                                    "continues": torch.full((B, T), 5.0)})
            with pytest.raises(DataError, match="obs contains .*NaN or inf"):
                model.encode(torch.full((B, OBS), float("nan")))
            with pytest.raises(DataError, match="obs contains .*NaN or inf"):
                model.observe(state, torch.zeros(B, dtype=torch.int64), torch.full((B, OBS), float("inf")))
            with pytest.raises(ShapeError, match="at least one step"):
                model.observe_sequence(torch.zeros(B, 0, OBS), torch.zeros(B, 0, dtype=torch.int64))
        with pytest.raises(DataError, match="obs contains .*NaN or inf"):  # with grad: params traced, obs read
            model.encode(torch.full((B, OBS), float("nan")))


def test_torch_face_reads_integer_images_as_uint8_like_the_jax_face():
    torch = pytest.importorskip("torch")
    from worldloom_torch_compat.model import wrap

    handle = tiny("dreamerv3", IMAGE["dreamerv3"])
    model = wrap(handle)
    pixels = np.random.default_rng(0).integers(0, 256, (B, *IMAGE["dreamerv3"]), dtype=np.uint8)
    reference = np.asarray(handle.encode(pixels).deterministic)
    channels_first = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    with torch.no_grad():
        for dtype in (torch.uint8, torch.int32, torch.int64):
            np.testing.assert_array_equal(model.encode(channels_first.to(dtype)).deterministic.numpy(), reference)
        with pytest.raises(DataError, match="look like 0..255 pixels"):
            model.encode(channels_first.float())


def test_torch_face_meta_tensors_and_missing_cuda_get_worldloom_errors(torch_faces):
    import torch

    model = torch_faces["dreamerv3"]
    with pytest.raises(DataError, match="'meta' device holds no values"):
        model.encode(torch.zeros(B, OBS, device="meta"))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="could not move the Parameters"):
            model.to("cuda")
        assert model.device.type == "cpu" and model.encode(torch.zeros(B, OBS)).deterministic.shape[0] == B


def test_a_vector_env_that_resets_another_way_is_refused():
    import gymnasium as gym

    from worldloom.agents.collect import EpisodeCollector, StreamCollector, as_vector_env

    for kind, other in ((StreamCollector, "SameStep"), (EpisodeCollector, "NextStep")):
        envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")], autoreset_mode=other)
        with pytest.raises(ConfigError, match=f"autoreset_mode='{kind.AUTORESET}'.*got '{other}'"):
            as_vector_env(envs, kind.AUTORESET)
        right = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")], autoreset_mode=kind.AUTORESET)
        gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")], autoreset_mode=other)  # made after, the other way
        assert as_vector_env(right, kind.AUTORESET) is right
