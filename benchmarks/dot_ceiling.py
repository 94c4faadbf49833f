"""How fast an update's matrix multiplies can go here: each one in the update against itself alone.

    python -m benchmarks.dot_ceiling dreamer-agent:size1m
    python -m benchmarks.dot_ceiling tdmpc2-update:5m --against 1.254

On the CPU, profiles the compiled update (as :mod:`benchmarks.xla_profile`) and finds every
XLA op that computes a ``dot`` (a dot, or a fusion around one). Each distinct
dot (its operand shapes and dimension numbers) is then compiled alone, run
in a ``lax.scan`` over distinct inputs, and profiled the same way: its op
time per execution, as the update's dots are counted. Prints, per
model piece, the op time the dots take in the update, the time the same
number of executions takes alone, and their FLOP rate, and a summary:

- the dots alone: what the update would take if nothing but its matrix
  multiplies ran, each as fast as it runs by itself on this machine;
- the same FLOP at the machine's measured matmul peak (f32, 1024 x 1024);
- the rest of the op time (elementwise work, reductions, copies).

Each is also given as a fraction of the update's own wall time, timed in the
same run, so that a target stated as a fraction of the update's time can be
set against them.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare_worker import Work  # noqa: E402
from train_step import device_peaks  # noqa: E402
from xla_profile import op_metadata, piece_of  # noqa: E402

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[\d,]*\})? ([\w\-]+)\((.*?)\)(.*)$", re.M)
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*?\{\n(.*?)^\}", re.M | re.S)
_DIMS = ("lhs_batch_dims", "rhs_batch_dims", "lhs_contracting_dims", "rhs_contracting_dims")


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    dtype, _, dims = text.partition("[")
    dims = dims.split("]")[0]
    return dtype, tuple(int(d) for d in dims.split(",") if d)


def dots_by_op(hlo: str) -> dict[str, list[dict]]:
    """``op -> [dot, ...]``: the dots each op computes (a dot itself, or those inside the fusion it calls).

    A dot is ``{"lhs", "rhs", "dtype", "dims", "flops"}``: operand shapes, dtype, dimension numbers, FLOP.
    """
    computations = {m.group(1): _INSTRUCTION.findall(m.group(2)) for m in _COMPUTATION.finditer(hlo)}
    shapes = {name: _shape(shape) for body in computations.values() for name, shape, *_ in body
              if not shape.startswith("(")}

    def dot_of(shape: str, operands: str, attributes: str) -> dict:
        lhs_name, rhs_name = re.findall(r"%([\w.\-]+)", operands)[:2]
        (dtype, lhs), (_, rhs) = shapes[lhs_name], shapes[rhs_name]
        dims = {key: tuple(int(d) for d in found.group(1).split(",") if d) if found else ()
                for key in _DIMS for found in [re.search(rf"{key}={{([\d,]*)}}", attributes)]}
        contracted = int(np.prod([lhs[d] for d in dims["lhs_contracting_dims"]], dtype=np.int64))
        flops = 2 * int(np.prod(_shape(shape)[1], dtype=np.int64)) * contracted
        return {"lhs": lhs, "rhs": rhs, "dtype": dtype, "dims": dims, "flops": flops}

    inside = {name: [dot_of(shape, operands, attributes) for _, shape, kind, operands, attributes in body
                     if kind == "dot"] for name, body in computations.items()}
    fused = {re.search(r"calls=%([\w.\-]+)", attributes).group(1) for body in computations.values()
             for _, _, kind, _, attributes in body if kind == "fusion" and "calls=%" in attributes}
    by_op = {}
    for computation, body in computations.items():
        if computation in fused:  # runs as part of its fusion op, not as an op of its own
            continue
        for name, shape, kind, operands, attributes in body:
            called = re.search(r"calls=%([\w.\-]+)", attributes)
            if kind == "dot":
                by_op[name] = [dot_of(shape, operands, attributes)]
            elif kind == "fusion" and called and inside.get(called.group(1)):
                by_op[name] = inside[called.group(1)]
    return by_op


def _alone_seconds(dot: dict, repeats: int = 3) -> float:
    """Seconds of op time per execution of ``dot`` alone, in a scan over distinct inputs (profiled as the update)."""
    dims = ((dot["dims"]["lhs_contracting_dims"], dot["dims"]["rhs_contracting_dims"]),
            (dot["dims"]["lhs_batch_dims"], dot["dims"]["rhs_batch_dims"]))
    dtype = jnp.dtype({"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64"}.get(dot["dtype"],
                                                                                                     dot["dtype"]))
    steps = int(np.clip(2e8 / max(dot["flops"], 1), 4, 256))
    key = jax.random.PRNGKey(0)
    lhs = jax.random.normal(key, (steps, *dot["lhs"]), dtype)
    rhs = jax.random.normal(jax.random.fold_in(key, 1), dot["rhs"], dtype)
    scan = jax.jit(lambda lhs, rhs: jax.lax.scan(lambda _, x: (None, jax.lax.dot_general(x, rhs, dims)), None, lhs)[1])
    compiled = scan.lower(lhs, rhs).compile()
    dot_ops = set(dots_by_op(compiled.as_text()))
    compiled(lhs, rhs).block_until_ready()
    with _trace_events(lambda: compiled(lhs, rhs).block_until_ready(), repeats) as events:
        ms = sum(duration for name, duration in events if name in dot_ops)
    return ms / 1e3 / (repeats * steps)


def ceiling(work: str, calls: int = 3) -> dict:
    """Per piece and in total: the dots' op time in the update, alone, their FLOP, and the other ops' time (ms).

    CPU only: on a GPU, XLA calls cuBLAS for most dots (custom calls this parser does not read).
    """
    if jax.default_backend() != "cpu":
        raise SystemExit(f"dot_ceiling reads the CPU backend's dots; this is {jax.default_backend()}")
    built = Work(work)
    hlo = built.compiled.as_text()
    metadata, by_op = op_metadata(hlo), dots_by_op(hlo)
    times, counts = collections.Counter(), collections.Counter()
    with _trace_events(built.call, calls) as events:
        for name, ms in events:
            times[name] += ms / calls
            counts[name] += 1 / calls
    alone_cache: dict = {}
    pieces = collections.defaultdict(lambda: collections.Counter())
    other = 0.0
    for op, ms in times.items():
        if op not in metadata:
            continue
        piece = piece_of(metadata[op][1])
        dots = by_op.get(op)
        if not dots:
            other += ms
            continue
        alone = 0.0
        for dot in dots:
            signature = (dot["lhs"], dot["rhs"], dot["dtype"], tuple(dot["dims"].items()))
            if signature not in alone_cache:
                alone_cache[signature] = _alone_seconds(dot)
            alone += alone_cache[signature] * 1e3 * counts[op]
            pieces[piece]["gflop"] += dot["flops"] * counts[op] / 1e9
        pieces[piece]["update_ms"] += ms
        pieces[piece]["alone_ms"] += alone
    walls = []
    for _ in range(max(calls, 3)):
        start = time.perf_counter()
        built.call()
        walls.append(time.perf_counter() - start)
    return {"pieces": {name: dict(values) for name, values in pieces.items()}, "other_ms": other,
            "distinct_dots": len(alone_cache), "wall_ms": 1e3 * float(np.median(walls))}


class _trace_events:
    """Context manager yielding ``(op name, ms)`` of every XLA op event of ``calls`` calls."""

    def __init__(self, call, calls: int):
        self.call, self.calls = call, calls

    def __enter__(self):
        import glob
        import gzip
        import json
        import tempfile

        self.tmp = tempfile.TemporaryDirectory(prefix="worldloom-profile-")
        jax.profiler.start_trace(self.tmp.name)
        for _ in range(self.calls):
            self.call()
        jax.profiler.stop_trace()
        path = sorted(glob.glob(f"{self.tmp.name}/**/*.trace.json.gz", recursive=True))[-1]
        with gzip.open(path) as handle:
            events = json.load(handle)["traceEvents"]
        return [(e["name"], e["dur"] / 1e3) for e in events if e.get("ph") == "X"]

    def __exit__(self, *exc):
        self.tmp.cleanup()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", help="a compiled update of benchmarks.compare, e.g. dreamer-agent:size1m")
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args(argv)
    result = ceiling(args.work, args.calls)
    peak = device_peaks(jax.devices()[0], 1.0)["matmul_flops_f32"]
    rows = sorted(result["pieces"].items(), key=lambda item: -item[1]["update_ms"])
    print(f"{args.work}: {result['distinct_dots']} distinct dots; matmul peak {peak / 1e9:.0f} GFLOP/s\n")
    print("| piece | GFLOP | dots in the update ms | alone ms | alone GFLOP/s | % of peak alone |")
    print("|---|---|---|---|---|---|")
    for name, row in rows:
        rate = row["gflop"] / max(row["alone_ms"], 1e-9) * 1e3
        print(f"| {name} | {row['gflop']:.2f} | {row['update_ms']:.0f} | {row['alone_ms']:.0f} | {rate:.0f} | "
              f"{100 * rate * 1e9 / peak:.0f}% |")
    update = sum(row["update_ms"] for _, row in rows)
    alone = sum(row["alone_ms"] for _, row in rows)
    gflop = sum(row["gflop"] for _, row in rows)
    wall, peak_ms = result["wall_ms"], gflop / peak * 1e12
    print(f"\nthe update: {wall:.0f} ms a call (wall time, median); its dots {gflop:.1f} GFLOP")
    print("| | ms | of the update's wall time |\n|---|---|---|")
    for name, ms in (("dots, op time in the update", update), ("dots alone", alone),
                     ("dots at the matmul peak", peak_ms), ("other ops, op time", result["other_ms"])):
        print(f"| {name} | {ms:.0f} | {ms / wall:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
