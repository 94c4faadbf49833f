"""Training across several processes (hosts) on JAX's multi-controller runtime.

Every process runs the same script. Call :func:`initialize` once in each,
before any model is created; then ``TrainingConfig(data_parallel=True)`` spans
the devices of every process, and the trainer places only this process's
share of each global batch::

    import worldloom.distributed as dist

    dist.initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # process_id=1 on the other host
    model = create_world_model(...)
    Trainer(model, TrainingConfig(data_parallel=True, ...)).train(buffer)

On a cluster whose environment JAX reads (SLURM, Open MPI, TPU pods, GKE),
``dist.initialize()`` alone is enough. CPU processes exchange gradients over
Gloo (TCP); GPUs use NCCL and TPUs their interconnect, as JAX chooses.

What the processes share: by default every process draws the same window
rows (the sampler's seed is the run's) and gathers only those of its own
devices, so all of them must hold buffers with the same episode layout, for
example the same file or the same collection seeds. With
``TrainingConfig(replay_sharding="process")`` each process holds only its own
episodes and draws its share of every batch from them. Params start equal
(the same model seed) and stay equal: the gradient all-reduce is part of the
one jitted update. Progress, logs, saved models and checkpoints are written
by process 0 only; the others wait for a checkpoint to be complete before
they go on.

When a process dies, the others fail at their next collective (the
connection to it is reset) or, if it hangs, when the coordination service
misses its heartbeats (``heartbeat_timeout``): :class:`DistributedError`
names the lost process. Checkpoints are written whole or not at all, so the
newest one stays loadable, on any number of processes.
"""

from __future__ import annotations

import contextlib
import os
import re

import jax
import numpy as np

from worldloom.core.errors import ConfigError, DistributedError

__all__ = ["DistributedError", "barrier", "broadcast", "broadcast_arrays", "collective", "differing_processes",
           "exit_after", "gather", "initialize", "is_initialized", "is_primary", "peer_failure", "process_count",
           "process_index"]

def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids=None, initialization_timeout: int = 300,
               heartbeat_timeout: int = 100) -> None:
    """Join this process to a multi-process run (``jax.distributed.initialize``).

    Call it once per process, before any JAX computation. Without arguments
    JAX reads the cluster's environment (SLURM, Open MPI, TPU pods).

    Args:
        coordinator_address: ``"HOST:PORT"`` of process 0, reachable from every process.
        num_processes: Processes in the run.
        process_id: This process's index, ``0 <= process_id < num_processes``.
        local_device_ids: The local devices this process uses (default: all).
        initialization_timeout: Seconds to wait for every process to join.
        heartbeat_timeout: Seconds of silence after which a process counts as lost.

    Raises:
        ConfigError: inconsistent arguments, or JAX already ran a computation.
        DistributedError: the processes did not all join in time.
    """
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ConfigError("initialize needs coordinator_address, num_processes and process_id together (or none "
                          f"of them, to read the cluster's environment); got coordinator_address="
                          f"{coordinator_address!r}, num_processes={num_processes!r}, process_id={process_id!r}.")
    if coordinator_address is not None:
        if not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", coordinator_address):
            raise ConfigError(f"coordinator_address must be HOST:PORT, got {coordinator_address!r}.")
        if int(num_processes) < 1 or not 0 <= int(process_id) < int(num_processes):
            raise ConfigError(f"process_id must be in [0, num_processes); got process_id={process_id}, "
                              f"num_processes={num_processes}.")
    if jax.distributed.is_initialized():
        raise ConfigError("worldloom.distributed.initialize was already called in this process.")
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU all-reduce across processes
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids=local_device_ids,
                                   initialization_timeout=int(initialization_timeout),
                                   heartbeat_timeout_seconds=int(heartbeat_timeout))
    except RuntimeError as err:
        if "before any JAX" in str(err) or "must be called before" in str(err):
            raise ConfigError(f"initialize must run before any JAX computation in this process: {err}") from err
        raise DistributedError(f"Could not join the run at {coordinator_address or 'the cluster coordinator'} "
                               f"within {initialization_timeout} s as process {process_id} of {num_processes}: "
                               f"{err}") from err


