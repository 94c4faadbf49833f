"""ReplayBuffer, data utilities and the trainer's held-out split (NumPy only, no compiles)."""

import os

import gymnasium as gym
import numpy as np
import pytest

from worldloom.core.errors import CheckpointError, DataError, DeviceError, ShapeError
from worldloom.training import ReplayBuffer
from worldloom.training._sampling import WindowSampler, chunk_plan, split_segments
from worldloom.training.data import collect_episodes, create_random_buffer


def tagged_episode(episode_id: int, length: int, action_dim: int = 2):
    """obs[t] = (episode_id, t, 0, 0), so windows show where they read."""
    obs = np.zeros((length, 4), np.float32)
    obs[:, 0], obs[:, 1] = episode_id, np.arange(length)
    actions = np.arange(length) % action_dim
    rewards = np.arange(length, dtype=np.float32) + 100 * episode_id
    dones = np.arange(length) == length - 1
    return obs, actions, rewards, dones


def filled(capacity, lengths, seed=0):
    buffer = ReplayBuffer(capacity, (4,), 2, seed=seed)
    for episode_id, length in enumerate(lengths):
        buffer.add_episode(*tagged_episode(episode_id, length))
    return buffer


def test_sample_shapes_dtypes_and_alignment():
    buffer = filled(1000, [30, 40])
    batch = buffer.sample(batch_size=5, seq_len=12)
    assert batch["obs"].shape == (5, 12, 4) and batch["obs"].dtype == np.float32
    assert batch["actions"].shape == (5, 12, 2) and batch["actions"].dtype == np.float32
    for key in ("rewards", "continues"):
        assert batch[key].shape == (5, 12) and batch[key].dtype == np.float32
    assert batch["is_first"].dtype == bool and batch["terminals"].dtype == bool
    # Row t keeps obs_t, action_t, reward_t together.
    episode, step = batch["obs"][..., 0], batch["obs"][..., 1]
    np.testing.assert_array_equal(batch["rewards"], step + 100 * episode)
    np.testing.assert_array_equal(batch["actions"].argmax(-1), step % 2)
    np.testing.assert_array_equal(batch["continues"], 1.0 - batch["terminals"])
    assert len(buffer) == buffer.num_transitions == 70 and buffer.num_episodes == 2


def test_windows_span_short_episodes_and_mark_is_first():
    buffer = filled(1000, [3, 5, 2, 4, 6, 3])  # every episode shorter than the window
    batch = buffer.sample(batch_size=64, seq_len=8)
    episode, step = batch["obs"][..., 0], batch["obs"][..., 1]
    np.testing.assert_array_equal(batch["is_first"], step == 0)
    # Consecutive rows: the next step of the same episode, or step 0 of the next one.
    same = (episode[:, 1:] == episode[:, :-1]) & (step[:, 1:] == step[:, :-1] + 1)
    following = (episode[:, 1:] == episode[:, :-1] + 1) & (step[:, 1:] == 0)
    assert np.all(same | following)
    # The last row of each episode is its terminal.
    lengths = np.array([3, 5, 2, 4, 6, 3])
    np.testing.assert_array_equal(batch["terminals"], step == lengths[episode.astype(int)] - 1)


def test_wraparound_drops_whole_old_episodes_and_never_crosses_the_head():
    lengths = [7, 9, 4, 8, 6, 5, 9, 3, 7]
    buffer = filled(20, lengths)
    # 58 rows written; the newest episodes that fit whole in 20 slots are 6, 7, 8 (19 rows).
    assert buffer.num_episodes == 3 and buffer.num_transitions == 19
    np.testing.assert_array_equal(buffer.episode(0)["obs"][:, 0], 6)
    np.testing.assert_array_equal(buffer.episode(-1)["obs"][:, 1], np.arange(7))
    batch = buffer.sample(batch_size=200, seq_len=10)
    episode, step = batch["obs"][..., 0], batch["obs"][..., 1]
    assert set(np.unique(episode)) <= {6, 7, 8}
    order = episode * 100 + step
    assert np.all(np.diff(order, axis=1) > 0)  # chronological: no jump across the write head
    np.testing.assert_array_equal(batch["is_first"], step == 0)


def test_sampling_is_seeded():
    a, b = filled(500, [20, 30], seed=3), filled(500, [20, 30], seed=3)
    np.testing.assert_array_equal(a.sample(8, 10)["obs"], b.sample(8, 10)["obs"])
    c = filled(500, [20, 30], seed=4)
    assert not np.array_equal(a.sample(8, 10)["obs"], c.sample(8, 10)["obs"])


