"""How fast an update's matrix multiplies can go here: each one in the update against itself alone.

    python -m benchmarks.dot_ceiling dreamer-agent:size1m
    python -m benchmarks.dot_ceiling tdmpc2-update:5m --against 1.254

Profiles the compiled update (as :mod:`benchmarks.xla_profile`) and finds every
XLA op that computes a ``dot`` (a dot, or a fusion around one). Each distinct
dot (its operand shapes and dimension numbers) is then compiled alone and
timed in a ``lax.scan`` over distinct inputs, so that the per-execution
overheads of a loop body are included as they are in the update. Prints, per
model piece, the op time the dots take in the update, the time the same
number of executions takes alone, and their FLOP rate, and a summary:

- the dots alone: what the update would take if nothing but its matrix
  multiplies ran, each as fast as it runs by itself on this machine;
- the same FLOP at the machine's measured matmul peak (f32, 1024 x 1024);
- the rest of the op time (elementwise work, reductions, copies).

With ``--against SECONDS`` (an earlier revision's update time) it prints the
fraction of that time the dots alone already take.
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
    dims = dims.rstrip("]")
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


def _alone_seconds(dot: dict, repeats: int = 5) -> float:
    """Seconds per execution of ``dot`` alone: a scan over distinct inputs, median of ``repeats`` timings."""
    dims = ((dot["dims"]["lhs_contracting_dims"], dot["dims"]["rhs_contracting_dims"]),
            (dot["dims"]["lhs_batch_dims"], dot["dims"]["rhs_batch_dims"]))
    dtype = {"f32": jnp.float32, "bf16": jnp.bfloat16}[dot["dtype"]]
    steps = int(np.clip(2e8 / max(dot["flops"], 1), 4, 256))
    key = jax.random.PRNGKey(0)
    lhs = jax.random.normal(key, (steps, *dot["lhs"]), dtype)
    rhs = jax.random.normal(jax.random.fold_in(key, 1), dot["rhs"], dtype)

    @jax.jit
    def run(lhs, rhs):
        return jax.lax.scan(lambda _, x: (None, jax.lax.dot_general(x, rhs, dims)), None, lhs)[1]

    run(lhs, rhs).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(lhs, rhs).block_until_ready()
        seconds.append((time.perf_counter() - start) / steps)
    return float(np.median(seconds))


def ceiling(work: str, calls: int = 3) -> dict:
    """Per piece and in total: the dots' op time in the update, alone, their FLOP, and the other ops' time (ms)."""
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
    return {"pieces": {name: dict(values) for name, values in pieces.items()}, "other_ms": other,
            "distinct_dots": len(alone_cache)}


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
    parser.add_argument("--against", type=float, help="an earlier revision's update time in seconds")
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
    print(f"\ndots: {gflop:.1f} GFLOP, {update:.0f} ms in the update, {alone:.0f} ms alone, "
          f"{gflop / peak * 1e12:.0f} ms at the matmul peak; other ops {result['other_ms']:.0f} ms")
    if args.against:
        print(f"the dots alone are {alone / 1e3 / args.against:.2f}x of {args.against} s; "
              f"at the peak {gflop / peak * 1e9 / args.against:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
