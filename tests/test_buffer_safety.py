"""The replay buffer refuses what it could not store or reload, and cleans up after killed saves.

Every wrong input, argument or file gives a worldloom error that says what was
expected and what was got; a property-based test checks that nothing else escapes.
"""

import io
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from worldloom.core.errors import CheckpointError, ConfigError, DataError, ShapeError, WorldloomError
from worldloom.training import ReplayBuffer
from worldloom.training._buffer_io import remove_leftovers
from worldloom.training._episode import memory_limit
from worldloom.training.data import create_random_buffer

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True, database=None)


def episode(length=10, obs_dim=4):
    return {"obs": np.arange(length * obs_dim, dtype=np.float64).reshape(length, obs_dim),
            "actions": np.arange(length) % 2, "rewards": np.ones(length), "dones": np.arange(length) == length - 1}


def saved_buffer(tmp_path, episodes=10, length=20):
    buffer = ReplayBuffer(1000, (4,), 2)
    for _ in range(episodes):
        buffer.add_episode(**episode(length))
    path = tmp_path / "buffer.npz"
    buffer.save(path)
    return path


def rewrite(path, **changes):
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------ values float32 cannot hold


@pytest.mark.parametrize("field, value, index", [
    ("obs", (3, 1), [3, 1]),
    ("rewards", (7,), [7]),
    ("actions", None, [2, 0]),
    ("final_obs", (2,), [2]),
])
def test_add_episode_refuses_float64_values_that_would_be_stored_as_inf(tmp_path, field, value, index):
    buffer = ReplayBuffer(100, (4,), 2)
    buffer.add_episode(**episode())
    data = episode()
    if field == "actions":
        data["actions"] = np.zeros((10, 2))
        data["actions"][2, 0] = data["actions"][5, 1] = -1e39
    elif field == "final_obs":
        data["final_obs"] = np.zeros(4)
        data["final_obs"][value] = 1e300
    else:
        data[field] = np.array(data[field], np.float64)
        data[field][value] = 1e300
    count = 2 if field == "actions" else 1
    with pytest.raises(DataError, match=rf"^{field}: expected values within the float32 range "
                                        rf"\[-3.402823e\+38, 3.402823e\+38\], got {count} outside it "
                                        rf"\(first at index \[{', '.join(map(str, index))}\]"):
        buffer.add_episode(**data)
    assert buffer.num_episodes == 1 and buffer.num_transitions == 10  # nothing written
    buffer.save(tmp_path / "b.npz")  # what is held saves and loads again
    assert ReplayBuffer.load(tmp_path / "b.npz").num_transitions == 10


def test_largest_float32_values_are_kept_and_a_float16_buffer_checks_its_own_range(tmp_path):
    buffer = ReplayBuffer(100, (4,), 2)
    data = episode()
    data["rewards"] = np.full(10, 3.0e38)  # within float32
    buffer.add_episode(**data)
    buffer.save(tmp_path / "b.npz")
    np.testing.assert_allclose(ReplayBuffer.load(tmp_path / "b.npz").episode(0)["rewards"], 3.0e38, rtol=1e-6)
    half = ReplayBuffer(100, (4,), 2, obs_dtype=np.float16)
    data["obs"] = np.full((10, 4), 70000.0)
    with pytest.raises(DataError, match=r"obs: expected values within the float16 range \[-65504, 65504\], got 40"):
        half.add_episode(**data)


# ------------------------------------------------------------ dones and episode lengths on load


def test_load_refuses_dones_other_than_0_or_1(tmp_path):
    path = saved_buffer(tmp_path)
    assert ReplayBuffer.load(path).num_episodes == 10
    rewrite(path, dones=np.full(200, 0.5))
    with pytest.raises(DataError, match=r"dones: expected 0/1 flags, got dtype float64 with 200 other values "
                                        r"\(e.g. 0.5 at row 0\)"):
        ReplayBuffer.load(path)
    rewrite(path, dones=np.where(np.arange(200) % 20 == 19, 1, 0).astype(np.int8))  # 0/1 integers are flags
    assert ReplayBuffer.load(path).num_episodes == 10
    rewrite(path, terminals=np.full(200, 2))
    with pytest.raises(DataError, match="terminals: expected 0/1 flags"):
        ReplayBuffer.load(path)


