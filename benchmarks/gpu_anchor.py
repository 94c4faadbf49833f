"""worldloom beside the official DreamerV3 (JAX) and TD-MPC2 (PyTorch) code: the same configs, one device, one run.

    python -m benchmarks.gpu_anchor --json anchor.json            # every case (a GPU)
    python -m benchmarks.gpu_anchor --cases dreamer                # the DreamerV3 cases only
    python -m benchmarks.gpu_anchor --tiny                         # tiny configs, end to end on the CPU

Cases (``--cases`` takes names, or ``dreamer`` / ``tdmpc2`` for a family):

- ``dreamer-agent:<size>:<obs>``: DreamerV3's full agent update (world model,
  replay value, imagination actor-critic), B16 T64 H15, bf16 compute with f32
  params, for ``size12m`` and ``size200m``, 39-dim vectors or 64x64x3 images,
  6 continuous actions; against danijar/dreamerv3's train program.
- ``tdmpc2-update:<size>``: TD-MPC2's update, B256, horizon 3, and
  ``tdmpc2-plan:<size>``: one MPPI plan for one 24-dim observation, for ``5m``
  (the 48m plan only when named); against nicklashansen/tdmpc2's ``_update``
  and ``act``, eager and with ``torch.compile`` (its ``compile: true``).

Each side of a case runs in a fresh process (worldloom's is
``benchmarks._compare_worker``, the official ones ``_gpu_anchor_official``),
so the peak device memory it reports is that case's. Every side is built and
compiled first (DreamerV3's two JAX sides one after the other, so that
neither's autotuning runs beside the other's; TD-MPC2's three at once); then,
round after round, each side is timed in turn, the order
rotating between rounds, so all sides see the same machine. A speedup is the
official side's median time over worldloom's: above 1 worldloom is faster.
The paired speedup is the median over rounds of each round's speedup. After
the cases, worldloom's FLOP/s (XLA's cost analysis over its median time) is
set against the f32 and bf16 matmul rates measured in the same run.

The official code is not part of this repository. It is read from
``--official`` (default ``.scratch/official``, which git ignores):
``dreamerv3/`` holding danijar/dreamerv3's ``dreamerv3`` and ``embodied``
packages, ``tdmpc2/tdmpc2/`` holding nicklashansen/tdmpc2's ``tdmpc2`` folder,
each with its commit id in a ``COMMIT`` file. Its Python dependencies are read
from ``--site`` (default ``.scratch/site`` where it exists) and from
``PYTHONPATH``. A side whose code is absent is reported missing and the
case runs worldloom alone. Output: progress and one JSON line per case,
then a Markdown table; ``--json`` writes the whole document (header, cases,
matmul rates), rewritten after each case under a temporary name and renamed,
so a run stopped by a time limit keeps what it finished; ``--resume`` skips
the cases that file already holds; ``--report FILE ...`` prints the table of
one or more results files (the cases of several calls in one table).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.compare import ROOT, Worker

OFFICIAL_WORKER = Path(__file__).with_name("_gpu_anchor_official.py")
DREAMER_CASES = ["dreamer-agent:size12m:vector", "dreamer-agent:size12m:image", "dreamer-agent:size200m:vector",
                 "dreamer-agent:size200m:image"]
TDMPC2_CASES = ["tdmpc2-update:5m", "tdmpc2-plan:5m", "tdmpc2-update:48m"]  # tdmpc2-plan:48m by name
CASES = DREAMER_CASES + TDMPC2_CASES
BF16 = {"compute_dtype": "bfloat16"}
# --tiny: the smallest presets cut down as the agent tests' tiny models (tests/_agents.py), short windows.
TINY_CASES = ["dreamer-agent:size1m:vector", "dreamer-agent:size1m:image", "tdmpc2-update:1m", "tdmpc2-plan:1m"]
TINY = {"dreamerv3": dict(overrides=dict(deter=64, hidden=32, units=32, classes=4, stoch=4), batch=2, length=8),
        "tdmpc2": dict(overrides=dict(enc_dim=32, mlp_dim=32, latent_dim=16, num_q=2, num_samples=32, num_elites=8,
                                      num_pi_trajs=4, iterations=2), batch=8, length=None)}
REPOS = {"dreamerv3": "danijar/dreamerv3", "tdmpc2": "nicklashansen/tdmpc2"}
# family -> the folder under --official its worker imports from, and a file that must be in it
LAYOUT = {"dreamerv3": ("dreamerv3", "dreamerv3/agent.py"), "tdmpc2": ("tdmpc2/tdmpc2", "tdmpc2.py")}


def family(case: str) -> str:
    return "dreamerv3" if case.startswith("dreamer") else "tdmpc2"


def case_config(case: str, tiny: bool) -> dict:
    """The workload both sides build: batch, window length and model config fields (worldloom's names)."""
    config = dict(TINY[family(case)]) if tiny else dict(overrides={}, batch=None, length=None)
    config["overrides"] = dict(config["overrides"], **(BF16 if family(case) == "dreamerv3" else {}))
    return config


def official_sides(case: str) -> dict[str, dict]:
    """The official sides of a case: name -> extra setup fields."""
    if family(case) == "dreamerv3":
        return {"official": {}}
    return {"official-eager": {"compiled": False}, "official-compile": {"compiled": True}}


def official_code(official: Path) -> dict[str, dict]:
    """Where each official checkout is, its commit, and why it cannot run (``missing``) if it cannot."""
    found = {}
    for name, (inner, marker) in LAYOUT.items():
        folder = official / inner
        path = folder / marker
        commit_file = official / name / "COMMIT"
        entry = {"repo": REPOS[name], "path": str(folder),
                 "commit": commit_file.read_text().strip() if commit_file.is_file() else None}
        if not path.is_file():
            entry["missing"] = (f"the official {REPOS[name]} code is not at {folder} (expected {path}); "
                                "benchmarks/README.md (benchmarks.gpu_anchor) gives the layout")
        found[name] = entry
    return found


def device_info() -> dict:
    """This machine's first JAX device (the one every side runs on) and the library versions seen here."""
    import jax

    from benchmarks.train_step import machine_name

    device = jax.devices()[0]
    info = {"device": machine_name(device), "platform": device.platform, "jax": jax.__version__}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["torch_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["torch"] = None
    return info


class Side:
    """One side of a case: its worker process, its setup answer, its times, or why it has none."""

    def __init__(self, name: str, worker: Worker | None = None, missing: str | None = None):
        self.name, self.worker, self.missing = name, worker, missing
        self.extra: dict = {}  # setup fields of this side (the official TD-MPC2's ``compiled``)
        self.setup: dict = {}
        self.error: str | None = None
        self.rounds: list[list[float]] = []
        self.peak_bytes: int | None = None

    @property
    def live(self) -> bool:
        return self.worker is not None and self.error is None

    def ask(self, **command) -> dict | None:
        """The worker's answer, or None with ``error`` set where it failed or its process died."""
        try:
            self.worker.send(**command)
        except (OSError, ValueError) as err:
            self.error = str(err)
            return None
        return self.receive(command)

    def receive(self, command: dict) -> dict | None:
        try:
            answer = self.worker.receive(command)
        except (RuntimeError, OSError, ValueError):  # the process died (out of memory, say)
            code = self.worker.process.poll()
            answer = {"error": f"the {self.name} process exited (code {code}); its traceback is in the log"}
        if "error" in answer:
            self.error = answer["error"]
            return None
        return answer

    def close(self) -> None:
        if self.worker is not None:
            try:
                self.worker.close()
            except OSError:
                pass

    def summary(self) -> dict:
        if self.missing:
            return {"missing": self.missing}
        times = [t for row in self.rounds for t in row]
        out = {"error": self.error} if self.error else {}
        out.update({"params": self.setup.get("params"), "compile_s": self.setup.get("compile_s"),
                    "temp_gib": _gib(self.setup.get("temp_bytes")), "peak_gib": _gib(self.peak_bytes)})
        if "versions" in self.setup:  # the official side's libraries, as imported in its process
            out["versions"] = self.setup["versions"]
        elif "jax" in self.setup:  # worldloom's worker reports the jax it imported
            out["versions"] = {"jax": self.setup["jax"]}
        if "graph_breaks" in self.setup:  # torch.compile's, by reason
            out["graph_breaks"] = self.setup["graph_breaks"]
        if times:
            out.update(median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times), calls=len(times))
        return out


def _gib(value):
    return value / 2**30 if value is not None else None


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_case(case: str, config: dict, code: dict, platform: str, site: list[str], rounds: int,
             repeats: int) -> dict:
    """Build, time and measure every side of ``case``; returns its row."""
    sides = {"worldloom": Side("worldloom", Worker("worldloom", ROOT))}
    entry = code[family(case)]
    for name, extra in official_sides(case).items():
        if "missing" in entry:
            sides[name] = Side(name, missing=entry["missing"])
            continue
        path = os.pathsep.join([entry["path"], *site, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        sides[name] = Side(name, Worker(name, path, OFFICIAL_WORKER))
        sides[name].extra = extra
    try:
        built = [side for side in sides.values() if side.worker is not None]
        # TD-MPC2's sides build at once (worldloom's XLA compile, the official torch.compile: mostly CPU work);
        # DreamerV3's two JAX sides one after the other, so neither's autotuning times kernels beside the other's.
        for group in [built] if family(case) == "tdmpc2" else [[side] for side in built]:
            commands = {}
            for side in group:
                _log(f"  {side.name}: building and compiling")
                commands[side.name] = dict(setup=case, **config, platform=platform, **side.extra)
                try:
                    side.worker.send(**commands[side.name])
                except (OSError, ValueError) as err:
                    side.error = str(err)
            for side in group:
                answer = side.receive(commands[side.name]) if side.error is None else None
                if answer is not None:
                    side.setup = answer
                    _log(f"  {side.name}: {answer['params']:,} parameters, first call {answer['compile_s']:.1f} s")
                else:
                    _log(f"  {side.name}: failed: {side.error}")
        live = [side for side in sides.values() if side.live]
        for index in range(rounds):
            shift = index % len(live) if live else 0
            for side in live[shift:] + live[:shift]:
                answer = side.ask(time=case, repeats=repeats) if side.live else None
                if answer is not None:
                    side.rounds.append(answer["seconds"])
            _log(f"  round {index + 1}/{rounds}: " + ", ".join(
                f"{side.name} {1e3 * statistics.median(side.rounds[-1]):.2f} ms" for side in live if side.rounds))
        for side in sides.values():
            if side.live:
                answer = side.ask(memory=True)
                side.peak_bytes = answer["peak_bytes"] if answer else None
    finally:
        for side in sides.values():
            side.close()
    row = {"case": case, "batch": config["batch"], "length": config["length"], "overrides": config["overrides"],
           "rounds": rounds, "repeats": repeats, "sides": {name: side.summary() for name, side in sides.items()},
           "flops": sides["worldloom"].setup.get("flops")}
    ours = sides["worldloom"]
    for name, side in sides.items():
        if name == "worldloom" or not (side.rounds and ours.rounds):
            continue
        paired = [statistics.median(theirs) / statistics.median(mine)
                  for mine, theirs in zip(ours.rounds, side.rounds)]
        row.setdefault("speedup", {})[name] = row["sides"][name]["median_ms"] / row["sides"]["worldloom"]["median_ms"]
        row.setdefault("speedup_paired", {})[name] = statistics.median(paired)
    return row


def matmul_rates(seconds: float) -> dict:
    """The device's f32 and bf16 matmul FLOP/s, measured by a fresh worldloom worker (``device_peaks``)."""
    worker = Worker("worldloom", ROOT)
    try:
        answer = worker.ask(peak=seconds)
    finally:
        worker.close()
    return {"f32": answer["flops_per_s"], "bf16": answer["flops_per_s_bf16"]}


def add_fractions(rows: list[dict], rates: dict) -> None:
    """worldloom's FLOP/s per case and its fraction of the matmul rate of the case's compute dtype."""
    for row in rows:
        median_ms = row["sides"]["worldloom"].get("median_ms")
        if not row.get("flops") or not median_ms:
            continue
        dtype = "bf16" if row["overrides"].get("compute_dtype") == "bfloat16" else "f32"
        row["flops_per_s"] = row["flops"] / (median_ms / 1e3)
        row["matmul_dtype"], row["matmul_flops_per_s"] = dtype, rates[dtype]
        row["fraction_of_matmul"] = row["flops_per_s"] / rates[dtype]


def write_json(path: Path, document: dict) -> None:
    """Write ``document`` to ``path`` under a temporary name first, then rename it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(temporary, path)


def markdown(document: dict) -> str:
    """The cases as a Markdown table: times, speedups, memory, parameters, worldloom's FLOP/s."""
    head = ("| case | side | params | first call s | median ms | min ms | speedup (median) | speedup (paired) "
            "| peak GiB | XLA temp GiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    number = lambda value, fmt: "-" if value is None else fmt.format(value)  # noqa: E731
    for row in document["cases"]:
        for name, side in row["sides"].items():
            if "missing" in side or ("error" in side and "median_ms" not in side):
                reason = side.get("missing") or side["error"]
                reason = reason if len(reason) <= 160 else reason[:157] + "..."
                lines.append(f"| {row['case']} | {name} | {reason} |" + " |" * 7)
                continue
            lines.append(
                f"| {row['case']} | {name} | {number(side['params'], '{:,}')} | {number(side['compile_s'], '{:.1f}')} "
                f"| {side['median_ms']:.2f} | {side['min_ms']:.2f} "
                f"| {number(row.get('speedup', {}).get(name), '{:.2f}x')} "
                f"| {number(row.get('speedup_paired', {}).get(name), '{:.2f}x')} "
                f"| {number(side['peak_gib'], '{:.2f}')} | {number(side['temp_gib'], '{:.2f}')} |")
    breaks = [(row["case"], name, side["graph_breaks"]) for row in document["cases"]
              for name, side in row["sides"].items() if side.get("graph_breaks")]
    for case, name, reasons in breaks:
        listed = "; ".join(f"{count} x {reason}" for reason, count in reasons.items())
        lines.append(f"\n{case}, {name}: {sum(reasons.values())} graph breaks ({listed})")
    counted = [row for row in document["cases"] if "fraction_of_matmul" in row]
    if counted:
        lines += ["", "| case | worldloom TFLOP/s | matmul TFLOP/s | fraction |", "|---|---|---|---|"]
        for row in counted:
            lines.append(f"| {row['case']} | {row['flops_per_s'] / 1e12:.3f} | {row['matmul_flops_per_s'] / 1e12:.3f} "
                         f"({row['matmul_dtype']}) | {100 * row['fraction_of_matmul']:.1f}% |")
    return "\n".join(lines)


def run_line(header: dict) -> str:
    """One line naming a run's device, versions and official commits."""
    return (f"{header['device']}; jax {header['jax']}, torch {header.get('torch')}; "
            + ("tiny configs (a check of the script, not a measurement); " if header.get("tiny") else "")
            + "; ".join(f"{entry['repo']} {entry['commit'] or 'commit unknown'}"
                        + (" (missing)" if "missing" in entry else "") for entry in header["official"].values()))


def report(paths: list[Path]) -> str:
    """The table of one or more results files (several calls of the run), each file's run line first."""
    documents = [json.loads(path.read_text()) for path in paths]
    runs = [f"{path.name}: {run_line(document['header'])}" for path, document in zip(paths, documents)]
    merged = {"cases": [row for document in documents for row in document["cases"]]}
    return "\n".join(runs) + "\n\n" + markdown(merged)


def select_cases(names: list[str] | None, tiny: bool) -> list[str]:
    """The cases ``--cases`` names (a family name stands for its cases); raises ValueError for a malformed one."""
    every = TINY_CASES if tiny else CASES
    if not names:
        return every
    chosen = []
    for name in names:
        if name in ("dreamer", "tdmpc2"):
            chosen += [case for case in every if case.startswith(name)]
            continue
        kind, _, rest = name.partition(":")
        parts = rest.split(":")
        if not ((kind == "dreamer-agent" and len(parts) == 2 and parts[1] in ("vector", "image"))
                or (kind in ("tdmpc2-update", "tdmpc2-plan") and len(parts) == 1 and parts[0])):
            raise ValueError(f"a case is 'dreamer-agent:<size>:vector|image', 'tdmpc2-update:<size>' or "
                             f"'tdmpc2-plan:<size>' (or 'dreamer' / 'tdmpc2'), got {name!r}")
        chosen.append(name)
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", help="case names, or 'dreamer' / 'tdmpc2' (default: all)")
    parser.add_argument("--tiny", action="store_true", help="tiny configs and short windows: the CPU check")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per case (default 5, tiny 2)")
    parser.add_argument("--repeats", type=int, help="timed calls per round and side (default 3, tiny 1)")
    parser.add_argument("--official", type=Path, default=ROOT / ".scratch" / "official",
                        help="folder of the official checkouts (see above)")
    parser.add_argument("--site", type=Path, default=ROOT / ".scratch" / "site",
                        help="folder the official code's dependencies are installed in (used where it exists)")
    parser.add_argument("--json", type=Path, help="write the results document here")
    parser.add_argument("--resume", action="store_true", help="with --json: skip the cases the file already holds")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="run nothing: print the table of these results files (one run's, or several calls')")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    rounds = args.rounds or (2 if args.tiny else 5)
    repeats = args.repeats or (1 if args.tiny else 3)
    # Every process shares the device: JAX takes memory as it needs it, so each process's peak is its own.
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    try:
        cases = select_cases(args.cases, args.tiny)
    except ValueError as err:
        parser.error(str(err))
    code = official_code(args.official)
    for entry in code.values():
        if "missing" in entry:
            _log(f"official side missing: {entry['missing']}")
    site = [str(args.site)] if args.site.is_dir() else []
    document = {"header": {**device_info(), "official": code, "tiny": args.tiny, "rounds": rounds,
                           "repeats": repeats, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())},
                "cases": []}
    if args.resume and args.json and args.json.is_file():
        earlier = json.loads(args.json.read_text())
        mismatch = [key for key in ("tiny", "device") if earlier.get("header", {}).get(key) != document["header"][key]]
        if mismatch:
            parser.error(f"--resume: {args.json} holds a run with other {' and '.join(mismatch)} ("
                         + ", ".join(f"{key} {earlier.get('header', {}).get(key)!r} there, {document['header'][key]!r} "
                                     "now" for key in mismatch)
                         + "); its cases are not this run's. Pass another --json, or remove that file.")
        document["cases"] = earlier["cases"]
    done = {row["case"] for row in document["cases"]}
    print(json.dumps(document["header"]), flush=True)
    platform = document["header"]["platform"]
    for index, case in enumerate(cases):
        if case in done:
            _log(f"[{index + 1}/{len(cases)}] {case}: in {args.json} already")
            continue
        _log(f"[{index + 1}/{len(cases)}] {case}")
        start = time.perf_counter()
        row = run_case(case, case_config(case, args.tiny), code, platform, site, rounds, repeats)
        row["wall_s"] = time.perf_counter() - start
        document["cases"].append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            write_json(args.json, document)
    _log("matmul rates")
    try:
        rates = matmul_rates(0.2 if args.tiny else 1.0)
    except (RuntimeError, OSError, KeyError) as err:  # the cases stand without them
        _log(f"matmul rates not measured: {err}")
        rates = None
    document["matmul_flops_per_s"] = rates
    if rates:
        add_fractions(document["cases"], rates)
    if args.json:
        write_json(args.json, document)
    print(f"\n{run_line(document['header'])}")
    print(markdown(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
