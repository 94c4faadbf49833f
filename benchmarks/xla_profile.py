"""Where an update's time goes: XLA op times from a ``jax.profiler`` trace, summed by model piece.

    python -m benchmarks.xla_profile dreamer-agent:size1m
    python -m benchmarks.xla_profile tdmpc2-update:5m --top 15

The workload names are :mod:`benchmarks.compare`'s. The compiled update runs
``--calls`` times under the profiler; every XLA op's time is attributed to the
piece its HLO metadata names (the Flax module path: ``rssm.core``, ``Critic``,
``Actor``, the encoder, ...), split into forward and backward (``transpose``
in the op name) and into inside a ``lax.scan`` body or not. Prints the pieces
with their share of the total op time and the slowest single ops.

``--matmul-floor`` instead times every matrix product the program runs
alone: each ``dot`` of the optimised HLO (inside fusions and loop bodies too),
at its operand shapes, dimension numbers and dtype, as one jitted
``lax.dot_general`` on its own, times how often the profiled call ran it. The
sum is what the program's matmuls cost at their own shapes on this machine,
with nothing else around them (operands in the default layout), set beside
the program's median time in the same run (XLA's CPU programs, where
matmuls are ``dot`` ops; on GPUs they are library calls). It also works for
``tdmpc2-plan``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare_worker import Work  # noqa: E402

PIECES = ("Critic", "Actor", "reward", "continue", "rssm.core", "rssm.prior", "rssm.posterior", "encoder",
          "decoder", "_gumbel", "log_softmax", "percentile", "dynamics", "Qs", "TDMPC2Networks.pi",
          "termination", "laprop", "adam")
_OP = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\(.*$", re.M)  # shape: one array or a tuple
# Ops that hold others: their trace events span their bodies' ops, which are counted themselves.
_CONTAINERS = ("while", "conditional", "call")
_OP_NAME = re.compile(r'metadata=\{op_name="([^"]*)"')


def piece_of(op_name: str) -> str:
    direction = "backward" if "transpose(" in op_name else "forward"
    where = " (scan)" if "/while/" in op_name else ""
    found = next((p for p in PIECES if p in op_name), "other")
    return f"{direction} {found}{where}"


_CALLS = re.compile(r"calls=%([\w.\-]+)")


def _computations(hlo: str) -> dict[str, str]:
    """``computation name -> its body`` (fusion and loop bodies; not the entry computation)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^%([\w.\-]+) .*?\{\n(.*?)^\}", hlo, re.M | re.S)}


def _names_a_piece(op_name: str) -> bool:
    return not piece_of(op_name).split(" ", 1)[1].startswith("other")


def op_metadata(hlo: str) -> dict[str, tuple[str, str]]:
    """``op -> (shape, op_name)``; a fusion is named by the first op inside it that names a piece."""
    bodies = _computations(hlo)
    metadata = {}
    for m in _OP.finditer(hlo):
        op, shape, kind = m.groups()
        if kind in _CONTAINERS:
            continue
        named = _OP_NAME.search(m.group(0))
        op_name = named.group(1) if named else ""
        called = _CALLS.search(m.group(0))
        if called and not _names_a_piece(op_name):
            inner = [n for n in re.findall(r'op_name="([^"]*)"', bodies.get(called.group(1), "")) if _names_a_piece(n)]
            op_name = inner[0] if inner else op_name
        metadata.setdefault(op, (shape, op_name))
    return metadata


def op_times(call, calls: int) -> tuple[dict[str, float], dict[str, float]]:
    """``(milliseconds, runs)`` per call of each XLA op (trace event name) over ``calls`` calls of ``call``."""
    with tempfile.TemporaryDirectory(prefix="worldloom-profile-") as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(calls):
            call()
        jax.profiler.stop_trace()
        path = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
        with gzip.open(path) as handle:
            events = json.load(handle)["traceEvents"]
    times, runs = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            times[event["name"]] += event["dur"] / 1e3 / calls
            runs[event["name"]] += 1 / calls
    return times, runs