def test_load_refuses_dones_that_disagree_with_episode_lengths(tmp_path):
    path = saved_buffer(tmp_path)
    dones = np.arange(200) % 20 == 19
    dones[45] = True  # inside episode 2 (rows 40..59)
    rewrite(path, dones=dones)
    with pytest.raises(DataError, match=r"dones: expected episodes to end only at the last row of each of the 10 "
                                        r"episode_lengths, got 1 dones inside an episode \(first at row 45, "
                                        r"inside episode 2\)"):
        ReplayBuffer.load(path)
    terminals = np.arange(200) % 20 == 19
    terminals[3] = True  # a terminal ends its episode too
    rewrite(path, dones=np.arange(200) % 20 == 19, terminals=terminals)
    with pytest.raises(DataError, match="first at row 3, inside episode 0"):
        ReplayBuffer.load(path)
    for lengths in (np.full(10, 20.0), np.full(10, 19), np.array([0, 20, 20, 20, 20, 20, 20, 20, 20, 40])):
        rewrite(path, terminals=np.arange(200) % 20 == 19, episode_lengths=lengths)
        with pytest.raises(DataError, match="episode_lengths: expected integers >= 1 .* summing to 200"):
            ReplayBuffer.load(path)
    # Without recorded lengths the dones cut the episodes.
    rewrite(path, episode_lengths=None)
    assert ReplayBuffer.load(path).num_episodes == 10


def test_load_refuses_inconsistent_metadata(tmp_path):
    for key, value, message in [
        ("capacity", np.array([5, 5]), r"capacity: expected one integer >= 1"),
        ("seed", np.array(-1), r"seed: expected one integer >= 0"),
        ("action_dim", np.array(3), r"actions have 2 columns but the file records action_dim 3"),
        ("obs_shape", np.array(4), r"the file records obs_shape 4"),
        ("final_obs_episode", np.array([7]), r"final_obs_episode: expected distinct episode indices in \[0, 2\)"),
        ("obs", np.full((40, 4), "a"), r"obs: expected numbers, got dtype <U1"),
    ]:
        path = saved_buffer(tmp_path, episodes=2)
        if key == "final_obs_episode":
            rewrite(path, final_obs=np.zeros((1, 4), np.float32))
        rewrite(path, **{key: value})
        with pytest.raises(DataError, match=message):
            ReplayBuffer.load(path)


# ------------------------------------------------------------ files that are not buffers


def test_a_npy_file_renamed_npz_and_other_non_buffers_give_checkpoint_errors(tmp_path):
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(5))
    renamed = npy.rename(tmp_path / "array.npz")
    with pytest.raises(CheckpointError, match=r"array.npz': expected an .npz archive written by "
                                              r"ReplayBuffer.save\(\), found a single .npy array"):
        ReplayBuffer.load(renamed)
    cases = {
        "empty.npz": (b"", "found an empty file"),
        "text.npz": (b"obs,actions\n1,2\n", r"found a file starting with b'obs,acti'"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=message):
            ReplayBuffer.load(tmp_path / name)
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError, match=r"expected only .npy arrays in the archive, found 'notes.txt'"):
        ReplayBuffer.load(tmp_path / "other.npz")
    np.savez(tmp_path / "objects.npz", obs=np.array([None, 1], dtype=object))
    with pytest.raises(CheckpointError, match="expected an array of numbers, got dtype object"):
        ReplayBuffer.load(tmp_path / "objects.npz")
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(CheckpointError, match="No replay buffer file"):
        ReplayBuffer.load(tmp_path / "folder.npz")
    for path in (None, 3, b"buffer.npz", ""):
        with pytest.raises(ConfigError, match="path: expected a non-empty str or os.PathLike file name, got"):
            ReplayBuffer.load(path)


