"""Time the working tree against a git revision: the same workloads, interleaved, in one run.

    python -m benchmarks.compare --against c8e6dba
    python -m benchmarks.compare --against c8e6dba --work dreamer-agent:size1m tdmpc2-plan:5m --rounds 7

The revision's ``worldloom/`` is exported with ``git archive`` into a temporary
directory; one worker process per tree imports its own ``worldloom`` and
compiles every workload once. Then, round after round, each workload is timed
in both workers in turn (the order alternating between rounds), so both sides
see the same machine load. The ratio is the working tree's median time over
the revision's: below 1 is faster; the paired ratio is the median over
rounds of each round's ratio (the two sides' medians within the round), which
a machine whose speed drifts between rounds moves less. Workloads:

- ``dreamer-agent:<preset>``: DreamerV3's full agent update (world model and
  imagination actor-critic in one program), B16 T64 H15, 39-dim observations.
- ``dreamer-wm:<preset>[:image]``: the world-model update, B16 T64
  (``image``: 64x64x3 observations).
- ``tdmpc2-update:<preset>``: TD-MPC2's update, B256, horizon 3.
- ``tdmpc2-plan:<preset>``: one MPPI plan for one observation.

Also printed: compile seconds and the temporaries XLA allocates for each
compiled update (its memory analysis), per tree, and the working tree's
FLOP/s (XLA's cost analysis over the median time) as a fraction of the f32
matmul rate ``benchmarks.train_step`` probes, timed right after the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_compare_worker.py")
DEFAULT_WORK = ["dreamer-agent:size1m", "dreamer-agent:size12m", "tdmpc2-update:5m", "tdmpc2-plan:5m",
                "dreamer-wm:size1m:image"]


class Worker:
    """A worker process for one source tree, answering one JSON line per command.

    ``tree`` becomes the process's ``PYTHONPATH`` (one path, or several joined
    by ``os.pathsep``); ``script`` is the worker it runs (``_compare_worker.py``).
    """

    def __init__(self, label: str, tree: Path | str, script: Path = WORKER):
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.label = label
        self.process = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=tempfile.gettempdir())

    def ask(self, **command) -> dict:
        self.send(**command)
        return self.receive(command)

    def send(self, **command) -> None:
        """Hand the worker a command without waiting (several workers can then work at once)."""
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def receive(self, command=None) -> dict:
        """The worker's answer to the command sent last."""
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.label} worker exited (code {self.process.wait()}) on {command}")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def export_revision(rev: str, into: Path) -> str:
    """Write ``rev``'s ``worldloom/`` under ``into``; returns the full commit id."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit, "worldloom"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return commit


def compare(rev: str, works: list[str], rounds: int, repeats: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="worldloom-compare-") as scratch:
        commit = export_revision(rev, Path(scratch))
        workers = {"tree": Worker("working tree", ROOT), "rev": Worker(commit[:7], Path(scratch))}
        try:
            for work in works:
                setup = {side: worker.ask(setup=work) for side, worker in workers.items()}
                for side, answer in setup.items():
                    expected = ROOT if side == "tree" else Path(scratch)
                    if not Path(answer["tree"]).resolve().is_relative_to(expected.resolve()):
                        raise RuntimeError(f"the {side} worker imported {answer['tree']}, not from {expected}")
                times = {"tree": [], "rev": []}
                paired = []
                for index in range(rounds):
                    order = ["tree", "rev"] if index % 2 == 0 else ["rev", "tree"]
                    round_times = {side: workers[side].ask(time=work, repeats=repeats)["seconds"] for side in order}
                    for side in order:
                        times[side].extend(round_times[side])
                    paired.append(statistics.median(round_times["tree"]) / statistics.median(round_times["rev"]))
                row = {"work": work, "rev": commit[:7], "rounds": rounds, "repeats": repeats}
                for side in ("tree", "rev"):
                    row[f"{side}_median_s"] = statistics.median(times[side])
                    row[f"{side}_min_s"] = min(times[side])
                    row[f"{side}_compile_s"] = setup[side]["compile_s"]
                    row[f"{side}_temp_gib"] = (setup[side]["temp_bytes"] / 2**30
                                               if setup[side]["temp_bytes"] is not None else None)
                    row[f"{side}_params"] = setup[side]["params"]
                peak = workers["tree"].ask(peak=1.0)["flops_per_s"]
                row["matmul_peak_gflops"] = peak / 1e9
                flops = setup["tree"]["flops"]
                row["tree_gflop"] = flops / 1e9 if flops else None
                row["tree_fraction_of_peak"] = flops / row["tree_median_s"] / peak if flops else None
                row["ratio"] = row["tree_median_s"] / row["rev_median_s"]
                row["ratio_min"] = row["tree_min_s"] / row["rev_min_s"]
                row["ratio_paired"] = statistics.median(paired)
                row["round_ratios"] = paired
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            for worker in workers.values():
                worker.close()
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| work | rev s (median) | tree s (median) | ratio (median) | ratio (min) | ratio (paired) "
             "| compile s rev / tree | temp GiB rev / tree | params rev / tree | tree GFLOP | % of matmul peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    gib = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['work']} | {r['rev_median_s']:.3f} | {r['tree_median_s']:.3f} | {r['ratio']:.2f}x "
                     f"| {r['ratio_min']:.2f}x | {r['ratio_paired']:.2f}x "
                     f"| {r['rev_compile_s']:.1f} / {r['tree_compile_s']:.1f} "
                     f"| {gib(r['rev_temp_gib'])} / {gib(r['tree_temp_gib'])} | {r['rev_params']:,} / "
                     f"{r['tree_params']:,} | {gib(r['tree_gflop'])} | "
                     f"{gib(r['tree_fraction_of_peak'] and 100 * r['tree_fraction_of_peak'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="git revision to time the working tree against")
    parser.add_argument("--work", nargs="+", default=DEFAULT_WORK, help="workloads (see above)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per workload")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per round and side")
    parser.add_argument("--json", help="append the rows as JSON lines to this file")
    args = parser.parse_args(argv)
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores", flush=True)
    rows = compare(args.against, args.work, args.rounds, args.repeats)
    if args.json:
        with open(args.json, "a") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