_SHAPE = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$", re.M)
_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64", "s32": "int32"}


def _dims(line: str, key: str) -> tuple[int, ...]:
    found = re.search(key + r"=\{([0-9,]*)\}", line)
    return tuple(int(d) for d in found.group(1).split(",") if d) if found else ()


def program_dots(hlo: str) -> dict[str, list[tuple]]:
    """``traced op -> [dot, ...]`` with ``dot = (dtype, lhs shape, rhs shape, dimension numbers)``.

    An op is a ``dot`` itself or a fusion whose computation holds dots.
    """
    shapes, lines = {}, {}
    for m in _INSTRUCTION.finditer(hlo):
        name, shape, _, _ = m.groups()
        array = _SHAPE.match(shape)
        if array:
            shapes[name] = (array.group(1), tuple(int(d) for d in array.group(2).split(",") if d))
        lines[name] = m.group(0)
    for m in re.finditer(r"^\s*%?([\w.\-]+) \(([^)]*)\) ->", hlo, re.M):  # parameters in signatures
        for param in re.finditer(r"([\w.\-]+): ([a-z]+[0-9]*)\[([0-9,]*)\]", m.group(2)):
            shapes.setdefault(param.group(1), (param.group(2), tuple(int(d) for d in param.group(3).split(",") if d)))
    bodies = _computations(hlo)

    def dot_of(line: str):
        operands = re.findall(r"%([\w.\-]+)", line.split(" dot(", 1)[1].split(")", 1)[0])
        (dtype, lhs), (_, rhs) = shapes[operands[0]], shapes[operands[1]]
        dims = ((_dims(line, "lhs_contracting_dims"), _dims(line, "rhs_contracting_dims")),
                (_dims(line, "lhs_batch_dims"), _dims(line, "rhs_batch_dims")))
        return dtype, lhs, rhs, dims

    def dots_in(computation: str, depth: int = 0) -> list:
        found = []
        for line in bodies.get(computation, "").splitlines():
            if " dot(" in line:
                found.append(dot_of(line))
            elif depth < 3:
                for called in _CALLS.findall(line):
                    found.extend(dots_in(called, depth + 1))
        return found

    ops = {}
    for name, line in lines.items():
        if " dot(" in line:
            ops[name] = [dot_of(line)]
        elif " fusion(" in line:
            called = _CALLS.search(line)
            inner = dots_in(called.group(1)) if called else []
            if inner:
                ops[name] = inner
    return ops


def _time_dot(dot: tuple, seconds: float = 0.15) -> float:
    """Median seconds of one jitted ``dot_general`` of these shapes, alone."""
    dtype, lhs, rhs, dims = dot
    dtype = jnp.dtype(_DTYPES.get(dtype, "float32"))
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal(lhs, np.float32), dtype)
    b = jnp.asarray(rng.standard_normal(rhs, np.float32), dtype)
    fn = jax.jit(lambda x, y: jax.lax.dot_general(x, y, dims))
    fn(a, b).block_until_ready()
    times, start = [], time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < seconds and len(times) < 200):
        begin = time.perf_counter()
        fn(a, b).block_until_ready()
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


def _dot_flops(dot: tuple) -> float:
    """``2 x`` output size ``x`` contracted size: batch and free dims of both sides, contracted dims once."""
    _, lhs, rhs, ((lhs_contract, rhs_contract), (_, rhs_batch)) = dot
    contracted = float(np.prod([lhs[d] for d in lhs_contract]))
    out = np.prod([d for i, d in enumerate(lhs) if i not in lhs_contract])
    out *= np.prod([d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch])
    return 2.0 * float(out) * contracted


