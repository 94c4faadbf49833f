"""Reading and writing replay buffers as ``.npz`` files, atomically and checked."""

from __future__ import annotations

import os
import uuid
import zipfile
from pathlib import Path

import numpy as np

from worldloom.core.arrays import check_finite
from worldloom.core.errors import CheckpointError, DataError

REQUIRED = ("obs", "actions", "rewards", "dones")


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` under a temporary name, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_npz(path: str | os.PathLike, *, obs_shape=None, action_dim: int | None = None) -> dict[str, np.ndarray]:
    """Read and check a buffer file.

    Returns:
        A dict with at least ``obs [N, *obs_shape]``, ``actions [N, A]``,
        ``rewards [N]``, ``dones [N]`` bool, ``terminals [N]`` bool,
        ``final_obs [E, *obs_shape]`` and ``final_obs_episode [E]``.

    Raises:
        CheckpointError: missing or unreadable file, missing keys.
        DataError: inconsistent lengths, non-finite values, unexpected shapes.
    """
    path = Path(path)
    if not path.is_file() and path.suffix != ".npz" and path.with_name(path.name + ".npz").is_file():
        path = path.with_name(path.name + ".npz")
    if not path.is_file():
        raise CheckpointError(f"No replay buffer file at {str(path)!r}: expected an .npz written by "
                              "ReplayBuffer.save().")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise CheckpointError(f"{str(path)!r} is not a readable .npz replay buffer ({err}); "
                              "the file is corrupt.") from err
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks {missing}; a replay buffer file holds {list(REQUIRED)} "
                              f"(found {sorted(data)}).")
    return _check(path, data, obs_shape, action_dim)


def _check(path: Path, data: dict, obs_shape, action_dim) -> dict:
    obs, actions, rewards = data["obs"], data["actions"], data["rewards"]
    count = len(rewards)
    if rewards.ndim != 1:
        raise DataError(f"{path}: rewards: expected shape [N], got {list(rewards.shape)}.")
    if obs.ndim < 2 or len(obs) != count:
        raise DataError(f"{path}: obs: expected shape [{count}, *obs_shape], got {list(obs.shape)}.")
    if actions.ndim != 2 or len(actions) != count:
        raise DataError(f"{path}: actions: expected shape [{count}, action_dim], got {list(actions.shape)}.")
    for key in ("dones", "terminals"):
        if key in data and data[key].shape != (count,):
            raise DataError(f"{path}: {key}: expected shape [{count}], got {list(data[key].shape)}.")
    if "obs_shape" in data and tuple(int(d) for d in data["obs_shape"]) != obs.shape[1:]:
        raise DataError(f"{path}: obs has shape {list(obs.shape[1:])} per step but the file records "
                        f"obs_shape {data['obs_shape'].tolist()}; the file is inconsistent.")
    if obs_shape is not None and tuple(int(d) for d in np.atleast_1d(obs_shape)) != obs.shape[1:]:
        raise DataError(f"{path}: expected observations of shape {np.atleast_1d(obs_shape).tolist()}, "
                        f"the file holds {list(obs.shape[1:])}.")
    if action_dim is not None and int(action_dim) != actions.shape[1]:
        raise DataError(f"{path}: expected action_dim {int(action_dim)}, the file holds {actions.shape[1]}.")
    for key in ("obs", "actions", "rewards"):
        check_finite(f"{path}: {key}", data[key])
    data["dones"] = data["dones"].astype(bool)
    data["terminals"] = data["terminals"].astype(bool) if "terminals" in data else data["dones"].copy()
    if "episode_lengths" in data:
        lengths = data["episode_lengths"].astype(np.int64)
        if lengths.ndim != 1 or np.any(lengths < 1) or int(lengths.sum()) != count:
            raise DataError(f"{path}: episode_lengths sum to {int(lengths.sum())}, expected {count} "
                            "(one length per episode); the file is inconsistent.")
        data["episode_lengths"] = lengths
    data.setdefault("final_obs", np.zeros((0, *obs.shape[1:]), obs.dtype))
    data.setdefault("final_obs_episode", np.zeros((0,), np.int64))
    if len(data["final_obs"]) != len(data["final_obs_episode"]) or data["final_obs"].shape[1:] != obs.shape[1:]:
        raise DataError(f"{path}: final_obs: expected shape [E, {', '.join(map(str, obs.shape[1:]))}], "
                        f"got {list(data['final_obs'].shape)}.")
    return data


def episode_ranges(data: dict) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` row ranges of the episodes in a checked file.

    Uses ``episode_lengths`` when present, else cuts after every done (a tail
    without a final done is one more episode).
    """
    count = len(data["rewards"])
    if "episode_lengths" in data:
        ends = np.cumsum(data["episode_lengths"])
    else:
        ends = np.flatnonzero(data["dones"]) + 1
        if count and (len(ends) == 0 or ends[-1] != count):
            ends = np.append(ends, count)
    starts = np.concatenate([[0], ends[:-1]])
    return [(int(s), int(e)) for s, e in zip(starts, ends)]
