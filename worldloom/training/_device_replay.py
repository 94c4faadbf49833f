"""On-device replay: the buffer's rows copied to the device once, windows sampled inside the jit.

The table holds what :meth:`ReplayBuffer.gather` gives for every held row
(so ``continues``, ``is_first`` and ``terminals`` are defined exactly as the
host sampler defines them) plus the valid window starts of the training
segments, computed on the host once. Inside the jitted program a batch is
``B`` starts drawn uniformly from those (``jax.random``, as the host sampler
draws uniformly over valid starts) and one vectorised gather of ``T`` rows
from each: no host round trip per dispatch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from worldloom.core.errors import DataError
from worldloom.training._buffer import ReplayBuffer

AUTO_CPU_BYTES = 1 << 30
"""``device_replay="auto"`` on a CPU: the table must be smaller than this."""
AUTO_DEVICE_FRACTION = 0.25
"""``device_replay="auto"`` on an accelerator: the table must be below this share of its memory."""


def table_nbytes(buffer: ReplayBuffer, layout: dict[str, np.dtype]) -> int:
    """Bytes the device table of ``buffer`` takes (held rows in the batch dtypes, plus the starts)."""
    probe = buffer.gather(np.zeros((1,), np.int64))
    per_row = sum(int(np.prod(probe[key].shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
                  for key, dtype in layout.items())
    return buffer.num_transitions * (per_row + 4)


def device_memory(device) -> int | None:
    """Memory of ``device`` in bytes, when the runtime reports it."""
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory statistics
        return None
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


def use_device_replay(setting, nbytes: int, device) -> bool:
    """Whether to sample on the device: ``setting`` True/False, or ``"auto"`` (the table is small enough)."""
    if setting != "auto":
        return bool(setting)
    memory = None if device.platform == "cpu" else device_memory(device)
    if memory is None:
        return nbytes < AUTO_CPU_BYTES
    return nbytes < AUTO_DEVICE_FRACTION * memory


def build_table(buffer: ReplayBuffer, segments: np.ndarray, seq_len: int,
                layout: dict[str, np.dtype]) -> dict[str, dict | np.ndarray]:
    """Host arrays of the device table.

    Returns:
        ``{"fields": {key: [N, ...]}, "starts": [S] int32}``: the held rows
        oldest first (``N = num_transitions``) as ``buffer.gather`` gives them,
        cast to ``layout``; and every valid window start within ``segments``,
        as an index into those rows.

    Raises:
        DataError: no segment holds ``seq_len`` rows, or too many rows for int32 indices.
    """
    oldest, written = (int(v) for v in buffer.segments()[0])
    if written - oldest >= np.iinfo(np.int32).max:
        raise DataError(f"On-device replay indexes rows with int32; the buffer holds {written - oldest} rows.")
    rows = buffer.gather(np.arange(oldest, written))
    fields = {key: rows[key].astype(dtype, copy=False) for key, dtype in layout.items()}
    segments = np.asarray(segments, np.int64)
    starts = [np.arange(begin, end - seq_len + 1) - oldest for begin, end in segments if end - begin >= seq_len]
    if not starts:
        raise DataError(f"Cannot sample windows of seq_len={seq_len} on the device: no segment of "
                        f"{segments.tolist()} holds that many rows.")
    return {"fields": fields, "starts": np.concatenate(starts).astype(np.int32)}


def sample_windows(table: dict, key: jax.Array, batch_size: int, seq_len: int) -> dict[str, jax.Array]:
    """``[B, T, ...]`` windows drawn uniformly over the table's valid starts (jittable).

    Args:
        table: A device table from :func:`build_table`.
        key: The step's sampling key.
        batch_size, seq_len: ``B`` and ``T`` (static).
    """
    starts = table["starts"]
    chosen = starts[jax.random.randint(key, (batch_size,), 0, starts.shape[0])]
    rows = chosen[:, None] + jnp.arange(seq_len, dtype=starts.dtype)
    return {name: values[rows] for name, values in table["fields"].items()}