def test_truncated_or_damaged_files_give_checkpoint_errors(tmp_path):
    content = saved_buffer(tmp_path, episodes=3).read_bytes()
    broken = tmp_path / "broken.npz"
    for cut in (10, 100, len(content) // 2, len(content) - 30, len(content) - 1):
        broken.write_bytes(content[:cut])
        with pytest.raises(CheckpointError, match="expected .*, (got|found) .*truncated or corrupt"):
            ReplayBuffer.load(broken)
    # In an array, a member's header, and the zip directory's time of a member (nothing else would notice it).
    for at in (len(content) // 3, 30, content.rfind(b"PK\x01\x02") + 12):
        flipped = bytearray(content)
        flipped[at] ^= 0x01
        broken.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match=r"has different content than was written \(CRC-32 [0-9a-f]{8}, its "
                                                  r"signature says [0-9a-f]{8}\): the replay buffer is damaged"):
            ReplayBuffer.load(broken)


def test_an_array_header_larger_than_its_data_is_refused_before_allocating(tmp_path):
    path = saved_buffer(tmp_path, episodes=1)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    member = io.BytesIO(members["rewards.npy"])
    assert np.lib.format.read_magic(member) == (1, 0)
    np.lib.format.read_array_header_1_0(member)
    data = members["rewards.npy"][member.tell():]
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (20_000_000_000,)})
    members["rewards.npy"] = header.getvalue() + data
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    with pytest.raises(CheckpointError, match=r"rewards.npy: expected 80000000000 bytes of array data for shape "
                                              r"\[20000000000\] float32, found 80; the file is truncated"):
        ReplayBuffer.load(path)


# ------------------------------------------------------------ sample and constructor arguments


@pytest.mark.parametrize("value, shown", [
    ("x", r"'x' \(str\)"), (0, "0"), (-3, "-3"), (True, r"True \(bool\)"), (2.5, r"2.5 \(float\)"),
    (2.0, r"2.0 \(float\)"), (None, r"None \(NoneType\)"), (np.float32(3), r"np.float32\(3.0\) \(float32\)"),
    ([2], r"\[2\]"),
])
@pytest.mark.parametrize("argument", ["batch_size", "seq_len"])
def test_sample_refuses_non_integer_and_non_positive_sizes(argument, value, shown):
    buffer = ReplayBuffer(100, (4,), 2)
    buffer.add_episode(**episode())
    sizes = {"batch_size": 2, "seq_len": 3, argument: value}
    with pytest.raises(ConfigError, match=rf"^{argument}: expected an integer >= 1, got {shown}"):
        buffer.sample(**sizes)
    with pytest.raises(ConfigError, match=rf"^{argument}: expected an integer >= 1"):
        buffer.window_rows(np.random.default_rng(0), **sizes)


def test_sample_takes_numpy_integers():
    buffer = ReplayBuffer(100, (4,), 2)
    buffer.add_episode(**episode())
    assert buffer.sample(np.int64(3), np.uint8(4))["obs"].shape == (3, 4, 4)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"capacity": 100.0}, ConfigError, r"capacity: expected an integer >= 1, got 100.0 \(float\)"),
    ({"capacity": 0}, ConfigError, r"capacity: expected an integer >= 1, got 0"),
    ({"obs_shape": "4"}, ShapeError, r"obs_shape: expected a tuple of positive integer sizes .*, got '4'"),
    ({"obs_shape": (4.5,)}, ShapeError, r"obs_shape: expected a tuple of positive integer sizes .*, got \(4.5,\)"),
    ({"obs_shape": (4, 0)}, ShapeError, r"got \(4, 0\)"),
    ({"obs_shape": True}, ShapeError, r"got True"),
    ({"action_dim": 2.5}, ShapeError, r"action_dim: expected an integer >= 1, got 2.5 \(float\)"),
    ({"action_dim": True}, ShapeError, r"action_dim: expected an integer >= 1, got True \(bool\)"),
    ({"seed": -1}, ConfigError, r"seed: expected an integer >= 0, got -1"),
    ({"obs_dtype": "garbage"}, ConfigError, r"obs_dtype: expected a NumPy number dtype .*, got 'garbage'"),
    ({"obs_dtype": str}, ConfigError, r"obs_dtype: expected a NumPy number dtype"),
    ({"capacity": 10**15}, ConfigError, r"capacity=1000000000000000: expected a buffer that fits in memory"),
])
@pytest.mark.parametrize("make", [ReplayBuffer, create_random_buffer])
def test_constructors_refuse_values_they_would_have_coerced(make, kwargs, error, message):
    with pytest.raises(error, match=message):
        make(**{"capacity": 100, "obs_shape": (4,), "action_dim": 2, **kwargs})


