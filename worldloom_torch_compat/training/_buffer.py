"""``ReplayBuffer`` with torch at the edge.

It holds a :class:`worldloom.training.ReplayBuffer` (``.jax_buffer``) and
converts: ``add_episode`` takes torch tensors or NumPy arrays, ``sample``
returns torch tensors, and image observations are channels first
(``[..., C, H, W]``) here while the buffer stores them channels last for JAX.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np
import torch

from worldloom.core.errors import DeviceError
from worldloom.training import ReplayBuffer as JaxReplayBuffer
from worldloom.training import _buffer_io
from worldloom.training.data import shape_tuple
from worldloom_torch_compat.model import channels_first, channels_last


def torch_target(device) -> torch.device | None:
    """``device`` as a ``torch.device`` (``None`` stays ``None``).

    Raises:
        DeviceError: a CUDA device while torch has no CUDA.
    """
    if device is None:
        return None
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} is not available to torch (no CUDA); expected 'cpu'.")
    return device


def _numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


class ReplayBuffer:
    """Storage for trajectories, sampled as ``[B, T, ...]`` torch tensors.

    Arguments and behaviour as :class:`worldloom.training.ReplayBuffer`, with
    image ``obs_shape`` channels first, ``(C, H, W)``.

    Example:
        >>> buffer = ReplayBuffer(capacity=1000, obs_shape=(4,), action_dim=2)
        >>> buffer.add_episode(obs=torch.zeros(10, 4), actions=torch.zeros(10, 2),
        ...                    rewards=torch.ones(10), dones=torch.arange(10) == 9)
        >>> buffer.sample(batch_size=2, seq_len=5, device="cpu")["obs"].shape
        torch.Size([2, 5, 4])
    """

    def __init__(self, capacity: int, obs_shape, action_dim: int, *, obs_dtype=None, seed: int = 0):
        if isinstance(obs_dtype, torch.dtype):
            obs_dtype = torch.empty(0, dtype=obs_dtype).numpy().dtype
        self.jax_buffer = JaxReplayBuffer(capacity, channels_last(shape_tuple("obs_shape", obs_shape)), action_dim,
                                          obs_dtype=obs_dtype, seed=seed)

    @classmethod
    def wrap(cls, buffer: JaxReplayBuffer) -> ReplayBuffer:
        """Give an existing worldloom buffer the torch edge (no copy)."""
        out = cls.__new__(cls)
        out.jax_buffer = buffer
        return out

    # ------------------------------------------------------------ facts

    @property
    def is_image(self) -> bool:
        return len(self.jax_buffer.obs_shape) == 3

    @property
    def obs_shape(self) -> tuple:
        """Observation shape; images ``(C, H, W)``."""
        return channels_first(self.jax_buffer.obs_shape)

    @property
    def action_dim(self) -> int:
        return self.jax_buffer.action_dim

    @property
    def capacity(self) -> int:
        return self.jax_buffer.capacity

    @property
    def max_sample_bytes(self) -> int | None:
        """Largest batch in bytes :meth:`sample` may build (``None``: half of the memory the process may use)."""
        return self.jax_buffer.max_sample_bytes

    @max_sample_bytes.setter
    def max_sample_bytes(self, value: int | None) -> None:
        self.jax_buffer.max_sample_bytes = value

    @property
    def num_episodes(self) -> int:
        """Number of whole episodes held."""
        return self.jax_buffer.num_episodes

    @property
    def num_transitions(self) -> int:
        """Number of transitions held."""
        return self.jax_buffer.num_transitions

    def __len__(self) -> int:
        return self.jax_buffer.num_transitions

    def __repr__(self) -> str:
        return repr(self.jax_buffer).replace(f"obs_shape={self.jax_buffer.obs_shape}", f"obs_shape={self.obs_shape}")

    # ------------------------------------------------------------ data

    def _obs_in(self, obs: Any) -> Any:
        obs = _numpy(obs)
        if obs is None or not self.is_image:
            return obs
        obs = np.asarray(obs)
        return np.moveaxis(obs, -3, -1) if obs.ndim >= 3 else obs

    def add_episode(self, obs, actions, rewards, dones=None, terminated=None, truncated=None, final_obs=None) -> None:
        """Append one episode of ``T`` transitions (tensors or arrays).

        Args:
            obs: ``[T, *obs_shape]`` (images ``[T, C, H, W]``).
            actions: ``[T, action_dim]``, or ``[T]``/``[T, 1]`` integer indices.
            rewards: ``[T]``.
            dones: ``[T]`` bool; ``terminated``/``truncated``/``final_obs`` as in
                :meth:`worldloom.training.ReplayBuffer.add_episode`. Without any of
                them (the original's ``add_episode(obs, actions, rewards)``) the
                episode ends at its last step.
        """
        if dones is None and terminated is None and truncated is None:
            dones = np.arange(len(_numpy(rewards))) == len(_numpy(rewards)) - 1
        self.jax_buffer.add_episode(self._obs_in(obs), _numpy(actions), _numpy(rewards), dones=_numpy(dones),
                                    terminated=_numpy(terminated), truncated=_numpy(truncated),
                                    final_obs=self._obs_in(final_obs))

    def sample(self, batch_size: int, seq_len: int, device=None) -> dict[str, torch.Tensor]:
        """Sample ``batch_size`` windows of ``seq_len`` consecutive transitions.

        Args:
            batch_size: ``B``.
            seq_len: ``T``.
            device: torch device of the tensors (``"cpu"``, ``"cuda"``, ...); CPU when None.

        Returns:
            torch tensors ``obs [B, T, *obs_shape]`` (images ``[B, T, C, H, W]``),
            ``actions [B, T, A]``, ``rewards [B, T]``, ``continues [B, T]``,
            ``is_first [B, T]`` and ``terminals [B, T]``.

        Raises:
            ConfigError: ``batch_size``/``seq_len`` not integers >= 1, or a batch
                larger than ``max_sample_bytes``.
            DataError: fewer than ``seq_len`` transitions held.
            DeviceError: a device torch cannot use.
        """
        target = torch_target(device)
        return self._to_torch(self.jax_buffer.sample(batch_size, seq_len), target)

    def _to_torch(self, batch: dict[str, np.ndarray], target: torch.device | None = None) -> dict[str, torch.Tensor]:
        """A worldloom batch (NumPy, images channels last) as :meth:`sample` returns it, on ``target``."""
        if self.is_image:
            batch["obs"] = np.ascontiguousarray(np.moveaxis(batch["obs"], -1, -3))
        out = {key: torch.from_numpy(value) for key, value in batch.items()}
        if target is not None and target.type != "cpu":
            out = {key: value.to(target, non_blocking=True) for key, value in out.items()}
        return out

    @classmethod
    def from_trajectories(cls, trajectories, capacity: int | None = None, *, seed: int = 0) -> ReplayBuffer:
        """A buffer holding ``trajectories``: dicts with ``obs``, ``actions``, ``rewards`` and optionally
        ``dones``/``terminated``/``truncated`` (see :meth:`add_episode`), one per episode.

        ``obs_shape`` and ``action_dim`` are read from the first trajectory; ``capacity``
        defaults to their total length.

        Raises:
            DataError: no trajectories, or one without ``obs``/``actions``/``rewards``.
        """
        from worldloom.core.errors import DataError

        trajectories = list(trajectories)
        if not trajectories or not all(isinstance(t, dict) and {"obs", "actions", "rewards"} <= set(t)
                                       for t in trajectories):
            raise DataError("ReplayBuffer.from_trajectories: expected a non-empty list of dicts with 'obs', "
                            "'actions' and 'rewards'.")
        first = trajectories[0]
        actions = np.asarray(_numpy(first["actions"]))
        total = sum(len(_numpy(t["rewards"])) for t in trajectories)
        buffer = cls(capacity or total, tuple(np.shape(_numpy(first["obs"]))[1:]),
                     int(actions.shape[-1]) if actions.ndim > 1 else int(actions.max()) + 1, seed=seed)
        keys = ("obs", "actions", "rewards", "dones", "terminated", "truncated", "final_obs")
        for trajectory in trajectories:
            buffer.add_episode(**{k: trajectory[k] for k in keys if k in trajectory})
        return buffer

    # ------------------------------------------------------------ files

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the buffer to ``path`` (``.npz``), in worldloom's format; as worldloom's ``ReplayBuffer.save``,
        a file there that is not a buffer file (nor empty) is replaced only with ``overwrite=True``."""
        self.jax_buffer.save(path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, *, capacity: int | None = None, obs_shape=None,
             action_dim: int | None = None, seed: int | None = None) -> ReplayBuffer:
        """Read a buffer written by :meth:`save`, or by WorldLoom's ``ReplayBuffer.save`` (``obs_shape``
        channels first for images).

        A file of worldloom's format (signed, see :mod:`worldloom.core.archives`)
        holds images channels last, as the JAX buffer does. A file of WorldLoom's
        format (unsigned, with none of the arrays worldloom adds, see
        :func:`source_format`) holds them ``[N, C, H, W]``; they are turned
        channels last as they are read.

        Raises:
            CheckpointError: a missing, unreadable or corrupt file.
            DataError: arrays of inconsistent lengths, or shapes other than requested.
        """
        shape = None if obs_shape is None else shape_tuple("obs_shape", obs_shape)
        if not source_format(path):
            return cls.wrap(JaxReplayBuffer.load(path, capacity=capacity, obs_shape=channels_last(shape),
                                                 action_dim=action_dim, seed=seed))
        loaded = JaxReplayBuffer.load(path, capacity=capacity, obs_shape=shape, action_dim=action_dim, seed=seed)
        if len(loaded.obs_shape) != 3:
            return cls.wrap(loaded)
        images = JaxReplayBuffer(loaded.capacity, loaded.obs_shape[1:] + loaded.obs_shape[:1], loaded.action_dim,
                                 obs_dtype=loaded.obs_dtype, seed=loaded.seed)
        for index in range(loaded.num_episodes):
            episode = loaded.episode(index)
            final = episode["final_obs"]
            images.add_episode(np.moveaxis(episode["obs"], 1, -1), episode["actions"], episode["rewards"],
                               dones=episode["dones"], terminated=episode["terminals"],
                               final_obs=None if final is None else np.moveaxis(final, 0, -1))
        return cls.wrap(images)


#: The arrays WorldLoom's ``ReplayBuffer.save`` writes (worldloom's files add ``terminals``, ``seed``, ...).
SOURCE_KEYS = frozenset({"obs", "actions", "rewards", "dones", "obs_shape", "action_dim", "capacity"})


def source_format(path: str | os.PathLike) -> bool:
    """Whether ``path`` (or ``path.npz``, as load resolves it) is a buffer file in WorldLoom's format: an
    ``.npz`` without worldloom's signature whose arrays are among :data:`SOURCE_KEYS`. False for anything
    unreadable (the load then says what is wrong)."""
    try:
        with zipfile.ZipFile(_buffer_io.resolve(path)) as archive:  # the file load reads
            names = {name.removesuffix(".npy") for name in archive.namelist()}
            signed = archive.comment.startswith(b"worldloom ")
    except (TypeError, OSError, zipfile.BadZipFile, ValueError):
        return False
    return not signed and names <= SOURCE_KEYS


def unwrap_buffer(buffer: Any) -> Any:
    """The worldloom buffer behind ``buffer`` (a worldloom buffer passes through)."""
    return buffer.jax_buffer if isinstance(buffer, ReplayBuffer) else buffer
