"""One process of a multi-process run, started by tests/test_distributed.py.

    python tests/distributed_worker.py '{"processes": 2, "process_id": 0, "port": 12345, "out": "...",
                                         "jobs": [{"name": "train", "steps": 16, ...}, ...]}'

The process joins the run once (``jax.distributed``; with ``processes == 1``
it runs alone, without it) and then does its jobs one after the other, as
every other process of the run does. A job trains the same tiny DreamerV3
model on a random buffer with ``data_parallel=True`` (from scratch, or from
``resume_from``), computes the one-device reference of a
``replay="process"`` run (``reference_shards``), or runs an online agent
(``agent``). Job ``name`` writes ``<out>.<name>.<process_id>.npz`` (its final
params) and ``.json`` (its losses, devices and the shape of its batch share),
or ``.error`` (its error).

A job that fails in every process alike (``may_fail``: the processes agree
on the error) lets the process go on to its next job, as does any error of a
process that runs alone (it then exits with status 1 after its last job).
In a run of several processes any other error ends the process at once
(exit status 1; 2 for a lost process), which stops the others at their next
collective.
"""

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

STARTED = time.perf_counter()


def main(spec: dict) -> None:
    import worldloom.distributed as dist

    if spec["processes"] > 1:
        # The library's heartbeat timeout (100 s): on a loaded 2-core machine a short one declares live
        # processes lost, since heartbeats go out only every timeout / 2. A process that dies is seen
        # sooner anyway, by the next collective, whose connection to it is reset.
        dist.initialize(f"127.0.0.1:{spec['port']}", spec["processes"], spec["process_id"],
                        initialization_timeout=120)
        share_compiled_programs()
    failed = []
    for job in spec["jobs"]:
        job = dict(job, out=f"{spec['out']}.{job['name']}")
        print(f"--- job {job['name']} starts at {time.perf_counter() - STARTED:.1f} s ({cpu()})", flush=True)
        started = time.perf_counter()
        try:
            online(job) if "agent" in job else train(job)
        except dist.DistributedError as err:
            write_error(job, str(err))
            dist.exit_after(f"error: {err}", 2)
        except Exception as err:  # noqa: BLE001 - reported to the test
            write_error(job, f"{type(err).__name__}: {err}")
            traceback.print_exc()
            if not job.get("may_fail"):
                if spec["processes"] > 1:  # the others may be inside this job's collectives: stop them too
                    dist.exit_after(f"error in job {job['name']}: {err}", 1)
                failed.append(job["name"])  # alone, the process goes on to its next job
        print(f"--- job {job['name']} ended after {time.perf_counter() - started:.1f} s ({cpu()})", flush=True)
    print(f"--- all jobs ended at {time.perf_counter() - STARTED:.1f} s", flush=True)
    if failed:
        sys.exit(f"failed jobs: {failed}")


def share_compiled_programs() -> None:
    """Process 0 compiles each program that spans the processes and hands it to the others.

    JAX's ``jax_share_binary_between_hosts``: the other processes wait for
    process 0's executable instead of compiling their own, which on a machine
    of 2 cores takes CPU from the rest of the test session. It matches
    programs by their compilation-cache key, and on the CPU that key holds a
    fingerprint of the device topology that differs between processes; keyed
    by the devices' kinds instead (the device assignment stays in the key),
    every process computes the same key. A JAX without that hook shares nothing.
    """
    import jax
    from jax._src import cache_key

    if callable(getattr(cache_key, "_hash_accelerator_config", None)) and callable(
            getattr(cache_key, "_hash_devices", None)):
        cache_key._hash_accelerator_config = cache_key._hash_devices
        jax.config.update("jax_share_binary_between_hosts", True)
        jax.config.update("jax_share_binary_between_hosts_timeout_ms", 300_000)


def cpu() -> str:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return f"{usage.ru_utime + usage.ru_stime:.1f} s of CPU so far"


def write_error(job: dict, text: str) -> None:
    import worldloom.distributed as dist

    with open(f"{job['out']}.{dist.process_index()}.error", "w") as handle:
        handle.write(text)