def test_constructor_takes_numpy_integers():
    assert ReplayBuffer(np.int32(5), np.array([2, 3]), np.int64(2)).obs_shape == (2, 3)


def test_create_random_buffer_refuses_float_counts():
    with pytest.raises(ConfigError, match=r"num_episodes: expected an integer >= 1, got 2.5 \(float\)"):
        create_random_buffer(100, (4,), 2, num_episodes=2.5, episode_length=10)


# ------------------------------------------------------------ the sample size guard


def test_a_huge_sample_is_refused_before_allocating():
    buffer = ReplayBuffer(1000, (4,), 2)
    buffer.add_episode(**episode(100))
    per_row = 4 * 4 + 4 * 2 + 4 + 4 + 1 + 1 + 16  # obs, actions, rewards, continues, is_first, terminals, indices
    assert buffer.bytes_per_transition() == per_row == 50
    with pytest.raises(ConfigError, match=r"^sample: batch_size=1000000000 x seq_len=50 needs 2.3 TiB "
                                          r"\(2,500,000,000,000 bytes\) \(50 bytes per transition\); "
                                          r"expected at most .* \(max_sample_bytes=None: half of the memory"):
        buffer.sample(10**9, 50)
    with pytest.raises(ConfigError, match="needs"):
        buffer.window_rows(np.random.default_rng(0), 10**6, 50, lead=(10**4,))


def test_the_size_guard_counts_what_a_sample_allocates_and_can_be_set():
    images = ReplayBuffer(100, (8, 8, 3), 3)
    images.add_episode(np.zeros((20, 8, 8, 3), np.uint8), np.zeros(20, int), np.zeros(20), np.eye(20)[-1])
    batch = images.sample(3, 5)
    fields = sum(value.nbytes for value in batch.values())
    assert fields + 3 * 5 * 16 == 3 * 5 * images.bytes_per_transition()  # the fields plus int64 row/slot indices
    # By default the limit is half of what the process may use, so ordinary batches pass.
    assert ReplayBuffer.max_sample_bytes is None and images.sample_limit() == memory_limit() // 2
    assert 2**28 <= memory_limit() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    ReplayBuffer(10, (64, 64, 3), 18, obs_dtype=np.uint8).check_sample_size(16, 64)  # 12.6 MB
    limit = images.max_sample_bytes = 3 * 5 * images.bytes_per_transition()
    assert images.sample(3, 5)["obs"].shape == (3, 5, 8, 8, 3)  # exactly at the limit
    with pytest.raises(ConfigError, match=rf"batch_size=4 x seq_len=5 needs .*expected at most .*"
                                          rf"\({limit:,} bytes\) \(max_sample_bytes\)"):
        images.sample(4, 5)
    images.max_sample_bytes = "lots"
    with pytest.raises(ConfigError, match=r"max_sample_bytes: expected an integer >= 1, got 'lots'"):
        images.sample(1, 5)


def test_the_torch_buffer_forwards_the_size_guard():
    torch_buffer = pytest.importorskip("worldloom_torch_compat.training._buffer")
    buffer = torch_buffer.ReplayBuffer(100, (4,), 2)
    buffer.add_episode(**episode())
    buffer.max_sample_bytes = 100
    assert buffer.jax_buffer.max_sample_bytes == 100
    with pytest.raises(ConfigError, match="expected at most 100 bytes"):
        buffer.sample(2, 5)
    with pytest.raises(ConfigError, match="batch_size: expected an integer >= 1, got 2.5"):
        buffer.sample(2.5, 5)
    with pytest.raises(ShapeError, match=r"obs_shape: expected a tuple of positive integer sizes"):
        torch_buffer.ReplayBuffer(100, (4.5,), 2)


# ------------------------------------------------------------ leftovers of killed saves


KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from worldloom.training import ReplayBuffer

    buffer = ReplayBuffer(5000, (64,), 2)
    buffer.add_episode(np.ones((4000, 64)), np.zeros(4000, int), np.ones(4000), np.eye(4000)[-1])
    savez = np.savez

    def savez_then_die(handle, **arrays):
        savez(handle, **arrays)
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    np.savez = savez_then_die
    buffer.save(sys.argv[1])