def matmul_floor(work: str, calls: int = 3) -> dict:
    """The program's matmuls timed alone at their shapes, against the program's own median time."""
    built = Work(work)
    hlo = built.hlo_text()
    if not hlo:
        raise SystemExit(f"{work}: no HLO text for this workload")
    ops = program_dots(hlo)
    if not ops:
        raise SystemExit(f"{work}: no dot ops in the optimised program (--matmul-floor reads XLA's CPU "
                         "programs; on GPUs the matmuls are library calls)")
    _, runs = op_times(built.call, calls)
    counts = collections.Counter()
    for op, dots in ops.items():
        for dot in dots:
            counts[dot] += runs.get(op, 0)
    seconds = {dot: _time_dot(dot) for dot in counts}
    update = []
    for _ in range(5):
        start = time.perf_counter()
        built.call()
        update.append(time.perf_counter() - start)
    alone = sum(counts[d] * seconds[d] for d in counts)
    flops = sum(counts[d] * _dot_flops(d) for d in counts)
    rows = sorted(((counts[d] * seconds[d], counts[d], d) for d in counts), reverse=True)
    return {"work": work, "matmuls_alone_s": alone, "program_s": float(np.median(update)), "matmul_gflop": flops / 1e9,
            "dots": len(counts), "rows": rows}


def breakdown(work: str, calls: int = 3) -> tuple[dict, list, float]:
    """``(ms per piece, slowest ops [(ms, op, shape, op_name)], total op ms)`` of one compiled ``work``."""
    built = Work(work)
    if not hasattr(built, "compiled"):
        raise SystemExit(f"{work}: only compiled updates are profiled (dreamer-agent, dreamer-wm, tdmpc2-update)")
    metadata = op_metadata(built.compiled.as_text())
    times, _ = op_times(built.call, calls)
    pieces, ops = collections.Counter(), []
    for op, ms in times.items():
        if op in metadata:
            shape, op_name = metadata[op]
            pieces[piece_of(op_name)] += ms
            ops.append((ms, op, shape, op_name))
    return dict(pieces), sorted(ops, reverse=True), sum(pieces.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", help="a workload of benchmarks.compare, e.g. dreamer-agent:size1m")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--top", type=int, default=10, help="slowest single ops to list")
    parser.add_argument("--matmul-floor", action="store_true",
                        help="time the program's matmuls alone at their shapes, against the program")
    args = parser.parse_args(argv)
    if args.matmul_floor:
        floor = matmul_floor(args.work, args.calls)
        share = floor["matmuls_alone_s"] / floor["program_s"]
        print(f"{args.work}: {floor['dots']} distinct matmuls, {floor['matmul_gflop']:.2f} GFLOP per call; "
              f"alone at their shapes {1e3 * floor['matmuls_alone_s']:.1f} ms "
              f"({floor['matmul_gflop'] / floor['matmuls_alone_s']:.0f} GFLOP/s); the program "
              f"{1e3 * floor['program_s']:.1f} ms (median of 5): matmuls alone are {100 * share:.0f}% of it\n")
        print("| ms alone per call | runs per call | dtype | lhs | rhs | contracting | batch |")
        print("|---|---|---|---|---|---|---|")
        for ms, runs, (dtype, lhs, rhs, dims) in floor["rows"][:args.top]:
            print(f"| {1e3 * ms:.2f} | {runs:g} | {dtype} | {list(lhs)} | {list(rhs)} | {dims[0]} | {dims[1]} |")
        return 0
    pieces, ops, total = breakdown(args.work, args.calls)
    import worldloom

    print(f"{args.work} ({Path(worldloom.__file__).parent}): {total:.0f} ms of XLA op time per update\n")
    print("| piece | ms | share |\n|---|---|---|")
    for name, ms in sorted(pieces.items(), key=lambda item: -item[1]):
        print(f"| {name} | {ms:.1f} | {100 * ms / total:.1f}% |")
    print("\nslowest ops:\n| ms | op | shape | from |\n|---|---|---|---|")
    for ms, op, shape, op_name in ops[:args.top]:
        print(f"| {ms:.1f} | {op} | {shape.split('{')[0]} | {op_name[-90:]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
