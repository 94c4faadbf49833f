"""Where a run's arrays live: one device, or a data-parallel mesh; the bound on dispatches in flight; and
one process's share of a run whose processes each sample their own batches (:class:`ProcessShare`).

Data parallel: a ``Mesh`` of ``N`` devices with one axis, ``"batch"``. The
train state, keys and any device replay table are replicated; batches
``[K, B, T, ...]`` are sharded on ``B`` (``P(None, "batch")``). One jitted
program runs on all devices and XLA inserts the all-reduce of the gradients.
Across hosts (after ``jax.distributed.initialize()``) ``jax.devices()`` spans
every host; each host gathers only the windows of its own devices and hands
them to ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from worldloom import distributed
from worldloom.core.errors import ConfigError

AXIS = "batch"


def data_parallel_mesh(setting: bool | int, device: jax.Device, batch_size: int) -> Mesh | None:
    """The mesh for ``TrainingConfig.data_parallel``, or ``None`` for one device.

    Args:
        setting: ``False``/``1``: one device; ``True``: every device of
            ``device``'s platform (on all hosts); ``N``: the first ``N``. With
            several processes (``worldloom.distributed``) it is always every
            device of every process.
        device: The training device (its platform picks the devices).
        batch_size: ``B``; it must split evenly over the devices.

    Raises:
        ConfigError: more devices asked for than present, or ``B`` not divisible.
    """
    devices = jax.devices(device.platform)
    if jax.process_count() > 1:  # several processes train one model: always every device of every process
        if setting is not True and setting is not False and int(setting) != len(devices):
            raise ConfigError(f"data_parallel={setting}: with {jax.process_count()} processes the run spans every "
                              f"device of every process, {len(devices)} {device.platform} devices; expected True, "
                              f"False or {len(devices)}.")
        setting = True
    if setting is False or (setting is not True and setting == 1):  # True == 1 in Python
        return None
    count = len(devices) if setting is True else int(setting)
    if count > len(devices):
        raise ConfigError(f"data_parallel={setting} asks for {count} {device.platform} devices; "
                          f"{len(devices)} are present.")
    if batch_size % count:
        raise ConfigError(f"batch_size must be divisible by the {count} data-parallel devices; got "
                          f"batch_size={batch_size}.")
    if count == 1:
        return None
    return Mesh(np.array(devices[:count]), (AXIS,))


class Placement:
    """Puts the trainer's arrays on one device or on a mesh (see the module docstring).

    Attributes:
        device: This process's first device (where the model handle lives).
        mesh: The data-parallel mesh, or ``None``.
        size: Number of devices.
    """

    def __init__(self, device: jax.Device, mesh: Mesh | None = None):
        self.mesh = mesh
        self.device = device if mesh is None else next(  # this process's first device of the mesh
            d for d in mesh.devices.flat if d.process_index == jax.process_index())
        self.size = 1 if mesh is None else mesh.size
        self._replicated = None if mesh is None else NamedSharding(mesh, P())
        self._chunks = None if mesh is None else NamedSharding(mesh, P(None, AXIS))

    def replicate(self, tree):
        """``tree`` committed to the device, or replicated on every device of the mesh."""
        if self.mesh is None:
            return jax.device_put(tree, self.device)
        if jax.process_count() == 1:
            return jax.device_put(tree, self._replicated)

        def put(leaf):
            host = np.asarray(jax.device_get(leaf))
            return jax.make_array_from_callback(host.shape, self._replicated, lambda index: host[index],
                                                dtype=host.dtype)

        return jax.tree_util.tree_map(put, tree)

    def scalar(self, value):
        """A step counter as the program takes it (a global array across hosts)."""
        return self.replicate(value) if jax.process_count() > 1 and self.mesh is not None else value

    def chunk(self, rows: np.ndarray, gather: Callable[[np.ndarray], dict]) -> dict[str, jax.Array]:
        """The batches at ``rows`` ``[K, B, T]``, gathered by ``gather`` and placed (sharded on ``B``)."""
        if self.mesh is None:
            return jax.device_put(gather(rows), self.device)
        shape = rows.shape
        lo, hi = self._local_batch(shape)
        local = gather(rows[:, lo:hi])
        return {key: jax.make_array_from_process_local_data(self._chunks, value, (*shape[:2], *value.shape[2:]))
                for key, value in local.items()}

    def chunk_local(self, arrays: dict[str, np.ndarray], batch_size: int) -> dict[str, jax.Array]:
        """This process's own share ``[K, B / processes, ...]`` of batches ``[K, B, ...]``, placed (sharded on B)."""
        if self.mesh is None:
            return jax.device_put(arrays, self.device)
        return {key: jax.make_array_from_process_local_data(self._chunks, value,
                                                            (value.shape[0], batch_size, *value.shape[2:]))
                for key, value in arrays.items()}

    def _local_batch(self, shape: tuple) -> tuple[int, int]:
        """The rows ``[lo, hi)`` of the batch axis that this host's devices hold."""
        indices = self._chunks.addressable_devices_indices_map(shape).values()
        spans = [index[1].indices(shape[1])[:2] for index in indices]
        return min(s for s, _ in spans), max(e for _, e in spans)

    def fetch(self, tree):
        """``tree`` as host NumPy arrays (replicated arrays are read from this host's first copy)."""
        return jax.device_get(self.local(tree))

    def local(self, tree):
        """``tree``'s replicated arrays as arrays on one local device (unchanged on one host)."""
        if self.mesh is None or jax.process_count() == 1:
            return tree
        return jax.tree_util.tree_map(lambda leaf: leaf.addressable_data(0), tree)


