"""Sampling from a disk replay larger than RAM against the same rows in RAM.

    python -m benchmarks.replay --allow-sparse                      # 4 x RAM of 64x64x3 frames, 2 GiB filled
    python -m benchmarks.replay --capacity-gib 100 --fill-gib 4 --rounds 5 --allow-sparse
    python -m benchmarks.replay --allow-sparse --beyond-ram-gib 32     # then fill the disk replay past RAM

Creates a DreamerV3 :class:`~worldloom.agents.replay.StreamReplay` of
64x64x3 uint8 frames on disk (memory-mapped files) with a capacity of
``--capacity-gib`` (default: four times this host's memory), fills the first
``--fill-gib`` of it with rows (random frames, the latents of a size1m model),
and puts the same rows in a RAM replay. Then it samples ``B x (T + 1)``
windows (DreamerV3's batch, 16 x 65) from each in turn, round after round:

- ``ram``: the RAM replay;
- ``disk (page cache)``: the disk replay, its pages wherever the kernel keeps them;
- ``disk (cold at round start)``: the disk replay after the pages of its files are dropped
  from the page cache (``posix_fadvise(DONTNEED)``, on this benchmark's files
  only) at the start of each round, so the round's first reads come from the
  disk; rows it reads again within the round come from the page cache (a
  small replay is soon all cached: the label means cold at the round's start).

It prints windows per second (median over rounds) and each disk figure as a
ratio of the RAM one, as a Markdown table and one JSON line. The files are
sparse: the capacity costs no disk until rows are written, so only the filled
part uses disk. ``--allow-sparse`` skips the check of the full capacity
against the free disk (which a run does at start); the files are removed at
the end unless ``--keep``.

``--beyond-ram-gib`` then drops the RAM replay and goes on filling the disk
replay alone until it holds that much, more than this host's memory. It
prints the process's anonymous (non-file) resident memory, which the rows
do not grow: they live in the files, whose pages the kernel writes back and
evicts as it needs. It ends with the windows per second sampled, cold, from
all the rows written, and their ratio to the RAM replay's, in rounds reading
each window's frames with one read (the replay's way) and gathering them
through the memory map (page faults).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from worldloom.agents.replay import StreamReplay
from worldloom.training._episode import memory_limit
from worldloom.training.replay_storage import allocated_bytes, check_free_disk, size_text

FRAME = (64, 64, 3)
ACTIONS, DETER, STOCH = 6, 512, 128  # Atari's actions; DreamerV3 size1m's deter, 32 latents x 4 classes


def row_bytes() -> int:
    return int(np.prod(FRAME)) + 4 * ACTIONS + 4 + 3 + 4 * DETER + STOCH


def make_replay(capacity: int, directory: Path | None) -> StreamReplay:
    return StreamReplay(capacity, 1, FRAME, np.uint8, ACTIONS, DETER, STOCH, seed=0, directory=directory)


def fill(replays: list[StreamReplay], rows: int, seed: int = 0, quiet: bool = False) -> float:
    """Add ``rows`` rows (episodes of 500 steps, random frames from a pool of 256) to every replay; seconds taken."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (256, 1, *FRAME), dtype=np.uint8)
    step = {"actions": np.zeros((1, ACTIONS), np.float32), "rewards": np.zeros(1, np.float32),
            "is_last": np.zeros(1, bool), "is_terminal": np.zeros(1, bool),
            "deter": rng.normal(size=(1, DETER)).astype(np.float32), "stoch": np.zeros((1, STOCH), np.uint8)}
    began, reported = time.perf_counter(), 0
    for t in range(rows):
        row = {**step, "obs": frames[t % 256], "is_first": np.array([t % 500 == 0])}
        for replay in replays:
            replay.add(row)
        if not quiet and (t + 1) * 10 // rows > reported:
            reported = (t + 1) * 10 // rows
            print(f"  filled {t + 1:,} of {rows:,} rows ({time.perf_counter() - began:.0f} s)", flush=True)
    return time.perf_counter() - began