def train(spec: dict) -> None:
    """One training run of the tiny model (or its one-device ``reference_shards`` computation)."""
    import jax

    import worldloom.distributed as dist
    from worldloom import create_world_model
    from worldloom.training import Trainer, TrainingConfig
    from worldloom.training.callbacks import Callback, CheckpointCallback

    class Record(Callback):
        def __init__(self):
            self.losses = []

        def on_step_end(self, step, losses):
            self.losses.append(losses["loss"])
            if step == spec.get("die_at") and dist.process_index() == spec.get("die_process", 1):
                print(f"process {dist.process_index()} dies at step {step}", flush=True)
                Path(f"{spec['out']}.{dist.process_index()}.died").write_text(repr(time.time()))
                os._exit(3)

    model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu", seed=0,
                               deter=64, hidden=32, units=32, classes=4, stoch=4, enc_layers=1, dec_layers=1,
                               img_layers=1, action_type="discrete")
    config = TrainingConfig(total_steps=spec["steps"], batch_size=8, sequence_length=8, steps_per_dispatch=4,
                            device="cpu", eval_interval=spec.get("eval_interval", 0), eval_fraction=0.1,
                            warmup_steps=2, learning_rate=1e-3, data_parallel=True, max_in_flight=2,
                            replay_sharding=spec.get("replay", "replicated"))
    if spec.get("reference_shards"):
        return reference(spec, model, config)
    buffer = own_buffer(spec, dist.process_index())
    record = Record()
    callbacks = [record]
    if spec.get("checkpoint_dir"):
        callbacks.append(CheckpointCallback(spec["checkpoint_dir"], save_every=spec.get("save_every"),
                                            keep_last=None, save_best=False))
    trainer = Trainer(model, config, callbacks, resume_from=spec.get("resume_from"))
    started = time.perf_counter()
    trainer.train(buffer)
    seconds = time.perf_counter() - started
    chunk = trainer.placement.chunk(np.zeros((4, 8, 8), np.int64), buffer.gather)
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(model.params)]
    np.savez(f"{spec['out']}.{dist.process_index()}.npz", *leaves)
    with open(f"{spec['out']}.{dist.process_index()}.json", "w") as handle:
        json.dump({"losses": record.losses, "devices": trainer.placement.size, "seconds": seconds,
                   "steps": trainer.step, "local_batch": [list(s.data.shape) for s in chunk["obs"].addressable_shards],
                   "process_count": dist.process_count(), "evals": [s for s, _ in trainer.eval_history]}, handle)


def own_buffer(spec: dict, index: int):
    """Process ``index``'s buffer: the same for every process, or with ``replay="process"`` its own episodes."""
    from worldloom.training.data import create_random_buffer

    if spec.get("replay") == "process":  # other episodes, and another number of them, in each process
        return create_random_buffer(capacity=2000, obs_shape=(4,), action_dim=2, num_episodes=20 + 5 * index,
                                    episode_length=12 + index, seed=100 + index)
    return create_random_buffer(capacity=2000, obs_shape=(4,), action_dim=2, num_episodes=30,
                                episode_length=12 + spec.get("extra_length", 0) * index, seed=0)


def reference(spec: dict, model, config) -> None:
    """One process, one device: the updates of a ``replay="process"`` run on its global batches.

    Batch ``s`` is the concatenation of what each of ``reference_shards``
    processes draws from its own buffer; the update program is the trainer's.
    """
    import jax

    from worldloom.training import Trainer
    from worldloom.training._sampling import WindowSampler, split_segments
    from worldloom.training._step import step_program

    shards = spec["reference_shards"]
    samplers = []
    for index in range(shards):
        buffer = own_buffer(spec, index)
        segments, _ = split_segments(buffer, 0.0, config.sequence_length)
        layout = Trainer(model, config)._layout(buffer, segments)
        samplers.append(WindowSampler(buffer, config.batch_size, config.sequence_length, config.seed, segments,
                                      layout, config.steps_per_dispatch, jax.devices("cpu")[0], (index, shards)))
    program = step_program(model, config.optimizer_settings(), config.steps_per_dispatch, config.on_nonfinite)
    state = program.update.init(model.params)
    train_key = jax.random.split(jax.random.PRNGKey(config.seed))[0]
    losses = []
    for start in range(0, config.total_steps, config.steps_per_dispatch):
        steps = range(start, start + config.steps_per_dispatch)
        parts = [sampler.arrays(sampler.rows(steps)) for sampler in samplers]
        batches = {key: np.concatenate([part[key] for part in parts], 1) for key in parts[0]}
        state, metrics = program.run(state, batches, train_key, np.int32(start), np.int32(len(steps)))
        losses += np.asarray(metrics["loss"]).tolist()
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(program.update.params(state))]
    np.savez(f"{spec['out']}.0.npz", *leaves)
    with open(f"{spec['out']}.0.json", "w") as handle:
        json.dump({"losses": losses, "local_batch": [list(batches["obs"].shape)]}, handle)


def online(spec: dict) -> None:
    """``run_agent`` with ``spec["agent"]`` (AgentRunConfig fields) and ``spec["model"]`` (world-model fields)."""
    import worldloom.distributed as dist
    from worldloom.agents import AgentRunConfig, run_agent

    result = run_agent(AgentRunConfig(**spec["agent"]), progress=False, **spec.get("model", {}))
    with open(f"{spec['out']}.{dist.process_index()}.json", "w") as handle:
        json.dump({key: result[key] for key in ("env_steps", "updates", "eval", "train_returns", "params_sha256")},
                  handle)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
    sys.stdout.flush()