""")


def temps(directory, target):
    return [p for p in directory.iterdir() if re.fullmatch(rf"\.{re.escape(target)}\.tmp-[0-9a-f]{{8}}", p.name)]


def run_killed_save(path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], env=env, capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr.decode()


@pytest.mark.slow
def test_a_killed_save_keeps_the_old_file_and_its_temp_is_removed_at_the_next_open_and_save(tmp_path):
    path = saved_buffer(tmp_path, episodes=2)
    before = path.read_bytes()
    others = {  # the package's other temp names and look-alikes stay
        ".model.tmp-0123abcd": None, ".config.json.tmp-0123abcd": b"{}", ".notes.npz.tmp-0123ABCD": b"PK\x03\x04",
        "buffer.npz.tmp-0123abcd": b"PK\x03\x04", ".buffer.npz.tmp-0123abcd9": b"PK\x03\x04", "keep.npz": b"PK",
    }
    for name, content in others.items():
        (tmp_path / name).mkdir() if content is None else (tmp_path / name).write_bytes(content)
    run_killed_save(path)
    leftovers = temps(tmp_path, "buffer.npz")
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 1_000_000
    assert path.read_bytes() == before  # atomic: the old file is whole
    assert ReplayBuffer.load(path).num_episodes == 2
    assert not temps(tmp_path, "buffer.npz")  # removed by the open
    assert sorted(os.listdir(tmp_path)) == sorted([*others, "buffer.npz"])
    run_killed_save(tmp_path / "second.npz")
    assert len(temps(tmp_path, "second.npz")) == 1 and not (tmp_path / "second.npz").exists()
    ReplayBuffer.load(path).save(tmp_path / "third.npz")  # a save cleans too
    assert sorted(os.listdir(tmp_path)) == sorted([*others, "buffer.npz", "third.npz"])


def test_a_temp_file_a_live_writer_holds_is_not_removed(tmp_path):
    pytest.importorskip("fcntl")
    live = tmp_path / ".buffer.npz.tmp-deadbeef"
    live.write_bytes(b"PK\x03\x04 being written")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(live)!r}, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        assert remove_leftovers(tmp_path) == []
        saved_buffer(tmp_path, episodes=1)
        assert live.exists()
    finally:
        holder.communicate(b"")
    assert remove_leftovers(tmp_path) == [live]


def test_save_to_a_directory_or_an_unwritable_place_gives_checkpoint_errors(tmp_path):
    buffer = ReplayBuffer(100, (4,), 2)
    buffer.add_episode(**episode())
    with pytest.raises(CheckpointError, match="is a directory: expected a file name"):
        buffer.save(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match=r"Cannot write the replay buffer to .*: expected a writable location "
                                              r"with free space, got (File exists|Not a directory)") as caught:
        buffer.save(tmp_path / "file" / "buffer.npz")
    assert isinstance(caught.value.__cause__, OSError)


# ------------------------------------------------------------ property-based: only worldloom errors escape


def numeric_arrays(max_dims=3):
    dtypes = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int8, np.uint8, np.bool_])
    return hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=6))


ODD_VALUES = st.one_of(st.none(), st.text(max_size=3), st.integers(-3, 10**30), st.floats(), st.booleans(),
                       st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
                       st.just([[1.0, 2.0], [3.0]]), st.just(np.array(["a", "b"])), st.just(np.ones(3, complex)))


@st.composite
def episodes(draw):
    """A well-formed episode with up to two arguments swapped for something else."""
    length = draw(st.integers(1, 6))
    values = st.floats(-1e6, 1e6, width=32)
    flags = hnp.arrays(np.bool_, (length,))
    data = {
        "obs": draw(hnp.arrays(np.float64, (length, 4), elements=values) | hnp.arrays(np.uint8, (length, 4))),
        "actions": draw(hnp.arrays(np.int64, (length,), elements=st.integers(0, 2))
                        | hnp.arrays(np.float64, (length, 3), elements=values)),
        "rewards": draw(hnp.arrays(np.float64, (length,), elements=values)),
        "dones": draw(flags), "terminated": draw(st.none() | flags), "truncated": draw(st.none() | flags),
        "final_obs": draw(st.none() | hnp.arrays(np.float64, (4,), elements=values)),
    }
    for name in draw(st.sets(st.sampled_from(sorted(data)), max_size=2)):
        shape = np.shape(data[name]) if data[name] is not None else (4,)
        data[name] = draw(numeric_arrays() | ODD_VALUES | hnp.arrays(np.float64, shape)  # any float: nan, inf, 1e300
                          | hnp.arrays(np.float64, shape, elements=st.sampled_from([0.0, 1.0, 0.5, -1.0, 3.0])))
    return data


@SETTINGS
@given(st.lists(episodes(), min_size=1, max_size=3), st.sampled_from([None, np.float32, np.float16, np.uint8]))
def test_property_add_episode_raises_only_worldloom_errors_and_what_it_stores_reloads(batch, obs_dtype):
    buffer = ReplayBuffer(12, (4,), 3, obs_dtype=obs_dtype)
    for data in batch:
        try:
            buffer.add_episode(**data)
        except WorldloomError:
            pass
    with tempfile.TemporaryDirectory() as directory:
        buffer.save(Path(directory) / "b.npz")
        loaded = ReplayBuffer.load(Path(directory) / "b.npz")
    assert (loaded.num_episodes, loaded.num_transitions) == (buffer.num_episodes, buffer.num_transitions)
    for key, value in buffer.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)


SIZES = st.one_of(st.integers(-3, 40), st.integers(10**6, 10**12), st.floats(-5, 1e12), st.booleans(), st.none(),
                  st.text(max_size=3), st.integers(0, 40).map(np.int32), st.just([4]), st.just(np.array([2, 3])))


@SETTINGS
@given(SIZES, SIZES)
def test_property_sample_raises_only_worldloom_errors(batch_size, seq_len):
    buffer = ReplayBuffer(100, (4,), 2)
    buffer.add_episode(**episode(30))
    buffer.max_sample_bytes = 10**6
    try:
        batch = buffer.sample(batch_size, seq_len)
    except WorldloomError:
        return
    assert batch["obs"].shape == (int(batch_size), int(seq_len), 4)
    assert batch["rewards"].shape == (int(batch_size), int(seq_len))


@st.composite
def damaged_files(draw):
    """The bytes of a saved buffer with one array replaced or removed, cut short, or flipped."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "b.npz"
        buffer = ReplayBuffer(50, (4,), 2)
        for length in (5, 7):
            buffer.add_episode(**episode(length), final_obs=np.zeros(4))
        arrays = buffer.state_dict()
        how = draw(st.sampled_from(["intact", "replace", "remove", "cut", "flip", "bytes"]))
        if how in ("replace", "remove"):
            key = draw(st.sampled_from(sorted(arrays)))
            if how == "remove":
                del arrays[key]
            else:
                arrays[key] = draw(numeric_arrays() | hnp.arrays(np.float64, arrays[key].shape) |
                                   st.just(np.array(["x"] * max(arrays[key].size, 1))))
        np.savez(path, **arrays)
        content = path.read_bytes()
    if how == "cut":
        content = content[:draw(st.integers(0, len(content) - 1))]
    elif how == "flip":
        at = draw(st.integers(0, len(content) - 1))
        content = content[:at] + bytes([content[at] ^ draw(st.integers(1, 255))]) + content[at + 1:]
    elif how == "bytes":
        content = draw(st.binary(max_size=64) | st.just(b"PK\x03\x04") | st.just(b"\x93NUMPY\x01\x00"))
    return content


LOAD_ARGUMENTS = st.fixed_dictionaries({}, optional={
    "capacity": st.one_of(st.integers(-2, 30), st.just(10**15), ODD_VALUES),
    "obs_shape": st.one_of(st.just((4,)), st.just((5,)), ODD_VALUES, st.just((4.0,))),
    "action_dim": st.one_of(st.just(2), st.integers(-1, 3), ODD_VALUES),
    "seed": st.one_of(st.integers(-2, 5), ODD_VALUES),
})


@SETTINGS
@given(damaged_files(), st.just({}) | LOAD_ARGUMENTS)
def test_property_load_raises_only_worldloom_errors(content, arguments):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "b.npz"
        path.write_bytes(content)
        try:
            buffer = ReplayBuffer.load(path, **arguments)
        except WorldloomError:
            return
        buffer.save(path)
        again = ReplayBuffer.load(path)
    lengths = [len(buffer.episode(index)["rewards"]) for index in range(buffer.num_episodes)]
    assert again.num_transitions == buffer.num_transitions == sum(lengths)
