"""Update time with the non-finite guard on (``"stop"``, ``"skip"``) against off (``"ignore"``).

    python -m benchmarks.nonfinite_guard --model dreamerv3:size1m --batch 16 --seq 50 --rounds 10

The three K-update programs (``_step.step_program``) are compiled first; then
each round times ``--dispatches`` dispatches of every program on the same
pre-sampled batches, the programs in alternating order, so a load change on
a shared machine hits all of them alike. Reports the compile times, the median
time per update and, per round, the ratio of each guarded program to the
unguarded one (with the median). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from worldloom import create_world_model
from worldloom.training import TrainingConfig
from worldloom.training._sampling import WindowSampler
from worldloom.training._step import step_program
from worldloom.training.data import create_random_buffer

MODES = ("ignore", "stop", "skip")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dreamerv3:size1m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=50)
    parser.add_argument("--dispatch", type=int, default=10, help="updates per dispatch (K)")
    parser.add_argument("--dispatches", type=int, default=2, help="dispatches per program per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    buffer = create_random_buffer(20_000, (4,), 2, num_episodes=100, episode_length=200, seed=0)
    model = create_world_model(args.model, obs_shape=(4,), action_dim=2, device=args.device, seed=0)
    settings = TrainingConfig(batch_size=args.batch, sequence_length=args.seq).optimizer_settings()
    device, slots = model.device, args.dispatch
    layout = {k: np.dtype(v.dtype) for k, v in model.prepare_batch(buffer.sample(args.batch, args.seq)).items()}
    sampler = WindowSampler(buffer, args.batch, args.seq, 0, buffer.segments(), layout, slots, device)
    chunks = [sampler.chunk(index * slots, slots) for index in range(args.dispatches)]
    key = jax.device_put(jax.random.PRNGKey(0), device)

    runs, states, compile_s = {}, {}, {}
    for mode in MODES:
        program = step_program(model, settings, slots, mode)
        state = jax.device_put(program.update.init(jax.tree_util.tree_map(np.array, model.params)), device)
        start = time.perf_counter()
        state, metrics = program.run(state, chunks[0], key, np.int32(0), np.int32(slots))
        jax.block_until_ready(metrics)
        compile_s[mode] = time.perf_counter() - start
        runs[mode], states[mode] = program.run, state

    seconds = {mode: [] for mode in MODES}
    for round_index in range(args.rounds):
        for mode in MODES if round_index % 2 == 0 else MODES[::-1]:
            start = time.perf_counter()
            for index, chunk in enumerate(chunks):
                states[mode], metrics = runs[mode](states[mode], chunk, key, np.int32(index * slots),
                                                   np.int32(slots))
            jax.block_until_ready((states[mode], metrics))
            seconds[mode].append((time.perf_counter() - start) / (args.dispatches * slots))

    base = np.asarray(seconds["ignore"])
    result = {"model": args.model, "batch": args.batch, "seq": args.seq, "dispatch": slots, "rounds": args.rounds,
              "updates_per_round": args.dispatches * slots, "device": str(device),
              "load_average": [round(x, 2) for x in os.getloadavg()],
              "compile_s": {mode: round(value, 1) for mode, value in compile_s.items()},
              "ms_per_update": {mode: round(1e3 * float(np.median(values)), 2) for mode, values in seconds.items()}}
    for mode in MODES[1:]:
        ratios = np.asarray(seconds[mode]) / base
        result[f"ratio_{mode}"] = round(float(np.median(ratios)), 3)
        result[f"ratio_{mode}_per_round"] = [round(float(r), 3) for r in ratios]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
