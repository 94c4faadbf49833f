"""Replay beyond RAM and the online queue: disk replays, their checkpoints, kill -9, the reference's online windows."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from worldloom.agents.replay import StreamReplay
from worldloom.core.errors import CheckpointError, ConfigError
from worldloom.training.episode_replay import EpisodeReplay
from worldloom.training.replay_protocol import Replay, SampledBatch
from worldloom.training.replay_storage import check_free_disk, choose_storage

STREAMS, OBS, DETER, STOCH = 2, 3, 5, 4


def step(t: int, streams: int = STREAMS) -> dict:
    """Row ``t`` of every stream: the observation says which step and stream it is (``t + 1000 * stream``)."""
    obs = (t + 1000 * np.arange(streams))[:, None] * np.ones((1, OBS), np.float32)
    return {"obs": obs.astype(np.float32), "actions": np.zeros((streams, 2)), "rewards": np.full(streams, t),
            "is_first": np.full(streams, t == 0), "is_last": np.zeros(streams, bool),
            "is_terminal": np.zeros(streams, bool), "deter": np.full((streams, DETER), t, np.float32),
            "stoch": np.zeros((streams, STOCH))}


def flip_byte(path, offset: int) -> None:
    """Invert the byte ``offset`` bytes into the data of the ``.npy`` file ``path``."""
    start = np.load(path, mmap_mode="r").offset
    with open(path, "r+b") as handle:
        handle.seek(start + offset)
        byte = handle.read(1)
        handle.seek(start + offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def stream_replay(capacity=40, **kwargs) -> StreamReplay:
    return StreamReplay(capacity, STREAMS, (OBS,), np.float32, 2, DETER, STOCH, seed=1, **kwargs)


def episode(length: int, value: float) -> dict:
    return dict(obs=np.full((length, OBS), value, np.float32), actions=np.zeros((length, 2), np.float32),
                rewards=np.full(length, value, np.float32), terminated=np.zeros(length, bool),
                truncated=np.arange(length) == length - 1, final_obs=np.full(OBS, -value, np.float32))


# ------------------------------------------------------------ the choice


def test_auto_storage_compares_the_replay_with_the_available_memory_and_names_why():
    assert choose_storage("auto", 4 * 2**30, available=16 * 2**30)[0] == "ram"
    choice, why = choose_storage("auto", 12 * 2**30, available=16 * 2**30)
    assert choice == "disk" and "12.0 GiB > 0.5 x 16.0 GiB of available memory" in why
    assert choose_storage("disk", 1)[0] == "disk" and choose_storage("ram", 2**60)[0] == "ram"
    with pytest.raises(ConfigError, match="replay_storage must be one of 'auto', 'ram', 'disk', got 'ssd'"):
        choose_storage("ssd", 1)


def test_a_disk_replay_larger_than_the_free_disk_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"needs 1024.0 TiB more once full; expected at least that much free disk"):
        check_free_disk(tmp_path / "replay", 2**40 * 1024)
    assert not (tmp_path / "replay").exists()
    check_free_disk(tmp_path / "replay", 2**20)


def test_files_that_are_not_a_replay_are_refused_and_left_alone(tmp_path):
    (tmp_path / "replay").mkdir()
    (tmp_path / "replay" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="other files"):
        stream_replay(directory=tmp_path / "replay")
    assert (tmp_path / "replay" / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------ disk stream replay


def test_a_disk_replay_samples_what_a_ram_replay_samples_and_implements_the_protocol(tmp_path):
    ram, disk = stream_replay(), stream_replay(directory=tmp_path / "replay")
    assert isinstance(ram, Replay) and isinstance(disk, Replay) and disk.storage == "disk"
    for t in range(30):  # wraps the 20-row streams
        ram.add(step(t))
        disk.add(step(t))
    assert isinstance(disk.data["obs"], np.memmap)
    for _ in range(3):
        (ram_batch, ram_where), sampled = ram.sample(4, 5), disk.sample(4, 5)
        assert isinstance(sampled, SampledBatch)
        for key, value in ram_batch.items():
            np.testing.assert_array_equal(sampled.data[key], value)
        ram.update(ram_where, {"deter": np.ones((4, 4, DETER)), "stoch": np.ones((4, 4, STOCH))})
        disk.update(sampled.where, {"deter": np.ones((4, 4, DETER)), "stoch": np.ones((4, 4, STOCH))})
    np.testing.assert_array_equal(np.asarray(disk.data["deter"]), ram.data["deter"])


def test_sampling_a_disk_replay_reads_each_windows_frames_in_one_read(tmp_path, monkeypatch):
    """The frames of each sampled window come from one read of its rows (two where it wraps around the ring's end),
    not from page faults of the memory map; the batch equals the gather through the map."""
    if not hasattr(os, "preadv"):
        pytest.skip("no os.preadv on this platform: windows are gathered through the memory map")
    disk = stream_replay(directory=tmp_path / "replay")
    for t in range(30):  # 20-row streams: row t lives in slot t % 20
        disk.add(step(t))
    reads, preadv = [], os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset: reads.append((offset, buffers[0].nbytes))
                        or preadv(fd, buffers, offset))
    batch, where = disk.sample(6, 5)
    obs = disk.data["obs"]
    row, stream_bytes = obs.strides[1], obs.strides[0]
    covered = []
    for offset, size in reads:
        first = (offset - obs.offset) // row
        covered += list(range(first, first + size // row))
    expected = [int(stream) * stream_bytes // row + int(slot) for stream, slots in zip(where.streams, where.slots)
                for slot in slots]
    wraps = sum(int(slots[0] > slots[-1]) for slots in where.slots)
    assert covered == expected and len(reads) == len(where.streams) + wraps and wraps > 0  # this draw wraps
    np.testing.assert_array_equal(batch["obs"], np.asarray(obs)[where.streams[:, None], where.slots])


def test_resume_reopens_the_files_keeps_later_rows_and_checks_every_chunk(tmp_path):
    replay = stream_replay(capacity=4000, directory=tmp_path / "replay")  # 2 chunks of 1024 rows per stream
    for t in range(1500):
        replay.add(step(t))
    replay.save(tmp_path / "replay.npz")
    assert os.path.getsize(tmp_path / "replay.npz") < 10_000  # counters and checksums, not the rows
    for t in range(1500, 1600):  # rows and write-backs after the checkpoint, then the process dies
        replay.add(step(t))
    batch, where = replay.sample(3, 4)
    replay.update(where, {"deter": np.full((3, 3, DETER), -1.0), "stoch": np.ones((3, 3, STOCH))})
    del replay
    again = stream_replay(capacity=4000, directory=tmp_path / "replay", resume=True).load(tmp_path / "replay.npz")
    assert again.written.tolist() == [1600, 1600]  # every row, those after the checkpoint too
    np.testing.assert_array_equal(np.asarray(again.data["obs"][1, :1600, 0]), 1000 + np.arange(1600))
    again.add(step(1600))
    again.save(tmp_path / "replay.npz")
    # A flipped byte in rows the checkpoint vouches for is found on load.
    flip_byte(tmp_path / "replay" / "obs.npy", 4 * OBS * 1030)  # row 1030 of stream 0
    with pytest.raises(CheckpointError, match=r"obs.npy: rows 1024 to 1600 of stream 0 differ from the checkpoint"):
        stream_replay(capacity=4000, directory=tmp_path / "replay", resume=True).load(tmp_path / "replay.npz")


def test_a_checkpoint_of_another_replay_or_storage_is_a_checkpoint_error(tmp_path):
    first = stream_replay(directory=tmp_path / "a")
    first.add(step(0))
    first.save(tmp_path / "a.npz")
    other = stream_replay(directory=tmp_path / "b")
    with pytest.raises(CheckpointError, match="do not belong together"):
        other.load(tmp_path / "a.npz")
    with pytest.raises(CheckpointError, match="saved on disk"):
        stream_replay().load(tmp_path / "a.npz")
    with pytest.raises(ConfigError, match="a disk replay holds the 20 rows per stream"):
        first.resize(80)


KILLED = """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from test_replay_storage import step, stream_replay
    replay = stream_replay(capacity=400, directory=sys.argv[1] + "/replay")
    for t in range(290):
        replay.add(step(t))
        if t % 50 == 49:
            replay.save(sys.argv[1] + "/replay.npz")  # the last save at 250 rows per stream
    print(290, flush=True)
    time.sleep(120)
"""


@pytest.mark.slow(reason="a child process that imports worldloom (about 4 s) and is killed with SIGKILL")
def test_kill_9_and_resume_keeps_every_row(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED), str(tmp_path), os.path.dirname(__file__)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "290"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    replay = stream_replay(capacity=400, directory=tmp_path / "replay", resume=True).load(tmp_path / "replay.npz")
    # Every row written before the kill: the 40 after the last save too, over rows that save held (200 per stream).
    assert replay.written.tolist() == [290, 290] and len(replay) == 400
    newest = np.arange(90, 290)
    for stream in range(STREAMS):
        np.testing.assert_array_equal(np.asarray(replay.data["obs"][stream, newest % replay.rows, 0]),
                                      newest + 1000 * stream)
    replay.add(step(290))  # the run goes on where it was killed, and its next save loads
    replay.save(tmp_path / "replay.npz")
    again = stream_replay(capacity=400, directory=tmp_path / "replay", resume=True).load(tmp_path / "replay.npz")
    assert again.written.tolist() == [291, 291] and again.unchecked_chunks == 0


# ------------------------------------------------------------ the online queue


def test_each_new_window_is_trained_once_in_order_before_uniform_samples():
    length = 4
    replay = stream_replay(capacity=400, online=True)
    queued = []  # (stream, start) of the windows the reference queues: starts 1, L + 1, 2L + 1, ... of each stream
    trained = []
    for t in range(41):
        replay.add(step(t))
        if t >= length and t % length == 0:
            queued += [(stream, t + 1 - length) for stream in range(STREAMS)]
        if t >= length and (t % 3 == 2 or t == 40):
            batch, (streams, slots) = replay.sample(3, length)
            starts = batch["obs"][:, 0, 0] - 1000 * streams
            online = min(len(queued) - len(trained), 3)
            trained += list(zip(streams[:online].tolist(), starts[:online].astype(int).tolist()))
            assert trained == queued[:len(trained)]  # the queue first, oldest first, each window once
            assert (slots[:, 1:] - slots[:, :-1] == 1).all()
    assert len(trained) == len(queued) == 20 and replay.online_sampled == 20
    # With the queue empty, a batch is uniform samples only.
    assert replay.sample(64, length).data["obs"][:, 0, 0].std() > 5
    assert not stream_replay(online=False).online


def test_the_online_queue_survives_a_save_and_skips_windows_the_ring_overwrote(tmp_path):
    replay = stream_replay(capacity=40, online=True)  # 20 rows per stream
    for t in range(30):
        replay.add(step(t))
    replay.save(tmp_path / "replay.npz")
    again = stream_replay(capacity=40, online=True).load(tmp_path / "replay.npz")
    batch, (streams, _) = again.sample(6, 4)
    # Windows starting at 1, 5 and 9 lost rows to the ring (rows 10..29 are held): the queue goes on at 13, 17.
    starts = (batch["obs"][:4, 0, 0] - 1000 * streams[:4]).astype(int).tolist()
    assert starts == [13, 13, 17, 17]


# ------------------------------------------------------------ TD-MPC2's episode replay


def test_an_episode_replay_on_disk_resumes_to_its_checkpoint(tmp_path):
    replay = EpisodeReplay(30, (OBS,), np.float32, 2, directory=tmp_path / "replay")
    for value in range(3):
        replay.add(episode(6, value))
    replay.save(tmp_path / "replay.npz")
    for value in range(3, 6):  # 18 more rows: the ring overwrites the first episode, then the process dies
        replay.add(episode(6, value))
    again = EpisodeReplay(30, (OBS,), np.float32, 2, directory=tmp_path / "replay", resume=True)
    again.load(tmp_path / "replay.npz")
    held = [again.buffer.episode(i) for i in range(again.buffer.num_episodes)]
    assert [e["obs"][0, 0] for e in held] == [1.0, 2.0] and held[-1]["final_obs"].tolist() == [-2.0] * OBS
    batch, where = again.sample(4, 3)
    assert batch["obs"].shape == (4, 3, OBS) and where is None
    again.add(episode(6, 9))
    again.save(tmp_path / "replay.npz")
    flip_byte(tmp_path / "replay" / "rewards.npy", 4 * 7)  # the reward of row 7
    with pytest.raises(CheckpointError, match="rewards.npy: rows 0 to 23 of stream 0 differ"):
        EpisodeReplay(30, (OBS,), np.float32, 2, directory=tmp_path / "replay", resume=True).load(
            tmp_path / "replay.npz")


def test_an_episode_replay_in_ram_saves_the_documented_buffer_file(tmp_path):
    from worldloom.training import ReplayBuffer

    replay = EpisodeReplay(30, (OBS,), np.float32, 2)
    replay.add(episode(6, 1))
    replay.save(tmp_path / "replay.npz")
    assert ReplayBuffer.load(tmp_path / "replay.npz").num_transitions == 6
    with pytest.raises(ConfigError, match="holds 6 transitions; expected a capacity of at least that, got 4"):
        EpisodeReplay(4, (OBS,), np.float32, 2).load(tmp_path / "replay.npz")


# ------------------------------------------------------------ the online run

AGENT_CHILD = """
    import sys
    sys.path.insert(0, sys.argv[2])
    from _agents import DREAMER_TINY
    from worldloom.agents.loop import AgentRunConfig, run_agent
    config = AgentRunConfig(**eval(sys.argv[3]))
    run_agent(config, progress=False, **DREAMER_TINY)
"""


def agent_settings(out_dir, total_steps: int) -> dict:
    # CartPole's quick preset (the update program of the other CartPole runs) with the online queue on, as the
    # reference's defaults have it.
    return dict(env="CartPole-v1", algo="dreamerv3", replay_online=True, total_steps=total_steps, train_ratio=4,
                batch_size=2, sequence_length=8, eval_every=10**6, eval_episodes=0, checkpoint_every=30,
                buffer_capacity=5000, replay_storage="disk", out_dir=str(out_dir), seed=0)


@pytest.mark.slow(reason="a DreamerV3 run in a child process killed with SIGKILL after its second checkpoint, then "
                         "resumed here (the CartPole runs' update program)")
def test_an_online_run_killed_with_sigkill_resumes_its_disk_replay_with_every_row(tmp_path, capsys):
    from _agents import DREAMER_TINY

    from worldloom.agents._run_io import read_loop_state
    from worldloom.agents.loop import AgentRunConfig, run_agent

    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(AGENT_CHILD), str(tmp_path),
                              os.path.dirname(__file__), repr(agent_settings(run, 10**6))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not (run / "checkpoints" / "loop.json").exists() or read_loop_state(run / "checkpoints").env_step < 60:
            assert child.poll() is None, child.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no second checkpoint within 10 minutes"
            time.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert "Replay: 5,000 rows on disk at" in out and "online queue on" in out
    head = int(np.load(run / "replay" / "head.npy")[0])
    rows = np.array(np.load(run / "replay" / "obs.npy", mmap_mode="r")[0, :head])
    assert head >= 60 and os.path.getsize(run / "checkpoints" / "replay.npz") < 50_000  # not a copy of the rows
    steps = read_loop_state(run / "checkpoints").env_step
    result = run_agent(AgentRunConfig(**agent_settings(run, steps + 20)), progress=False, resume=True, **DREAMER_TINY)
    assert result["env_steps"] == steps + 20 and "the storage the run was saved with" in capsys.readouterr().out
    after = np.load(run / "replay" / "obs.npy", mmap_mode="r")[0]
    assert int(np.load(run / "replay" / "head.npy")[0]) > head  # the resumed run wrote after the rows it found
    np.testing.assert_array_equal(after[:head], rows)  # every row written before the kill, in place


def test_a_run_prints_its_replay_choice_and_resumes_with_the_storage_it_saved(tmp_path, capsys):
    from types import SimpleNamespace

    from worldloom.agents.config import AgentRunConfig
    from worldloom.agents.replay_choice import replay_options, row_bytes

    agent = SimpleNamespace(world_model=SimpleNamespace(config=SimpleNamespace(deter=512, stoch_size=128,
                                                                               action_dim=6)))
    config = AgentRunConfig(env="CartPole-v1", algo="dreamerv3", configs=["defaults"], total_steps=9000,
                            buffer_capacity=50_000, out_dir=str(tmp_path))  # the reference's replay, not quick's
    assert row_bytes(config, agent, (64, 64, 3)) == 64 * 64 * 3 + 24 + 4 + 3 + 2048 + 128
    options = replay_options(config, agent, (64, 64, 3), tmp_path, 0, None)
    assert options == {"capacity": 10_000, "online": True}
    assert "Replay: 10,000 rows in RAM (138.2 MiB when full); auto: 138.2 MiB <= 0.5 x" in capsys.readouterr().out
    tdmpc2 = AgentRunConfig(env="Pendulum-v1", algo="tdmpc2", total_steps=9000, buffer_capacity=50_000,
                            replay_storage="disk", out_dir=str(tmp_path))
    options = replay_options(tdmpc2, agent, (64, 64, 3), tmp_path, 1, None)
    assert options == {"capacity": 50_000, "online": False, "directory": tmp_path / "replay.process1",
                       "resume": False}
    assert "rows on disk at" in capsys.readouterr().out
    replay = stream_replay(directory=tmp_path / "replay")
    (tmp_path / "checkpoints").mkdir()
    replay.save(tmp_path / "checkpoints" / "replay.npz")
    resumed = replay_options(config, agent, (64, 64, 3), tmp_path, 0, tmp_path / "checkpoints")
    assert resumed["resume"] and resumed["directory"] == tmp_path / "replay"
    with pytest.raises(ConfigError, match="saved its replay on disk; expected replay_storage 'auto' or 'disk'"):
        replay_options(config.replace(replay_storage="ram"), agent, (64, 64, 3), tmp_path, 0,
                       tmp_path / "checkpoints")
    with pytest.raises(ConfigError, match="expected at least that much free disk"):
        replay_options(config.replace(replay_storage="disk", buffer_capacity=10**11), agent, (64, 64, 3),
                       tmp_path / "big", 0, None)
