"""The online loop across several processes (``worldloom.distributed``): each collects, all learn as one.

Every process steps its own environments (seeded by its index) into its own
replay, acts with its own copy of the params, and draws ``B / processes``
windows of each update from its replay. The windows of all processes form the
global batch of one jitted update over a mesh of every process's devices
(sharded on the batch axis; params and optimiser state replicated), so the
gradient all-reduce happens inside the update and every process ends each
update with the same params. Environment steps are counted over all
processes, as over several environments: after each step of the loop the
processes agree on the steps taken and on whether every replay is ready, so
they run the same number of updates. Process 0 writes the logs, plots, the
saved agent and the shared part of the checkpoints; each process keeps its own
replay in its checkpoint.

In one process every method is the identity.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from worldloom import distributed
from worldloom.training.parallel import AXIS, Placement, data_parallel_mesh


class ProcessShare:
    """One process's part of an online run (see the module docstring).

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

    def local_rows(self, value) -> np.ndarray:
        """This process's rows of a batch-sharded output, in the order it sampled them."""
        if self.place is None:
            return np.asarray(value)
        shards = sorted(value.addressable_shards, key=lambda shard: shard.index[0].start or 0)
        return np.concatenate([np.asarray(shard.data) for shard in shards])

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
