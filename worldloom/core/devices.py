"""Device selection by name: "cpu", "cuda"/"gpu", "tpu" or "auto"."""

from __future__ import annotations

import jax

from worldloom.core.errors import DeviceError

_PLATFORM_ALIASES = {"cuda": "gpu", "gpu": "gpu", "rocm": "gpu", "cpu": "cpu", "tpu": "tpu"}


def available_platforms() -> list[str]:
    found = []
    for platform in ("gpu", "tpu", "cpu"):
        try:
            if jax.devices(platform):
                found.append(platform)
        except RuntimeError:
            pass
    return found


def resolve_device(device: str | jax.Device | None = "auto") -> jax.Device:
    """Return the first JAX device of the named kind among this process's devices.

    Args:
        device: ``"cpu"``, ``"cuda"``/``"gpu"``, ``"tpu"``, ``"auto"`` (the
            fastest present) or ``None`` (same as ``"auto"``), optionally with an
            index (``"cuda:1"``), or a ``jax.Device``.

    Raises:
        DeviceError: the device is not present; the message names those that are.
    """
    if isinstance(device, jax.Device):
        return device
    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        return jax.local_devices()[0]
    kind, _, index_text = name.partition(":")
    platform = _PLATFORM_ALIASES.get(kind)
    if platform is None:
        raise DeviceError(
            f"Unknown device {device!r}; expected one of 'cpu', 'cuda', 'gpu', 'tpu', 'auto'."
        )
    try:
        devices = jax.local_devices(backend=platform)
    except RuntimeError:
        devices = []
    if not devices:
        raise DeviceError(
            f"Device {device!r} is not available; available: {', '.join(available_platforms())} "
            f"(jax devices: {', '.join(str(d) for d in jax.devices())})."
        )
    index = int(index_text) if index_text else 0
    if index >= len(devices):
        raise DeviceError(f"Device {device!r} is not available; there are {len(devices)} {platform} devices.")
    return devices[index]


def device_name(device: jax.Device | None) -> str:
    if device is None:
        return "cpu"
    return {"gpu": "cuda"}.get(device.platform, device.platform)


def device_spec(device: jax.Device) -> str:
    """The name :func:`resolve_device` turns back into ``device``: ``"cpu"``, ``"cuda:1"``, ..."""
    name = device_name(device)
    local = jax.local_devices(backend=device.platform)
    index = local.index(device) if device in local else 0
    return name if index == 0 else f"{name}:{index}"
