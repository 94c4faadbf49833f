"""Speed of one world-model update, imagination and planning, against the device's limits.

    python -m benchmarks.train_step --model dreamerv3:size12m --obs vector --batch 16 --seq 64
    python -m benchmarks.train_step --suite            # size12m/200m vector+image, TD-MPC2 5m and 48m

For each case it reports compile time, updates/s, replayed steps/s (B*T*updates/s),
peak host and device memory (``--suite`` runs each case in its own process, so
each peak is that case's), FLOPs and bytes per update from XLA's cost
analysis, and the fraction of the device's limit reached: FLOP/s against a
measured large-matmul peak, bytes/s against a measured copy bandwidth. DreamerV3
cases add imagination latency (H=15 from B states), TD-MPC2 cases MPPI planning
latency (one observation). Output: JSON lines (``--json``) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from worldloom import create_world_model
from worldloom.models.base import OptimizerSettings

SUITE = [
    dict(model="dreamerv3:size12m", obs="vector", batch=16, seq=64),
    dict(model="dreamerv3:size12m", obs="image", batch=16, seq=64),
    dict(model="dreamerv3:size200m", obs="vector", batch=16, seq=64),
    dict(model="dreamerv3:size200m", obs="image", batch=16, seq=64),
    dict(model="tdmpc2:5m", obs="vector", batch=256, seq=4),
    dict(model="tdmpc2:48m", obs="vector", batch=256, seq=4),
]


def device_peaks(device, seconds: float = 1.0) -> dict:
    """Measured matmul FLOP/s (f32 and bf16) and copy bandwidth (bytes/s) of ``device``."""
    out = {}
    size = 4096 if device.platform != "cpu" else 1024
    for name, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        a = jax.device_put(jnp.ones((size, size), dtype), device)
        matmul = jax.jit(lambda x: x @ x)
        matmul(a).block_until_ready()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            matmul(a).block_until_ready()
            count += 1
        out[f"matmul_flops_{name}"] = 2 * size**3 * count / (time.perf_counter() - start)
    elements = (256 if device.platform != "cpu" else 32) * 2**20
    x = jax.device_put(jnp.ones((elements,), jnp.float32), device)
    add = jax.jit(lambda v: v + 1.0)
    add(x).block_until_ready()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        add(x).block_until_ready()
        count += 1
    out["copy_bytes_per_s"] = 2 * 4 * elements * count / (time.perf_counter() - start)
    return out


def _batch(model, batch: int, seq: int, rng: np.random.Generator) -> dict:
    cfg = model.config
    if len(cfg.obs_shape) == 3:
        obs = rng.integers(0, 255, (batch, seq, *cfg.obs_shape), dtype=np.uint8)
    else:
        obs = rng.normal(size=(batch, seq, *cfg.obs_shape)).astype(np.float32)
    is_first = np.zeros((batch, seq), bool)
    is_first[:, 0] = True
    return {"obs": obs, "actions": rng.uniform(-1, 1, (batch, seq, cfg.action_dim)).astype(np.float32),
            "rewards": rng.normal(size=(batch, seq)).astype(np.float32),
            "continues": np.ones((batch, seq), np.float32), "is_first": is_first}


def _cost(compiled) -> tuple[float, float]:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def _timed(fn, repeats: int) -> float:
    out = fn()
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def run_case(model: str, obs: str, batch: int, seq: int, updates: int = 10, compute_dtype: str = "float32",
             peaks: dict | None = None, device: str = "auto") -> dict:
    """Benchmark one update configuration; returns a JSON-able dict."""
    family = model.split(":")[0]
    shape = (64, 64, 3) if obs == "image" else ((39,) if family == "dreamerv3" else (24,))
    action_dim = 6
    if family != "dreamerv3":
        compute_dtype = "float32"  # TD-MPC2 computes in float32 (its config has no compute_dtype)
    overrides = {"compute_dtype": compute_dtype} if family == "dreamerv3" else {}
    handle = create_world_model(model, obs_shape=shape, action_dim=action_dim, device=device, **overrides)
    rng = np.random.default_rng(0)
    data = jax.device_put(_batch(handle, batch, seq, rng), handle.device)
    update = handle.make_update(OptimizerSettings())
    state = update.init(handle.params)
    step = jax.jit(update.step, donate_argnums=0)
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    compiled = step.lower(state, data, key).compile()
    compile_s = time.perf_counter() - start
    flops, bytes_accessed = _cost(compiled)
    state, metrics = compiled(state, data, key)
    keys = list(jax.random.split(key, updates))  # made before the clock starts: no op of theirs is timed
    jax.block_until_ready((metrics, keys))
    start = time.perf_counter()
    for step_key in keys:
        state, metrics = compiled(state, data, step_key)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / updates
    result = {
        "model": model, "obs": obs, "obs_shape": list(shape), "batch": batch, "seq": seq,
        "compute_dtype": compute_dtype, "params": handle.num_parameters(),
        "compile_s": compile_s, "update_ms": 1e3 * seconds, "updates_per_s": 1.0 / seconds,
        "replayed_steps_per_s": batch * seq / seconds, "flops_per_update": flops,
        "bytes_per_update": bytes_accessed, "loss": float(metrics["loss"]),
    }
    if family == "dreamerv3":
        handle.eval()
        start_state = handle.encode(data["obs"][:, 0])
        actions = jnp.zeros((15, batch, action_dim))
        result["imagine_h15_ms"] = 1e3 * _timed(lambda: handle.imagine(start_state, actions).rewards, 5)
    else:
        single = data["obs"][0, :1]
        handle.act(single, t0=True)
        result["mppi_plan_ms"] = 1e3 * _timed(lambda: handle.act(single, t0=False), 5)
    result["peak_host_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = handle.device.memory_stats() if hasattr(handle.device, "memory_stats") else None
    result["peak_device_mb"] = (stats or {}).get("peak_bytes_in_use", 0) / 2**20 or None
    if peaks:
        peak = peaks["matmul_flops_bf16" if compute_dtype == "bfloat16" else "matmul_flops_f32"]
        result["flops_per_s"] = flops / seconds
        result["fraction_of_matmul_peak"] = flops / seconds / peak
        result["fraction_of_bandwidth"] = bytes_accessed / seconds / peaks["copy_bytes_per_s"]
    return result


def _guarded_case(case: dict, args, peaks: dict) -> dict:
    try:
        return run_case(**case, updates=args.updates, compute_dtype=args.dtype, peaks=peaks, device=args.device)
    except Exception as err:  # noqa: BLE001 - report and go on (e.g. out of memory)
        return {**case, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}


def _case_in_own_process(case: dict, args, peaks: dict) -> dict:
    """``case`` run by a fresh process, so that its peak memory is its own (a process's peak only grows)."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "row.json")
        command = [sys.executable, "-m", "benchmarks.train_step", "--model", case["model"], "--obs", case["obs"],
                   "--batch", str(case["batch"]), "--seq", str(case["seq"]), "--updates", str(args.updates),
                   "--dtype", args.dtype, "--device", args.device, "--peaks", json.dumps(peaks), "--row-out", out]
        done = subprocess.run(command, capture_output=True, text=True)
        if os.path.exists(out):
            with open(out) as handle:
                return json.load(handle)
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return {**case, "error": f"the case's process failed: {last[:120]}"}


def machine_name(device) -> str:
    if device.platform == "cpu":
        import os

        return f"CPU: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    return f"{device.platform.upper()}: {device.device_kind}"


def markdown(rows: list[dict]) -> str:
    head = ("| model | obs | B x T | dtype | compile s | updates/s | replayed steps/s | GFLOP/update "
            "| % matmul peak | % bandwidth | imagine H15 ms | MPPI ms | peak host MB | peak device MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['obs']} | {r['batch']} x {r['seq']} | | {r['error']} |" + " |" * 9)
            continue
        frac = lambda k, r=r: f"{100 * r[k]:.1f}" if r.get(k) is not None else "-"  # noqa: E731
        opt = lambda k, f="{:.1f}", r=r: f.format(r[k]) if r.get(k) is not None else "-"  # noqa: E731
        lines.append(
            f"| {r['model']} | {r['obs']} | {r['batch']} x {r['seq']} | {r['compute_dtype']} | {r['compile_s']:.1f} "
            f"| {r['updates_per_s']:.2f} | {r['replayed_steps_per_s']:.0f} | {r['flops_per_update'] / 1e9:.1f} "
            f"| {frac('fraction_of_matmul_peak')} | {frac('fraction_of_bandwidth')} | {opt('imagine_h15_ms')} "
            f"| {opt('mppi_plan_ms')} | {r['peak_host_mb']:.0f} | {opt('peak_device_mb', '{:.0f}')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dreamerv3:size12m")
    parser.add_argument("--obs", choices=["vector", "image"], default="vector")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--suite", action="store_true", help="run the cases of docs/performance.md")
    parser.add_argument("--only", default="", help="with --suite: comma-separated model names to keep")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="append JSON lines to this file")
    parser.add_argument("--peaks", help=argparse.SUPPRESS)  # a suite's child process: the parent's peaks
    parser.add_argument("--row-out", help=argparse.SUPPRESS)  # ... and where it writes its row
    args = parser.parse_args(argv)

    from worldloom.core.devices import resolve_device

    device = resolve_device(args.device)
    if args.row_out:  # one case of a suite, in its own process
        row = _guarded_case(dict(model=args.model, obs=args.obs, batch=args.batch, seq=args.seq), args,
                            json.loads(args.peaks))
        with open(args.row_out, "w") as handle:
            json.dump(row, handle)
        return 0
    peaks = device_peaks(device)
    header = {"machine": machine_name(device), "jax": jax.__version__, "device": str(device), **peaks}
    print(json.dumps(header))
    cases = SUITE if args.suite else [dict(model=args.model, obs=args.obs, batch=args.batch, seq=args.seq)]
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c["model"] in keep]
    rows = []
    for case in cases:
        row = _case_in_own_process(case, args, peaks) if args.suite else _guarded_case(case, args, peaks)
        row["machine"] = header["machine"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps({**header, **row}) + "\n")
    print(f"\n{header['machine']}; matmul peak {peaks['matmul_flops_f32'] / 1e9:.0f} GFLOP/s f32, "
          f"{peaks['matmul_flops_bf16'] / 1e9:.0f} GFLOP/s bf16; copy {peaks['copy_bytes_per_s'] / 1e9:.1f} GB/s\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
