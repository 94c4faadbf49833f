"""Throughput of ``train()`` against a plain jitted loop, and of replay sampling.

    python -m benchmarks.train_throughput --model dreamerv3:size1m --batch 16 --seq 50 --steps 60

Reports, after compilation:

- ``plain loop``: one jitted update per call (state donated), the batch
  sampled on the main thread each step with ``buffer.sample`` - what a user
  writes by hand;
- ``train() K=...``: the :class:`~worldloom.training.Trainer` with K updates
  per dispatch (``lax.scan``) and batches prefetched on a background thread;
- ``sample``: ``buffer.sample(B, T)`` windows/s and transitions/s, and the
  trainer's chunk sampler (K batches at once) in the same units.

Prints a Markdown table and one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import numpy as np

from worldloom import create_world_model
from worldloom.training import Trainer, TrainingConfig
from worldloom.training._sampling import WindowSampler
from worldloom.training.data import create_random_buffer


def make_buffer(obs: str, action_dim: int, capacity: int, seed: int = 0):
    shape = (64, 64, 3) if obs == "image" else (4,)
    length = 200
    return create_random_buffer(capacity, shape, action_dim, num_episodes=capacity // length,
                                episode_length=length, seed=seed)


def make_model(args, buffer):
    return create_world_model(args.model, obs_shape=buffer.obs_shape, action_dim=buffer.action_dim, device="cpu"
                              if args.device == "cpu" else args.device, seed=0)


def rate(fn, seconds: float) -> tuple[float, int]:
    """Calls of ``fn`` per second over about ``seconds`` (after one warm-up call)."""
    fn()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        fn()
        count += 1
    return count / (time.perf_counter() - start), count


def bench_sampling(buffer, batch: int, seq: int, slots: int, seconds: float) -> list[dict]:
    windows = batch * seq
    per_sec, _ = rate(lambda: buffer.sample(batch, seq), seconds)
    layout = {"obs": buffer.obs_dtype, "actions": np.float32, "rewards": np.float32, "continues": np.float32,
              "is_first": bool}
    sampler = WindowSampler(buffer, batch, seq, 0, buffer.segments(), layout, slots, jax.devices("cpu")[0])
    start = [0]

    def chunk():
        jax.block_until_ready(sampler.chunk(start[0], slots))
        start[0] += slots

    chunks_per_sec, _ = rate(chunk, seconds)
    return [
        {"bench": "sample", "how": "buffer.sample", "samples_per_sec": per_sec * batch,
         "transitions_per_sec": per_sec * windows},
        {"bench": "sample", "how": f"trainer chunk K={slots} (+device_put)",
         "samples_per_sec": chunks_per_sec * slots * batch, "transitions_per_sec": chunks_per_sec * slots * windows},
    ]


def bench_plain_loop(args, buffer) -> dict:
    model = make_model(args, buffer)
    config = TrainingConfig(learning_rate=3e-4)
    update = model.make_update(config.optimizer_settings())
    device = model.device
    step = jax.jit(update.step, donate_argnums=(0,))
    state = jax.device_put(update.init(jax.tree_util.tree_map(np.array, model.params)), device)
    key = jax.device_put(jax.random.PRNGKey(0), device)

    def one(state, index):
        batch = jax.device_put(buffer.sample(args.batch, args.seq), device)
        return step(state, batch, jax.random.fold_in(key, index))

    start = time.perf_counter()
    state, metrics = one(state, 0)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for index in range(1, args.steps + 1):
        state, metrics = one(state, index)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    return {"bench": "update", "how": "plain loop (1 update/call)", "updates_per_sec": args.steps / seconds,
            "compile_s": compile_s, "loss": float(metrics["loss"])}


def bench_train(args, buffer, slots: int) -> dict:
    config = TrainingConfig(total_steps=args.steps, batch_size=args.batch, sequence_length=args.seq,
                            steps_per_dispatch=slots, eval_interval=0, device=args.device, seed=0)
    start = time.perf_counter()
    Trainer(make_model(args, buffer), config.replace(total_steps=slots)).train(buffer)  # compiles (cached)
    compile_s = time.perf_counter() - start
    trainer = Trainer(make_model(args, buffer), config)
    start = time.perf_counter()
    trainer.train(buffer)
    seconds = time.perf_counter() - start
    return {"bench": "update", "how": f"train() K={slots}", "updates_per_sec": args.steps / seconds,
            "compile_s": compile_s, "loss": trainer.last_losses["loss"], "compiles": trainer.compile_count}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dreamerv3:size1m")
    parser.add_argument("--obs", choices=("vector", "image"), default="vector")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=50)
    parser.add_argument("--steps", type=int, default=60, help="timed updates per measurement")
    parser.add_argument("--dispatch", type=int, nargs="+", default=[1, 10], help="K values for train()")
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--sample-seconds", type=float, default=2.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-updates", action="store_true", help="only measure sampling")
    args = parser.parse_args(argv)

    buffer = make_buffer(args.obs, 2, args.capacity)
    rows = bench_sampling(buffer, args.batch, args.seq, max(args.dispatch), args.sample_seconds)
    if not args.skip_updates:
        rows.append(bench_plain_loop(args, buffer))
        rows += [bench_train(args, buffer, slots) for slots in args.dispatch]
    context = {"model": args.model, "obs": args.obs, "batch": args.batch, "seq": args.seq,
               "device": str(jax.devices(args.device if args.device != "auto" else None)[0]),
               "cpu": platform.processor() or platform.machine(), "jax": jax.__version__}
    print(f"\n{args.model}, {args.obs} obs, B={args.batch}, T={args.seq}, {context['device']}\n")
    print("| measurement | updates/s | samples/s | transitions/s | compile s |")
    print("|---|---|---|---|---|")
    for row in rows:
        cells = [row.get("updates_per_sec"), row.get("samples_per_sec"), row.get("transitions_per_sec"),
                 row.get("compile_s")]
        text = [f"{c:,.1f}" if isinstance(c, float) else "" for c in cells]
        print(f"| {row['how']} | " + " | ".join(text) + " |")
    print()
    for row in rows:
        print(json.dumps({**context, **row}))
    return rows


if __name__ == "__main__":
    main()
