"""The measuring tools of ``benchmarks/``: the matmul census of a compiled program."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import xla_profile  # noqa: E402


def test_the_matmul_census_finds_each_dot_with_its_shapes_and_runs_per_call():
    """Dots inside a scan body count once per step; the one after it once per call."""

    def program(x, w, v):
        def step(h, _):
            return jnp.tanh(h @ w), None

        h, _ = jax.lax.scan(step, x, None, length=3)
        return h @ v

    args = (jnp.ones((64, 48)), jnp.full((48, 48), 0.01), jnp.ones((48, 40)))
    compiled = jax.jit(program).lower(*args).compile()
    ops = xla_profile.program_dots(compiled.as_text())
    found = {(lhs, rhs): op for op, dots in ops.items() for _, lhs, rhs, _ in dots}
    assert set(found) == {((64, 48), (48, 48)), ((64, 48), (48, 40))}
    dims = next(d for dots in ops.values() for d in dots if d[2] == (48, 40))
    assert dims[0] == "f32" and xla_profile._dot_flops(dims) == 2 * 64 * 48 * 40

    def call():
        jax.block_until_ready(compiled(*args))

    call()
    _, runs = xla_profile.op_times(call, 2)
    assert runs[found[((64, 48), (48, 48))]] == 3
    assert runs[found[((64, 48), (48, 40))]] == 1
    np.testing.assert_allclose(compiled(*args), program(*args), rtol=1e-5)


def test_the_replay_benchmark_fills_its_disk_replay_past_the_ram_one_and_samples_all_of_it(tmp_path, capsys):
    """benchmarks.replay: windows/s of RAM and disk replays as ratios; --beyond-ram-gib fills the disk one alone."""
    from benchmarks.replay import main as replay_benchmark
    from benchmarks.replay import row_bytes

    result = replay_benchmark(["--capacity-gib", "0.05", "--fill-gib", "0.01", "--beyond-ram-gib", "0.02",
                               "--seconds", "0.05", "--rounds", "1", "--directory", str(tmp_path)])
    assert set(result["ratio_to_ram"]) == {"ram", "disk (page cache)", "disk (cold at round start)"}
    assert result["ratio_to_ram"]["ram"] == 1.0 and all(v > 0 for v in result["windows_per_second"].values())
    beyond = result["beyond_ram"]
    assert beyond["filled_rows"] == int(0.02 * 2**30) // row_bytes() > result["filled_rows"]
    assert beyond["windows_per_second_cold"] > 0 and beyond["files_on_disk"] >= beyond["filled_bytes"] * 0.9
    assert "sampled cold from all" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # the benchmark's files are removed
