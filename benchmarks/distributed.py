"""Updates per second of one training run spread over 1, 2 and 4 processes on this machine.

    python -m benchmarks.distributed --processes 1 2 4

Each run trains DreamerV3 ``size1m`` (vector observations, B=16, T=32) with
``data_parallel=True`` as N processes on 127.0.0.1 (CPU collectives over
Gloo), one CPU device each. The rate leaves out the first dispatch (compile).
The processes share this machine's cores, so the figures show what the
collectives cost, not what several hosts would gain.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(spec: dict) -> None:
    import worldloom.distributed as dist

    if spec["processes"] > 1:
        dist.initialize(f"127.0.0.1:{spec['port']}", spec["processes"], spec["process_id"])
    from worldloom import create_world_model
    from worldloom.training import Trainer, TrainingConfig
    from worldloom.training.callbacks import Callback
    from worldloom.training.data import create_random_buffer

    class Clock(Callback):
        def __init__(self):
            self.times = []

        def on_step_end(self, step, losses):
            self.times.append(time.perf_counter())

    buffer = create_random_buffer(capacity=20_000, obs_shape=(16,), action_dim=4, num_episodes=40,
                                  episode_length=200, seed=0)
    model = create_world_model("dreamerv3:size1m", obs_shape=(16,), action_dim=4, seed=0, device="cpu")
    every = spec["steps_per_dispatch"]
    clock = Clock()
    config = TrainingConfig(total_steps=spec["steps"], batch_size=16, sequence_length=32, steps_per_dispatch=every,
                            data_parallel=True, device="cpu", max_in_flight=2)
    trainer = Trainer(model, config, [clock])
    started = time.perf_counter()
    trainer.train(buffer)
    if dist.is_primary():
        timed = clock.times[every - 1:]  # from the end of the first (compiling) dispatch
        rate = (len(timed) - 1) / (timed[-1] - timed[0])
        Path(spec["out"]).write_text(json.dumps({"processes": spec["processes"], "updates_per_s": rate,
                                                 "first_dispatch_s": clock.times[every - 1] - started}))


def run(processes: int, steps: int, steps_per_dispatch: int) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = Path(tempfile.mkdtemp()) / "result.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.distributed", "--worker", json.dumps(
        {"processes": processes, "process_id": index, "port": port, "out": str(out), "steps": steps,
         "steps_per_dispatch": steps_per_dispatch})], env=env) for index in range(processes)]
    codes = [proc.wait(timeout=1800) for proc in procs]
    if codes != [0] * processes:
        raise SystemExit(f"{processes} processes exited with {codes}")
    return json.loads(out.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=60, help="updates per run")
    parser.add_argument("--steps-per-dispatch", type=int, default=10)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    rows = [run(count, args.steps, args.steps_per_dispatch) for count in args.processes]
    print("| processes | updates/s | first dispatch (compile) s |\n|---|---|---|")
    for row in rows:
        print(f"| {row['processes']} | {row['updates_per_s']:.2f} | {row['first_dispatch_s']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
