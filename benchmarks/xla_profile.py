"""Where an update's time goes: XLA op times from a ``jax.profiler`` trace, summed by model piece.

    python -m benchmarks.xla_profile dreamer-agent:size1m
    python -m benchmarks.xla_profile tdmpc2-update:5m --top 15

The workload names are :mod:`benchmarks.compare`'s. The compiled update runs
``--calls`` times under the profiler; every XLA op's time is attributed to the
piece its HLO metadata names (the Flax module path: ``rssm.core``, ``Critic``,
``Actor``, the encoder, ...), split into forward and backward (``transpose``
in the op name) and into inside a ``lax.scan`` body or not. Prints the pieces
with their share of the total op time and the slowest single ops.
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
from pathlib import Path

import jax

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


def _names_a_piece(op_name: str) -> bool:
    return not piece_of(op_name).split(" ", 1)[1].startswith("other")


def op_metadata(hlo: str) -> dict[str, tuple[str, str]]:
    """``op -> (shape, op_name)``; a fusion is named by the first op inside it that names a piece."""
    bodies = {m.group(1): m.group(2) for m in re.finditer(r"^%([\w.\-]+) .*?\{\n(.*?)^\}", hlo, re.M | re.S)}
    metadata = {}
    for m in _OP.finditer(hlo):
        op, shape, kind = m.groups()
        if kind in _CONTAINERS:
            continue
        named = _OP_NAME.search(m.group(0))
        op_name = named.group(1) if named else ""
        called = re.search(r"calls=%([\w.\-]+)", m.group(0))
        if called and not _names_a_piece(op_name):
            inner = [n for n in re.findall(r'op_name="([^"]*)"', bodies.get(called.group(1), "")) if _names_a_piece(n)]
            op_name = inner[0] if inner else op_name
        metadata.setdefault(op, (shape, op_name))
    return metadata


def op_times(call, calls: int) -> dict[str, float]:
    """Milliseconds per call of each XLA op (trace event name) over ``calls`` calls of ``call``."""
    with tempfile.TemporaryDirectory(prefix="worldloom-profile-") as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(calls):
            call()
        jax.profiler.stop_trace()
        path = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
        with gzip.open(path) as handle:
            events = json.load(handle)["traceEvents"]
    times = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            times[event["name"]] += event["dur"] / 1e3 / calls
    return times


def breakdown(work: str, calls: int = 3) -> tuple[dict, list, float]:
    """``(ms per piece, slowest ops [(ms, op, shape, op_name)], total op ms)`` of one compiled ``work``."""
    built = Work(work)
    if not hasattr(built, "compiled"):
        raise SystemExit(f"{work}: only compiled updates are profiled (dreamer-agent, dreamer-wm, tdmpc2-update)")
    metadata = op_metadata(built.compiled.as_text())
    times = op_times(built.call, calls)
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
    args = parser.parse_args(argv)
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