def test_index_actions_become_one_hot():
    buffer = ReplayBuffer(100, (4,), 3)
    obs = np.zeros((4, 4), np.float32)
    for actions in ([0, 2, 1, 2], [[0], [2], [1], [2]], np.array([0.0, 2.0, 1.0, 2.0])):
        buffer.add_episode(obs, actions, np.zeros(4), np.array([0, 0, 0, 1]))
        np.testing.assert_array_equal(buffer.episode(-1)["actions"], np.eye(3)[[0, 2, 1, 2]])
    continuous = np.linspace(-1, 1, 12).reshape(4, 3)
    buffer.add_episode(obs, continuous, np.zeros(4), np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(buffer.episode(-1)["actions"], continuous)
    with pytest.raises(DataError, match=r"\[0, 3\)"):
        buffer.add_episode(obs, [0, 3, 1, 2], np.zeros(4), np.array([0, 0, 0, 1]))


@pytest.mark.parametrize("field, value, error, message", [
    ("obs", np.zeros((5, 3)), ShapeError, r"obs: expected shape \[T, 4\].*got \[5, 3\]"),
    ("actions", np.zeros((5, 4)), ShapeError, r"actions: expected shape \[5, 2\].*got \[5, 4\]"),
    ("rewards", np.zeros(4), ShapeError, r"rewards: expected shape \[5\].*got \[4\]"),
    ("dones", np.zeros(6), ShapeError, r"dones: expected shape \[5\].*got \[6\]"),
    ("obs", np.full((5, 4), np.nan), DataError, "obs contains 20 NaN or inf"),
    ("rewards", np.array([0, 1, np.inf, 0, 0]), DataError, "rewards contains 1 NaN or inf"),
    ("actions", np.full((5, 2), np.nan), DataError, "actions contains"),
])
def test_bad_inputs_are_rejected_and_nothing_is_written(field, value, error, message):
    buffer = filled(100, [6])
    episode = dict(zip(("obs", "actions", "rewards", "dones"), tagged_episode(1, 5)))
    episode[field] = value
    with pytest.raises(error, match=message):
        buffer.add_episode(**episode)
    assert buffer.num_transitions == 6 and buffer.num_episodes == 1


def test_image_observations_stay_uint8_and_floats_do_not_fit():
    buffer = ReplayBuffer(100, (8, 8, 3), 2)
    frames = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    buffer.add_episode(frames, np.zeros(6, int), np.zeros(6), np.eye(6)[-1])
    batch = buffer.sample(2, 4)
    assert batch["obs"].dtype == np.uint8 and batch["obs"].shape == (2, 4, 8, 8, 3)
    with pytest.raises(DataError, match="uint8"):
        buffer.add_episode(frames / 255.0, np.zeros(6, int), np.zeros(6), np.eye(6)[-1])


def test_terminated_and_truncated_set_continues():
    buffer = ReplayBuffer(100, (4,), 2)
    obs, actions, rewards, _ = tagged_episode(0, 5)
    buffer.add_episode(obs, actions, rewards, dones=np.eye(5)[-1])  # dones alone: terminal
    buffer.add_episode(obs, actions, rewards, dones=np.eye(5)[-1], truncated=np.eye(5)[-1])  # time limit
    buffer.add_episode(obs, actions, rewards, terminated=np.zeros(5), truncated=np.eye(5)[-1])
    buffer.add_episode(obs, actions, rewards, terminated=np.eye(5)[-1], truncated=np.zeros(5))
    assert [bool(buffer.episode(i)["terminals"][-1]) for i in range(4)] == [True, False, False, True]
    assert all(buffer.episode(i)["dones"][-1] for i in range(4)) and buffer.num_episodes == 4
    batch = buffer.gather(np.arange(20)[None])
    np.testing.assert_array_equal(batch["continues"][0].reshape(4, 5)[:, -1], [0, 1, 1, 0])
    np.testing.assert_array_equal(batch["is_first"][0], np.arange(20) % 5 == 0)


def test_done_before_the_last_row_splits_the_episode():
    buffer = ReplayBuffer(100, (4,), 2)
    buffer.add_episode(np.zeros((7, 4)), np.zeros(7, int), np.zeros(7), np.array([0, 0, 1, 0, 0, 0, 1]))
    assert buffer.num_episodes == 2 and len(buffer.episode(0)["rewards"]) == 3


def test_save_load_round_trip(tmp_path):
    buffer = filled(30, [7, 9, 4, 8, 6])
    buffer.add_episode(*tagged_episode(9, 5), final_obs=np.full(4, 7.0))
    path = tmp_path / "buffer.npz"
    buffer.save(path)
    assert os.listdir(tmp_path) == ["buffer.npz"]  # no temp file left behind
    with np.load(path) as npz:
        assert {"obs", "actions", "rewards", "dones"} <= set(npz.files)
    loaded = ReplayBuffer.load(path)
    assert (loaded.capacity, loaded.obs_shape, loaded.action_dim) == (30, (4,), 2)
    assert loaded.num_episodes == buffer.num_episodes and loaded.num_transitions == buffer.num_transitions
    for key, value in buffer.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)
    np.testing.assert_array_equal(loaded.episode(-1)["final_obs"], np.full(4, 7.0))
    np.testing.assert_array_equal(loaded.sample(4, 6)["obs"], ReplayBuffer.load(path).sample(4, 6)["obs"])
    # The loaded buffer samples what the saved one samples next (a resumed run draws on); a seed starts afresh.
    buffer.sample(4, 6)
    buffer.save(path)  # overwriting is atomic too
    assert os.listdir(tmp_path) == ["buffer.npz"]
    np.testing.assert_array_equal(ReplayBuffer.load(path).sample(4, 6)["obs"], buffer.sample(4, 6)["obs"])
    fresh = ReplayBuffer.load(path, seed=buffer.seed)
    assert fresh._rng.bit_generator.state == np.random.default_rng(buffer.seed).bit_generator.state
    state = buffer.state_dict()
    np.savez(path, **dict(state, rng=np.array('{"bit_generator": "MT19937"}')))
    with pytest.raises(CheckpointError, match="rng: expected the state of the buffer's PCG64 generator"):
        ReplayBuffer.load(path)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="No replay buffer file"):
        ReplayBuffer.load(tmp_path / "missing.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(CheckpointError, match="corrupt"):
        ReplayBuffer.load(corrupt)
    partial = tmp_path / "partial.npz"
    np.savez(partial, obs=np.zeros((3, 4)), actions=np.zeros((3, 2)))
    with pytest.raises(CheckpointError, match=r"lacks \['rewards', 'dones'\]"):
        ReplayBuffer.load(partial)
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, obs=np.zeros((3, 4)), actions=np.zeros((2, 2)), rewards=np.zeros(3), dones=np.zeros(3))
    with pytest.raises(DataError, match=r"actions: expected shape \[3, action_dim\], got \[2, 2\]"):
        ReplayBuffer.load(uneven)
    good = tmp_path / "good.npz"
    filled(50, [5]).save(good)
    with pytest.raises(DataError, match=r"expected observations of shape \[8\], the file holds \[4\]"):
        ReplayBuffer.load(good, obs_shape=(8,))