def anonymous_memory() -> int:
    """This process's resident anonymous memory in bytes (``RssAnon``): its own arrays, not mapped files' pages."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def drop_cache(replay: StreamReplay) -> None:
    """Drop the page-cache pages of the disk replay's files (its own files only).

    The kernel keeps a page that a mapping still maps, so the process's own
    mappings of the files let go of their pages first (``madvise`` DONTNEED on
    numpy's mmap object; the rows stay in the files).
    """
    replay.disk.flush()
    for name, array in replay.disk.arrays.items():
        array._mmap.madvise(mmap.MADV_DONTNEED)  # noqa: SLF001 - numpy keeps the mmap object there
        fd = os.open(replay.disk.directory / f"{name}.npy", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def windows_per_second(replay: StreamReplay, batch: int, length: int, seconds: float, before=None) -> float:
    """Sampled windows per second over about ``seconds`` (``before()`` runs once, untimed, first)."""
    if before is not None:
        before()
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds or count < 3:
        replay.sample(batch, length)
        count += 1
    return count * batch / (time.perf_counter() - began)


def fill_beyond_ram(disk: StreamReplay, rows: int, args, files: Path, memory: int) -> dict:
    """Fill ``disk`` alone with ``rows`` more rows; anonymous memory, disk use and cold sampling from every row."""
    before = anonymous_memory()
    print(f"  beyond RAM: filling the disk replay alone with {rows:,} more rows ({size_text(rows * row_bytes())}); "
          f"anonymous memory before: {size_text(before)}", flush=True)
    peak, began, step = before, time.perf_counter(), max(rows // 20, 1)
    for start in range(0, rows, step):
        fill([disk], min(step, rows - start), seed=start + 1, quiet=True)
        now, written = anonymous_memory(), int(np.sum(disk.written))
        peak = max(peak, now)
        print(f"  {written:,} rows in the disk replay ({size_text(written * row_bytes())}, "
              f"{written * row_bytes() / memory:.2f} x memory), anonymous memory {size_text(now)}, "
              f"{time.perf_counter() - began:.0f} s", flush=True)
    disk.disk.flush()
    seconds = time.perf_counter() - began
    # Cold, from every row: frames read a window at a time (the replay's way), and gathered through the map.
    rates = {"reads": [], "page faults": []}
    for round_index in range(args.rounds):
        for name, values in rates.items():
            disk.disk.preads = name == "reads"
            values.append(windows_per_second(disk, args.batch, args.length, args.seconds, lambda: drop_cache(disk)))
        print(f"  cold, every row, round {round_index + 1}: "
              + ", ".join(f"{name} {values[-1]:,.0f}" for name, values in rates.items()), flush=True)
    disk.disk.preads = True
    median = {name: statistics.median(values) for name, values in rates.items()}
    written = int(np.sum(disk.written))
    return {"filled_rows": written, "filled_bytes": written * row_bytes(),
            "filled_over_memory": written * row_bytes() / memory, "files_on_disk": allocated_bytes(files),
            "anonymous_memory_before": before, "anonymous_memory_peak": peak, "seconds": seconds,
            "windows_per_second_cold": median["reads"], "windows_per_second_cold_page_faults": median["page faults"],
            "reads_speedup": median["reads"] / median["page faults"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity-gib", type=float, default=None,
                        help="the disk replay's capacity (default: 4 x this host's memory)")
    parser.add_argument("--fill-gib", type=float, default=2.0, help="rows written to both replays")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=65, help="rows per window (T + 1)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--directory", default=tempfile.gettempdir(),
                        help="where the replay's temporary directory is made (default: the system's temp directory)")
    parser.add_argument("--allow-sparse", action="store_true",
                        help="skip the check of the full capacity against the free disk")
    parser.add_argument("--keep", action="store_true", help="keep the disk replay's files")
    parser.add_argument("--beyond-ram-gib", type=float, default=None,
                        help="then fill the disk replay alone to this size (more than RAM) and sample from all of it")
    args = parser.parse_args(argv)

    per_row, memory = row_bytes(), memory_limit()
    capacity_bytes = int(args.capacity_gib * 2**30) if args.capacity_gib else 4 * memory
    capacity, rows = capacity_bytes // per_row, int(args.fill_gib * 2**30) // per_row
    parent = Path(args.directory)
    free = shutil.disk_usage(parent).free
    print(f"Disk replay of {capacity:,} rows of {per_row:,} bytes: {size_text(capacity * per_row)} "
          f"({capacity * per_row / memory:.1f} x this host's {size_text(memory)} of memory); {size_text(free)} free "
          f"disk under {parent.resolve()}; filling {rows:,} rows ({size_text(rows * per_row)})", flush=True)
    if args.allow_sparse:
        print("  --allow-sparse: the capacity is not checked against the free disk (sparse files: only the filled "
              "rows use disk)", flush=True)
    else:
        check_free_disk(parent, capacity * per_row)
    directory = Path(tempfile.mkdtemp(prefix="worldloom-replay-benchmark-", dir=parent))
    try:
        disk = make_replay(capacity, directory / "replay")
        ram = make_replay(max(rows, 2), None)
        print(f"  created in {directory}; the files' apparent size {size_text(disk.disk.nbytes)}, on disk "
              f"{size_text(allocated_bytes(directory / 'replay'))}", flush=True)
        seconds = fill([disk, ram], rows)
        disk.disk.flush()
        used = allocated_bytes(directory / "replay")
        print(f"  filled in {seconds:.0f} s; the files now use {size_text(used)} of disk", flush=True)
        cases = {"ram": (ram, None), "disk (page cache)": (disk, None),
                 "disk (cold at round start)": (disk, lambda: drop_cache(disk))}
        rates = {name: [] for name in cases}
        for round_index in range(args.rounds):  # interleaved: each round measures every case once
            for name, (replay, before) in cases.items():
                rates[name].append(windows_per_second(replay, args.batch, args.length, args.seconds, before))
            print(f"  round {round_index + 1}: " + ", ".join(f"{name} {values[-1]:,.0f}"
                                                            for name, values in rates.items()), flush=True)
        median = {name: statistics.median(values) for name, values in rates.items()}
        beyond = None
        if args.beyond_ram_gib:
            cases.clear()
            del ram  # its arrays go: from here only the disk replay's files hold rows
            beyond = fill_beyond_ram(disk, int(args.beyond_ram_gib * 2**30) // per_row - rows, args,
                                     directory / "replay", memory)
            beyond["ratio_to_ram"] = beyond["windows_per_second_cold"] / median["ram"]
            print(f"  sampled cold from all {beyond['filled_rows']:,} rows: {beyond['windows_per_second_cold']:,.0f} "
                  f"windows/s, {beyond['ratio_to_ram']:.3f} x the RAM replay's; reading windows "
                  f"{beyond['reads_speedup']:.2f} x gathering them through the map", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(directory)
    result = {"capacity_rows": capacity, "capacity_bytes": capacity * per_row, "memory_bytes": memory,
              "filled_rows": rows, "filled_disk_bytes": used, "batch": args.batch, "length": args.length,
              "windows_per_second": median,
              "ratio_to_ram": {name: median[name] / median["ram"] for name in median},
              "beyond_ram": beyond, "load_average": os.getloadavg(), "machine": platform.machine(),
              "cpus": os.cpu_count()}
    print(f"\n| replay | windows/s (B={args.batch}, L={args.length}) | ratio to RAM |\n|---|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value:,.0f} | {value / median['ram']:.2f} |")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
