"""kill -9 of a training process at random moments: the newest checkpoint always loads, and resume is bit-exact.

One tiny TD-MPC2 run is trained in child processes with a checkpoint every
2 updates. An uninterrupted run gives the reference; then a run in another
directory is killed three times at random moments (mostly mid-save, since
saving is most of what a tiny run does) and resumed each time. After each
kill every listed checkpoint is whole and equals the uninterrupted run's state
at its step; the next child resumes from the newest with RuntimeWarnings as
errors, so a fallback from an unloadable newest one fails the test. The children
share a persistent JAX compilation cache and compile with
``JAX_DISABLE_MOST_OPTIMIZATIONS``, so only the first one pays a (short)
compile; every child runs with the same settings, so results compare bit for bit.
"""

import os
import random
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from worldloom.training import _checkpoint

TINY = dict(enc_dim=8, mlp_dim=8, latent_dim=8, num_q=2, num_bins=11)
TOTAL, EVERY = 16, 2
CONFIG = dict(total_steps=TOTAL, batch_size=2, sequence_length=4, steps_per_dispatch=2, device="cpu",
              eval_interval=0, warmup_steps=0, seed=3)
CHILD = """
    import sys, warnings
    import jax
    import numpy as np
    jax.config.update("jax_compilation_cache_dir", sys.argv[3])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from worldloom import create_world_model
    from worldloom.training import Trainer, TrainingConfig
    from worldloom.training.callbacks import CheckpointCallback
    from worldloom.training.data import create_random_buffer
    warnings.simplefilter("error", RuntimeWarning)  # e.g. a fallback from a newest checkpoint that does not load
    model = create_world_model("tdmpc2:1m", obs_shape=(3,), action_dim=2, device="cpu", **{tiny!r})
    buffer = create_random_buffer(400, (3,), 2, num_episodes=10, episode_length=10, seed=0)
    keep_last = None if sys.argv[4] == "all" else int(sys.argv[4])
    callback = CheckpointCallback(sys.argv[1], save_every={every}, keep_last=keep_last, save_best=False)
    Trainer(model, TrainingConfig(**{config!r}), [callback]).train(buffer, resume=True)
    np.savez(sys.argv[2], *[np.asarray(x) for x in jax.tree_util.tree_leaves(model.params)])
"""


def newest_step(directory) -> int:
    found = _checkpoint.list_checkpoints(directory)
    return found[-1][0] if found else 0


def wait_for_checkpoint(directory, after: int, process) -> None:
    """Return once ``directory`` holds a checkpoint newer than ``after``."""
    deadline = time.monotonic() + 300
    while newest_step(directory) <= after:
        assert process.poll() is None, f"the run ended before it was killed: {process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no new checkpoint within 300 s"
        time.sleep(0.01)


@pytest.mark.slow(reason="training processes killed with SIGKILL at random moments, then resumed")
def test_kill_9_at_random_moments_then_resume_is_bit_exact(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(tiny=TINY, every=EVERY, config=CONFIG)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}

    def child(directory, out, keep_last):
        return subprocess.Popen([sys.executable, str(script), str(directory), str(out), str(tmp_path / "jax-cache"),
                                 keep_last], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    reference_dir, crash_dir = tmp_path / "reference", tmp_path / "crash"
    reference = child(reference_dir, tmp_path / "reference.npz", "all")
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    found = _checkpoint.list_checkpoints(reference_dir)
    reference_sha = {step: _checkpoint.read_meta(path)["state_sha256"] for step, path in found}
    assert sorted(reference_sha) == list(range(EVERY, TOTAL + 1, EVERY))
    period = np.median(np.diff([os.path.getmtime(path / "meta.json") for _, path in found]))

    rng, killed_at = random.Random(2024), []
    for _ in range(3):
        process = child(crash_dir, tmp_path / "crash.npz", "2")
        # Once this run has written a checkpoint of its own, a random moment within one checkpoint period.
        wait_for_checkpoint(crash_dir, newest_step(crash_dir), process)
        time.sleep(rng.uniform(0.0, period))
        process.kill()
        process.communicate()
        assert process.returncode == -9, "the run finished before the kill: raise TOTAL"
        found = _checkpoint.list_checkpoints(crash_dir)
        for step, path in found:  # whole, and the uninterrupted run's state at its step
            meta = _checkpoint.read_meta(path)
            _checkpoint.check_files(path / "state", meta["state_files"], "train state files")
            assert meta["state_sha256"] == reference_sha[step], path
        killed_at.append(found[-1][0])
        # The next run resumes from this newest one: with warnings as errors it would fail on a fallback.

    final = child(crash_dir, tmp_path / "crash.npz", "2")
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err[-3000:]
    assert killed_at == sorted(set(killed_at)) and killed_at[-1] < TOTAL, killed_at  # each run got further
    with np.load(tmp_path / "reference.npz") as expected, np.load(tmp_path / "crash.npz") as got:
        assert len(expected.files) == len(got.files) > 0
        for name in expected.files:
            np.testing.assert_array_equal(got[name], expected[name])
    last, before_last = _checkpoint.checkpoint_name(TOTAL), _checkpoint.checkpoint_name(TOTAL - EVERY)
    assert _checkpoint.read_meta(crash_dir / last)["state_sha256"] == reference_sha[TOTAL]
    # Leftovers of the killed writes and the stale lock are gone; only this run's newest two remain.
    assert sorted(os.listdir(crash_dir)) == [before_last, last]