def test_empty_or_short_buffer_and_devices():
    buffer = ReplayBuffer(100, (4,), 2)
    with pytest.raises(DataError, match="holds 0 transitions"):
        buffer.sample(2, 5)
    buffer.add_episode(*tagged_episode(0, 4))
    with pytest.raises(DataError, match="seq_len=5"):
        buffer.sample(2, 5)
    placed = buffer.sample(2, 4, device="cpu")
    assert type(placed["obs"]).__module__.startswith("jax")
    with pytest.raises(DeviceError, match="not available"):
        buffer.sample(2, 4, device="tpu")


def test_create_random_buffer_is_seeded():
    a = create_random_buffer(capacity=10_000, obs_shape=(4,), action_dim=2, num_episodes=100, episode_length=100,
                             seed=42)
    b = create_random_buffer(10_000, (4,), 2, 100, 100, seed=42)
    assert a.num_episodes == 100 and len(a) == 10_000
    np.testing.assert_array_equal(a.state_dict()["obs"], b.state_dict()["obs"])
    np.testing.assert_array_equal(a.sample(4, 50)["actions"], b.sample(4, 50)["actions"])
    images = create_random_buffer(1000, (16, 16, 3), 5, num_episodes=3, episode_length=20, discrete=False)
    assert images.sample(2, 10)["obs"].dtype == np.uint8