def is_initialized() -> bool:
    """Whether :func:`initialize` joined this process to a multi-process run."""
    return jax.distributed.is_initialized()


def process_index() -> int:
    """This process's index (0 without :func:`initialize`)."""
    return jax.process_index()


def process_count() -> int:
    """Processes in the run (1 without :func:`initialize`)."""
    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (a no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        with collective(f"waiting at {name!r}"):
            multihost_utils.sync_global_devices(name)


def broadcast(value):
    """Process 0's ``value`` on every process: a JSON-serialisable object (``value`` of the others is ignored)."""
    if jax.process_count() == 1:
        return value
    import json

    from jax.experimental import multihost_utils

    data = json.dumps(value).encode() if is_primary() else b""
    with collective("sharing the run's settings"):
        size = int(multihost_utils.broadcast_one_to_all(np.int64(len(data))))
        padded = np.frombuffer(data.ljust(size, b"\0"), np.uint8) if is_primary() else np.zeros(size, np.uint8)
        shared = multihost_utils.broadcast_one_to_all(padded)
    return json.loads(bytes(np.asarray(shared, np.uint8)).decode())


def broadcast_arrays(tree, like):
    """Process 0's pytree of arrays ``tree`` on every process, as NumPy arrays.

    Args:
        tree: Process 0's arrays; the other processes pass ``None``.
        like: Arrays or ``ShapeDtypeStruct``s of ``tree``'s structure, on every process.
    """
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    if not is_primary():
        tree = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), like)
    with collective("sharing the restored checkpoint"):
        return jax.device_get(multihost_utils.broadcast_one_to_all(tree))


def gather(value, doing: str) -> np.ndarray:
    """Every process's ``value`` (an array of the same shape everywhere), stacked in process order."""
    if jax.process_count() == 1:
        return np.asarray(value)[None]
    from jax.experimental import multihost_utils

    with collective(doing):
        return np.asarray(multihost_utils.process_allgather(np.asarray(value)))


def differing_processes(text: str) -> list[int]:
    """The processes whose ``text`` differs from process 0's (the same list on every process)."""
    import hashlib

    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
    every = gather(digest, "comparing the processes' buffers")
    return [index for index in range(len(every)) if not np.array_equal(every[index], every[0])]


_PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "heartbeat", "UNAVAILABLE", "Gloo",
              "Socket closed", "Broken pipe", "DEADLINE_EXCEEDED", "unhealthy", "Connection refused")


def peer_failure(err: BaseException, doing: str) -> DistributedError | None:
    """The :class:`DistributedError` for ``err`` when it says another process of the run was lost, else None."""
    if jax.process_count() == 1 or isinstance(err, DistributedError):
        return None
    text = str(err)
    if not any(marker in text for marker in _PEER_LOST):
        return None
    first = text.strip().splitlines()[0][:300] if text.strip() else type(err).__name__
    return DistributedError(
        f"Process {jax.process_index()} of {jax.process_count()} lost another process of the run while "
        f"{doing} ({first}). Every process stops; the newest complete checkpoint is intact and resumes on any "
        "number of processes.")


@contextlib.contextmanager
def collective(doing):
    """Within the block, an error that says another process was lost becomes a :class:`DistributedError`.

    Args:
        doing: What the block does, for the message ("training after step 8"), or a
            function that returns it when the error comes.
    """
    try:
        yield
    except Exception as err:
        lost = peer_failure(err, doing() if callable(doing) else doing)
        if lost is None:
            raise
        raise lost from err


def exit_after(message, code: int = 1) -> None:
    """Print ``message`` to stderr and end the process at once, skipping JAX's shutdown handshake.

    After a lost process, ``jax.distributed``'s exit handler waits for it at a
    shutdown barrier and then aborts with a long C++ log; a script (or the
    command line) that catches :class:`DistributedError` ends here instead,
    with its message and exit status ``code``.
    """
    import sys

    print(str(message), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)