class DispatchQueue:
    """Dispatches in flight, oldest first, at most ``limit`` of them.

    JAX dispatches asynchronously; :meth:`push` hands back the dispatches that
    must be finished (and reported) so that no more than ``limit`` remain
    queued. Bounding the queue bounds memory and, with collectives across
    devices, the work XLA has to rendezvous at once (hundreds of queued
    multi-device steps can time out on CPU).
    """

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self._pending: collections.deque = collections.deque()

    def push(self, item) -> list:
        """Add a dispatch; returns those to finish now (oldest first)."""
        self._pending.append(item)
        done = []
        while len(self._pending) >= self.limit:
            done.append(self._pending.popleft())
        return done

    def drain(self) -> list:
        """Every pending dispatch (oldest first); the queue is empty after."""
        done = list(self._pending)
        self._pending.clear()
        return done

    def __len__(self) -> int:
        return len(self._pending)


class ProcessShare:
    """One process's part of a run that samples its own batches (the online agents).

    Across several processes (``worldloom.distributed``) each collects and all learn as one. Every process steps its
    own environments (seeded by its index) into its own replay, acts with its own copy of the params, and draws ``B
    / processes`` windows of each update from its replay. The windows of all processes form the global batch of one
    jitted update over a mesh of every process's devices (sharded on the batch axis; params and optimiser state
    replicated), so the gradient all-reduce happens inside the update and every process ends each update with the
    same params. Environment steps are counted over all processes, as over several environments: after each step of
    the loop the processes agree on the steps taken and on whether every replay is ready, so they run the same
    number of updates. Process 0 writes the logs, plots, the saved agent and the shared part of the checkpoints;
    each process keeps its own replay in its checkpoint.

    In one process every method is the identity.

    Args:
        device: This process's device.
        batch_size: The global batch ``B``.
    """

    def __init__(self, device: jax.Device, batch_size: int):
        self.count, self.index = distributed.process_count(), distributed.process_index()
        self.batch_size = batch_size
        self.local_batch = batch_size
        if self.count == 1:
            self.place = None
            return
        mesh = data_parallel_mesh(True, device, batch_size)  # ConfigError unless B splits over the devices
        self.place = Placement(device, mesh)
        self.rows = NamedSharding(mesh, P(AXIS))
        self.replicated = NamedSharding(mesh, P())
        local = sum(d.process_index == self.index for d in mesh.devices.flat)
        self.local_batch = batch_size // mesh.size * local
        self._step = None

    @property
    def primary(self) -> bool:
        return self.index == 0

    def replicate(self, tree):
        return tree if self.place is None else self.place.replicate(tree)

    def local(self, tree):
        """Replicated arrays as this process's copy."""
        return tree if self.place is None else self.place.local(tree)

    def fetch(self, tree):
        """Replicated arrays as host NumPy arrays."""
        return tree if self.place is None else self.place.fetch(tree)

    def batch(self, local: dict) -> dict:
        """This process's ``local_batch`` windows as its share of the global batch (batch axis first)."""
        if self.place is None:
            return local
        return {key: jax.make_array_from_process_local_data(self.rows, np.asarray(value),
                                                            (self.batch_size, *np.shape(value)[1:]))
                for key, value in local.items()}

    def local_rows(self, value, axis: int = 0) -> np.ndarray:
        """This process's rows of an output sharded on its batch axis ``axis``, in the order it sampled them."""
        if self.place is None:
            return np.asarray(value)
        shards = sorted(value.addressable_shards, key=lambda shard: shard.index[axis].start or 0)
        return np.concatenate([np.asarray(shard.data) for shard in shards], axis)

    def chunk(self, local: dict) -> dict:
        """This process's ``[K, local_batch, ...]`` windows as its share of ``K`` global batches (sharded on B)."""
        return local if self.place is None else self.place.chunk_local(local, self.batch_size)

    def counter(self, value):
        """A key or step counter as a program over every process takes it (replicated)."""
        return value if self.place is None else self.place.replicate(value)

    def jit(self, step):
        """``step(state, batch, key) -> (state, metrics, *outputs)`` jitted; across processes with the state and
        metrics replicated and the further outputs (per-window posteriors) sharded like the batch."""
        if self.place is None:
            return jax.jit(step, donate_argnums=0)

        def run(state, batch, key):
            if self._step is None:
                _, _, *outputs = jax.eval_shape(step, state, batch, key)
                rows = jax.tree_util.tree_map(lambda _: self.rows, outputs)
                self._step = jax.jit(step, donate_argnums=0,
                                     out_shardings=(self.replicated, self.replicated, *rows))
            return self._step(state, batch, self.replicate(key))

        return run

    def agree(self, stepped: int, ready: bool) -> tuple[int, bool]:
        """Environment steps taken by all processes this loop step, and whether every replay is ready."""
        if self.count == 1:
            return stepped, ready
        every = distributed.gather(np.array([stepped, int(ready)], np.int64), "collecting experience")
        return int(every[:, 0].sum()), bool(every[:, 1].all())

    def everyone(self, flag: bool) -> bool:
        """Whether ``flag`` holds in every process."""
        return bool(distributed.gather(np.int64(bool(flag)), "agreeing on the run's state").all())

    def primary_state(self, train_state):
        """The train state a checkpoint of this process holds: process 0's host copy; the others hold none."""
        if self.count == 1:
            return train_state
        return self.fetch(train_state) if self.primary else None

    def barrier(self, name: str) -> None:
        distributed.barrier(name)
