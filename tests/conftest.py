import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the test session, its xdist workers and the subprocesses they start:
# many tests compile the same tiny models' programs, which then compile once. The session that made it
# removes it at the end.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="worldloom-tests-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE is not None and not hasattr(session.config, "workerinput"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def stream_batch():
    """``make(agent, rng, batch_size, length, terminal_at=None)``: a DreamerAgent update batch in stream layout.

    Windows of ``length + 1`` rows (row 0 is the context) starting a new episode
    at row 0, with random observations, one-hot actions, rewards and a zero
    stored latent.
    """

    def make(agent, rng, batch_size=2, length=6, terminal_at=None):
        cfg = agent.world_model.config
        rows = (batch_size, length + 1)
        batch = {
            "obs": rng.normal(size=(*rows, *cfg.obs_shape)).astype(np.float32),
            "actions": np.eye(cfg.action_dim, dtype=np.float32)[rng.integers(0, cfg.action_dim, rows)],
            "rewards": rng.normal(size=rows).astype(np.float32),
            "is_first": np.zeros(rows, bool),
            "is_last": np.zeros(rows, bool),
            "is_terminal": np.zeros(rows, bool),
            "deter": np.zeros((batch_size, cfg.deter), np.float32),
            "stoch": np.zeros((batch_size, cfg.stoch_size), np.float32),
        }
        batch["is_first"][:, 0] = True
        if terminal_at is not None:
            batch["is_last"][:, terminal_at] = batch["is_terminal"][:, terminal_at] = True
        return batch

    return make
