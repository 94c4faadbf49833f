import ctypes.util
import gc
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
# Programs compile at LLVM optimisation level 0 in the tests (and in the processes they start, which inherit
# the variable). Compilation is most of the suite's time, and level 0 takes about 40% less of it for a
# DreamerV3 update (7.1 s -> 4.3 s); the tests' tiny models run as fast or faster than at level 3. Results
# can differ from level 3 in the last bits, never in what a test asserts: every comparison in the suite is
# between programs compiled here. tests/test_nn.py compiles at the default level where the level matters.
# Not used: --xla_cpu_use_fusion_emitters=false, which halves compilation again (a tiny DreamerV3 agent update:
# 12.3 s -> 6.5 s), but at level 0 computes the gradient of a max over two axes wrong (-inf and NaN in
# test_dreamerv3.py's half-resolution test; right at levels 1 to 3, where it saves nothing).
TEST_OPT_LEVEL = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_OPT_LEVEL}".strip()
# One thread per process for XLA's Eigen, numpy's BLAS and torch's OpenMP. The suite runs one pytest worker per
# core, and the processes some tests start come on top: more threads than cores only contend for them. Measured
# interleaved on four model test files with 2 workers: 115 -> 110 s and 118 -> 112 s, and 5% less CPU time.
if "xla_cpu_multi_thread_eigen" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_cpu_multi_thread_eigen=false"
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")
# XLA's compiler allocates and frees millions of small objects, and glibc's malloc takes a tenth of its time.
# Where tcmalloc is installed (Debian and Ubuntu: libtcmalloc-minimal4; .ci/run installs it), the processes this
# session starts (its xdist workers and their subprocesses) load it: a DreamerV3 agent update compiles about 20%
# faster (6.1 s -> 4.9 s, three rounds interleaved). LD_PRELOAD set beforehand, even empty, is left as it is.
_TCMALLOC = ctypes.util.find_library("tcmalloc_minimal")
if _TCMALLOC and "LD_PRELOAD" not in os.environ:
    os.environ["LD_PRELOAD"] = _TCMALLOC
    os.environ.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))  # no notes on stderr

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# A test that takes longer than this carries ``@pytest.mark.slow(reason="...")``: the budget stays visible.
SLOW_SECONDS = 20.0


# The files that take longest, longest first (worker-seconds in a full run). With ``--dist loadfile`` each file runs on
# one worker, and the workers take files in this order (a worker takes its next file when two tests of its current
# one are left): the long files start first instead of last, and the files left at the end, unlisted here, take a few
# seconds each, so neither worker waits long for the other to finish.
LONGEST_FIRST = ["test_distributed.py", "test_suites.py", "test_dreamerv3.py", "test_nonfinite_guard.py", "test_cli.py",
                 "test_docs.py", "test_original_docs.py", "test_agent_loop.py", "test_tdmpc2.py", "test_scale.py",
                 "test_torch_compat.py", "test_protocol.py", "test_nn.py", "test_run_loop.py",
                 "test_worldloom_source.py", "test_crash_resume.py", "test_spec_docs.py", "test_agent_fidelity.py",
                 "test_gpu_anchor.py", "test_trainer.py", "test_replay_storage.py", "test_checkpoint_safety.py",
                 "test_videos_plots.py", "test_validation.py", "test_torch_spec.py", "test_persistence.py",
                 "test_dreamer_agent.py", "test_factory.py", "test_config_errors.py"]


def pytest_configure(config):
    if config.option.durations is None:  # every run prints its 15 slowest tests
        config.option.durations = 15
        config.option.durations_min = 0.0
    if hasattr(config.option, "loadscopereorder"):  # xdist: keep the order below, not the most tests first
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


def pytest_collection_finish(session):
    # Tracing and lowering make millions of short-lived Python objects, and each full collection walks every
    # object the imports (JAX, Flax, torch) left behind. Frozen after collection, those are never walked again,
    # and young objects are collected 70 times less often: 2-4% less time on the model test files (measured
    # interleaved on tests/test_tdmpc2.py and tests/test_protocol.py: 83 -> 81 s and 86 -> 82 s).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)


@pytest.fixture(scope="module", autouse=True)
def _collect_after_each_module():
    """Free the programs of a test file's models when the file is done.

    A model's jitted programs reach the model back through its bound methods, so the compiled executables of a
    file's models go only when the cycle collector runs, which the thresholds above make rare. Each executable
    holds thousands of memory mappings on the CPU (one per compiled kernel), and a process may hold 65,530:
    one worker of the suite reached 50,700 without this collection.
    """
    yield
    gc.collect()


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE is not None and not hasattr(session.config, "workerinput"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


_OVER_BUDGET: list[tuple[str, float]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.user_properties.append(("slow_reason", _slow_reason(item)))


def _slow_reason(item) -> str | None:
    marker = item.get_closest_marker("slow")
    if marker is None:
        return None
    return marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")


def pytest_runtest_logreport(report):
    if report.when != "call" or report.duration <= SLOW_SECONDS:
        return
    if not dict(report.user_properties).get("slow_reason"):
        _OVER_BUDGET.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter):
    if _OVER_BUDGET:
        terminalreporter.section(f"tests over {SLOW_SECONDS:.0f} s without a slow marker and its reason")
        for nodeid, seconds in sorted(_OVER_BUDGET, key=lambda item: -item[1]):
            terminalreporter.write_line(f"{seconds:7.1f}s {nodeid}")


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
