"""Array conversion at the torch/JAX edge.

Contiguous tensors cross through DLPack without a copy, on CPU and CUDA alike;
everything DLPack cannot carry (non-contiguous or broadcast strides, tensors
on a device JAX does not see, dtypes either side lacks) falls back to a copy.
Values, dtype and device are preserved, with one exception that JAX itself
imposes: while ``jax_enable_x64`` is off (the default), JAX has no 64-bit
types, so ``float64`` becomes ``float32`` and ``int64`` becomes ``int32``
(values outside the int32 range raise :class:`~worldloom.core.errors.DataError`
rather than wrap around).

A zero-copy result shares memory with its source: writing into it in place
writes into the source. The model facade only ever reads what it converts.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from worldloom.core.arrays import as_array
from worldloom.core.errors import DataError, DeviceError

_INT32 = torch.iinfo(torch.int32)
_NARROWED = {torch.float64: torch.float32, torch.int64: torch.int32, torch.complex128: torch.complex64}


def x64_enabled() -> bool:
    """Whether JAX keeps 64-bit dtypes (``jax_enable_x64``)."""
    return bool(jax.config.jax_enable_x64)


# ---------------------------------------------------------------- devices


def jax_device(device: torch.device | str) -> jax.Device:
    """The JAX device that holds the same memory as torch ``device``.

    Raises:
        DeviceError: JAX sees no such device (e.g. a CPU-only JAX and a CUDA tensor).
    """
    device = torch.device(device)
    platform = {"cpu": "cpu", "cuda": "gpu"}.get(device.type)
    try:
        devices = jax.devices(platform) if platform else []
    except RuntimeError:
        devices = []
    index = device.index or 0
    if index >= len(devices):
        raise DeviceError(
            f"torch device {str(device)!r} has no JAX counterpart; JAX sees "
            f"{', '.join(str(d) for d in jax.devices())}."
        )
    return devices[index]


def torch_device(device: jax.Device) -> torch.device:
    """The torch device that holds the same memory as JAX ``device`` (``"cpu"`` for TPUs).

    Raises:
        DeviceError: a JAX GPU while torch has no CUDA.
    """
    if device.platform != "gpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"JAX device {device} is a GPU, but this PyTorch build has no CUDA support; "
                          "expected device='cpu' or a CUDA build of torch.")
    return torch.device("cuda", device.id if device.id < torch.cuda.device_count() else 0)


# ---------------------------------------------------------------- torch -> JAX


def _check_narrowing(tensor: torch.Tensor) -> None:
    """Raise DataError if JAX would wrap an int64 tensor around (x64 off)."""
    if tensor.dtype != torch.int64 or x64_enabled() or tensor.numel() == 0:
        return
    low, high = int(tensor.min()), int(tensor.max())
    if low < _INT32.min or high > _INT32.max:
        raise DataError(
            f"int64 tensor holds values in [{low}, {high}], outside the int32 range JAX uses while "
            "jax_enable_x64 is off; expected values in "
            f"[{_INT32.min}, {_INT32.max}] (or enable x64: jax.config.update('jax_enable_x64', True))."
        )


def _numpy_copy(tensor: torch.Tensor) -> np.ndarray:
    """A host NumPy copy of ``tensor``, bfloat16 included (through ml_dtypes)."""
    host = tensor.detach().to("cpu").contiguous()
    if host.dtype == torch.bfloat16:
        import ml_dtypes

        return host.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return host.numpy().copy()


def to_jax(tensor: Any, device: jax.Device | None = None) -> jax.Array:
    """Convert a torch tensor (or NumPy/JAX/array-like) to a JAX array.

    Args:
        tensor: A ``torch.Tensor`` of any shape; ``requires_grad`` is fine (the
            result is detached). Anything else goes through
            :func:`worldloom.core.arrays.as_array`.
        device: Target JAX device; by default the one matching the tensor's.

    Returns:
        A JAX array of the same shape, values and dtype (64-bit dtypes narrowed
        while x64 is off), sharing memory with ``tensor`` when it is contiguous
        and on a device JAX sees.

    Raises:
        DataError: an int64 tensor that does not fit int32 while x64 is off; a
            tensor on the ``meta`` device (it has no values).
    """
    if not isinstance(tensor, torch.Tensor):
        out = as_array(tensor)
        return out if device is None else jax.device_put(out, device)
    source = tensor.detach()
    if source.device.type == "meta":
        raise DataError(f"A tensor on the 'meta' device holds no values (shape {list(source.shape)}, "
                        f"{source.dtype}); expected a tensor on the CPU or a CUDA device.")
    if source.is_conj():
        source = source.resolve_conj()
    if source.is_neg():
        source = source.resolve_neg()
    _check_narrowing(source)
    if source.dtype in _NARROWED and not x64_enabled():
        source = source.to(_NARROWED[source.dtype])  # JAX has no 64-bit types: one narrowing copy
    if not source.is_contiguous():
        source = source.contiguous()  # DLPack import needs compact strides: one copy
    try:
        out = jnp.from_dlpack(source)
    except (BufferError, RuntimeError, TypeError, ValueError):
        # A device or dtype DLPack cannot carry: copy through the host.
        if device is None:
            try:
                device = jax_device(source.device)
            except DeviceError:
                device = None  # JAX's default device
        out = jax.device_put(_numpy_copy(source), device)
    if device is not None and out.devices() != {device}:
        out = jax.device_put(out, device)
    return out


# ---------------------------------------------------------------- JAX -> torch


def to_torch(array: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """Convert a JAX (or NumPy) array to a torch tensor.

    Args:
        array: A JAX array, NumPy array, scalar or torch tensor.
        device: Target torch device; by default the one matching the array's.

    Returns:
        A tensor of the same shape, values and dtype, sharing memory with a
        JAX ``array`` when DLPack can carry it and the devices match.
    """
    if isinstance(array, torch.Tensor):
        out = array
    elif isinstance(array, jax.Array):
        try:
            out = torch.from_dlpack(array)
        except (BufferError, RuntimeError, TypeError, ValueError):
            out = _torch_copy(np.asarray(array))
    else:
        out = _torch_copy(np.asarray(array))
    if device is not None and out.device != torch.device(device):
        out = out.to(device)
    return out


def _torch_copy(array: np.ndarray) -> torch.Tensor:
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(np.array(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(array))


# ---------------------------------------------------------------- pytrees


def tree_to_jax(tree: Any, device: jax.Device | None = None) -> Any:
    """:func:`to_jax` on every torch tensor leaf of a JAX pytree; other leaves stay."""
    return jax.tree_util.tree_map(
        lambda x: to_jax(x, device) if isinstance(x, torch.Tensor) else x, tree
    )


def tree_to_torch(tree: Any, device: torch.device | str | None = None) -> Any:
    """:func:`to_torch` on every array leaf of a JAX pytree; other leaves stay."""
    return jax.tree_util.tree_map(
        lambda x: to_torch(x, device) if isinstance(x, (jax.Array, np.ndarray)) else x, tree
    )