def test_collect_cartpole_records_terminations():
    buffer = collect_episodes("CartPole-v1", num_episodes=3, seed=1)
    again = collect_episodes("CartPole-v1", num_episodes=3, seed=1)
    np.testing.assert_array_equal(buffer.state_dict()["obs"], again.state_dict()["obs"])
    assert buffer.num_episodes == 3 and buffer.obs_shape == (4,) and buffer.action_dim == 2
    episode = buffer.episode(0)
    assert episode["terminals"][-1] and not episode["terminals"][:-1].any()  # a random policy falls
    assert set(episode["actions"].sum(-1)) == {1.0}  # one-hot
    assert episode["final_obs"].shape == (4,)
    truncated = collect_episodes("CartPole-v1", 2, seed=1, max_episode_steps=5)
    assert len(truncated.episode(0)["rewards"]) == 5 and not truncated.episode(0)["terminals"].any()


class TinyImageEnv(gym.Env):
    """Image observations, continuous actions, a time limit (truncation) after 6 steps."""

    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.full((8, 8, 3), self.t, np.uint8), {}

    def step(self, action):
        self.t += 1
        return np.full((8, 8, 3), self.t, np.uint8), float(action[0]), False, self.t >= 6, {}


def test_collect_images_and_box_actions():
    buffer = collect_episodes(TinyImageEnv(), num_episodes=2, seed=0)
    assert buffer.obs_dtype == np.uint8 and buffer.action_dim == 2 and len(buffer) == 12
    episode = buffer.episode(0)
    np.testing.assert_array_equal(episode["obs"][:, 0, 0, 0], np.arange(6))
    np.testing.assert_array_equal(episode["rewards"], episode["actions"][:, 0])
    assert episode["dones"][-1] and not episode["terminals"].any()  # truncated: continue stays 1
    assert episode["final_obs"][0, 0, 0] == 6
    with pytest.raises(ShapeError, match="the env gives obs"):
        collect_episodes(TinyImageEnv(), 1, buffer=ReplayBuffer(10, (4,), 2))


def test_held_out_split_takes_newest_whole_episodes_or_the_newest_share():
    buffer = filled(1000, [10] * 20)
    train, held = split_segments(buffer, eval_fraction=0.1, seq_len=8)
    np.testing.assert_array_equal(train, [[0, 180]])
    np.testing.assert_array_equal(held, [[180, 200]])
    assert split_segments(buffer, 0.0, 8)[1] is None
    assert split_segments(filled(1000, [10]), 0.1, 8)[1] is None  # one short episode: nothing to hold out
    # A few long episodes: the newest whole one would hold out half the data; the newest 10% are held out instead
    long_train, long_held = split_segments(filled(2000, [1000, 1000]), eval_fraction=0.1, seq_len=8)
    np.testing.assert_array_equal(long_train, [[0, 1800]])
    np.testing.assert_array_equal(long_held, [[1800, 2000]])
    one = split_segments(filled(2000, [1000]), eval_fraction=0.05, seq_len=64)  # one long episode
    np.testing.assert_array_equal(one[1], [[936, 1000]])  # a window: more than 5% of 1000
    within = split_segments(filled(2000, [900, 150]), eval_fraction=0.1, seq_len=8)  # within twice: whole
    np.testing.assert_array_equal(within[1], [[900, 1050]])
    sampler = WindowSampler(buffer, 32, 8, seed=0, segments=train, layout={"obs": np.float32}, slots=1,
                            device=None)
    rows = sampler.rows(range(50))
    assert rows.max() < 180 and rows.min() >= 0
    np.testing.assert_array_equal(sampler.rows([7]), sampler.rows([7]))  # step-keyed, order-free


def test_chunk_plan_ends_dispatches_at_intervals():
    assert list(chunk_plan(0, 10, 4, [])) == [(0, 4), (4, 4), (8, 2)]
    assert list(chunk_plan(0, 10, 4, [3])) == [(0, 3), (3, 3), (6, 3), (9, 1)]
    assert list(chunk_plan(5, 12, 4, [6, 0, None])) == [(5, 1), (6, 4), (10, 2)]


def test_box_actions_are_stored_scaled_to_the_unit_range():
    """Pendulum's torque in [-2, 2] is stored halved; the policy still acts in the env's own units."""
    taken = []

    def policy(obs):
        action = np.array([2.0 if len(taken) % 2 == 0 else -1.0], np.float32)
        taken.append(action[0])
        return action

    buffer = collect_episodes("Pendulum-v1", num_episodes=1, policy=policy, seed=0, max_episode_steps=6)
    np.testing.assert_allclose(buffer.episode(0)["actions"][:, 0], np.asarray(taken) / 2.0)
    random = collect_episodes("Pendulum-v1", num_episodes=2, seed=1, max_episode_steps=50)
    values = np.concatenate([random.episode(index)["actions"] for index in range(2)])
    assert values.min() >= -1.0 and values.max() <= 1.0 and values.max() - values.min() > 1.0
