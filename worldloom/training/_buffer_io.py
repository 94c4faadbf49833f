"""Reading and writing replay buffers as ``.npz`` files, atomically and checked.

A save is a signed archive of :mod:`worldloom.core.archives` (format
``worldloom-replay-buffer``, version 1): written under a locked temp name and
renamed into place, its signature's CRC-32 covering every byte. A load checks
the signature and version when the file has one (an ``.npz`` written by
``np.savez`` has none and is read with the zip's own checks), then the arrays
(:func:`read_npz`). Temp files of killed saves are removed at the next save or
load in the same directory (:func:`worldloom.core.archives.remove_temp_files`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worldloom.core.archives import as_path, remove_temp_files
from worldloom.core.archives import read_npz as read_archive
from worldloom.core.arrays import check_finite
from worldloom.core.errors import CheckpointError, DataError

FORMAT = "worldloom-replay-buffer"
VERSION = 1

REQUIRED = ("obs", "actions", "rewards", "dones")

remove_leftovers = remove_temp_files  # the temp files of killed saves, as in the module doc

__all__ = ["FORMAT", "VERSION", "as_path", "episode_ranges", "read_npz", "remove_leftovers", "resolve"]


# ------------------------------------------------------------ reading


def resolve(path) -> Path:
    """The file :meth:`ReplayBuffer.load` reads: ``path``, or ``path + ".npz"`` when only that exists."""
    path = as_path(path)
    try:
        if not path.is_file() and path.suffix != ".npz" and path.with_name(path.name + ".npz").is_file():
            path = path.with_name(path.name + ".npz")
        path.stat()
    except FileNotFoundError:
        pass
    except OSError as err:
        raise CheckpointError(f"Cannot read {str(path)!r}: expected a replay buffer file, got {err}.") from err
    return path


def read_npz(path, *, obs_shape=None, action_dim: int | None = None) -> tuple[Path, dict[str, np.ndarray]]:
    """Read and check a buffer file.

    Returns:
        The path read, and a dict with at least ``obs [N, *obs_shape]``,
        ``actions [N, A]``, ``rewards [N]``, ``dones [N]`` bool (every row
        that ends an episode), ``terminals [N]`` bool, ``final_obs [E,
        *obs_shape]`` and ``final_obs_episode [E]``.

    Raises:
        ConfigError: ``path`` is not a file name.
        CheckpointError: missing, unreadable, truncated or corrupt file, missing keys.
        DataError: inconsistent lengths, non-finite values, flags other than
            0/1, episode lengths that disagree with the dones, unexpected shapes.
    """
    path = resolve(path)
    if not path.is_file():
        raise CheckpointError(f"No replay buffer file at {str(path)!r}: expected an .npz written by "
                              "ReplayBuffer.save().")
    remove_leftovers(path.parent)
    data = read_archive(path, format=FORMAT, versions=(VERSION,), what="replay buffer", writer="ReplayBuffer.save()")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks {missing}; a replay buffer file holds {list(REQUIRED)} "
                              f"(found {sorted(data)}).")
    return path, _check(path, data, obs_shape, action_dim)


def _scalar(path: Path, data: dict, key: str, minimum: int) -> None:
    value = data.get(key)
    if value is not None and (value.shape != () or value.dtype.kind not in "iu" or int(value) < minimum):
        raise DataError(f"{path}: {key}: expected one integer >= {minimum}, got {value!r}.")


def _flags(path: Path, data: dict, key: str, count: int) -> np.ndarray:
    flags = data[key]
    if flags.shape != (count,):
        raise DataError(f"{path}: {key}: expected shape [{count}], got {list(flags.shape)}.")
    if flags.dtype == bool:
        return flags
    other = (flags != 0) & (flags != 1) if flags.dtype.kind in "biuf" else np.ones(count, bool)
    if other.any():
        row = int(np.flatnonzero(other)[0])
        raise DataError(f"{path}: {key}: expected 0/1 flags, got dtype {flags.dtype} with {int(other.sum())} "
                        f"other values (e.g. {flags[row].item()!r} at row {row}).")
    return flags.astype(bool)


def _check_episodes(path: Path, data: dict, count: int) -> None:
    """Episode lengths: integers >= 1 summing to ``count``; a done only at the last row of an episode."""
    lengths = data["episode_lengths"]
    expected = f"{path}: episode_lengths: expected integers >= 1 (one per episode) summing to {count}"
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
        raise DataError(f"{expected}, got {lengths.dtype} of shape {list(lengths.shape)}.")
    lengths = lengths.astype(np.int64)
    if np.any(lengths < 1) or int(lengths.sum()) != count:
        raise DataError(f"{expected}, got {len(lengths)} lengths from {lengths.min(initial=0)} to "
                        f"{lengths.max(initial=0)} summing to {int(lengths.sum())}; the file is inconsistent.")
    inner = np.ones(count, bool)
    inner[np.cumsum(lengths) - 1] = False
    stray = np.flatnonzero(data["dones"] & inner)
    if len(stray):
        episode = int(np.searchsorted(np.cumsum(lengths), stray[0], side="right"))
        raise DataError(f"{path}: dones: expected episodes to end only at the last row of each of the "
                        f"{len(lengths)} episode_lengths, got {len(stray)} dones inside an episode (first at "
                        f"row {int(stray[0])}, inside episode {episode}); the file is inconsistent.")
    data["episode_lengths"] = lengths


def _check(path: Path, data: dict, obs_shape, action_dim) -> dict:
    obs, actions, rewards = data["obs"], data["actions"], data["rewards"]
    for key in ("obs", "actions", "rewards"):
        if data[key].dtype.kind not in "biuf":
            raise DataError(f"{path}: {key}: expected numbers, got dtype {data[key].dtype}.")
    count = len(rewards) if rewards.ndim else 0
    if rewards.ndim != 1:
        raise DataError(f"{path}: rewards: expected shape [N], got {list(rewards.shape)}.")
    if obs.ndim < 2 or len(obs) != count or 0 in obs.shape[1:]:
        raise DataError(f"{path}: obs: expected shape [{count}, *obs_shape] with positive sizes, "
                        f"got {list(obs.shape)}.")
    if actions.ndim != 2 or len(actions) != count or actions.shape[1] < 1:
        raise DataError(f"{path}: actions: expected shape [{count}, action_dim], got {list(actions.shape)}.")
    _scalar(path, data, "capacity", 1)
    _scalar(path, data, "seed", 0)
    _scalar(path, data, "action_dim", 1)
    if "action_dim" in data and int(data["action_dim"]) != actions.shape[1]:
        raise DataError(f"{path}: actions have {actions.shape[1]} columns but the file records action_dim "
                        f"{int(data['action_dim'])}; the file is inconsistent.")
    recorded = data.get("obs_shape")
    if recorded is not None and (recorded.ndim != 1 or recorded.dtype.kind not in "iu"
                                 or tuple(int(d) for d in recorded) != obs.shape[1:]):
        raise DataError(f"{path}: obs has shape {list(obs.shape[1:])} per step but the file records "
                        f"obs_shape {recorded.tolist()}; the file is inconsistent.")
    if obs_shape is not None and tuple(np.atleast_1d(obs_shape).tolist()) != obs.shape[1:]:
        raise DataError(f"{path}: expected observations of shape {np.atleast_1d(obs_shape).tolist()}, "
                        f"the file holds {list(obs.shape[1:])}.")
    if action_dim is not None and action_dim != actions.shape[1]:
        raise DataError(f"{path}: expected action_dim {action_dim!r}, the file holds {actions.shape[1]}.")
    for key in ("obs", "actions", "rewards"):
        check_finite(f"{path}: {key}", data[key])
    dones = _flags(path, data, "dones", count)
    terminals = _flags(path, data, "terminals", count) if "terminals" in data else dones.copy()
    data["dones"], data["terminals"] = dones | terminals, terminals  # a terminal also ends its episode
    if "episode_lengths" in data:
        _check_episodes(path, data, count)
    episodes = len(episode_ranges(data))
    data.setdefault("final_obs", np.zeros((0, *obs.shape[1:]), obs.dtype))
    data.setdefault("final_obs_episode", np.zeros((0,), np.int64))
    final, owners = data["final_obs"], data["final_obs_episode"]
    if (owners.ndim != 1 or owners.dtype.kind not in "iu" or len(np.unique(owners)) != len(owners)
            or np.any(owners < 0) or np.any(owners >= episodes)):
        raise DataError(f"{path}: final_obs_episode: expected distinct episode indices in [0, {episodes}), "
                        f"got {owners.tolist()}.")
    if final.dtype.kind not in "biuf" or final.shape != (len(owners), *obs.shape[1:]):
        raise DataError(f"{path}: final_obs: expected numbers of shape [{len(owners)}, "
                        f"{', '.join(map(str, obs.shape[1:]))}], got {final.dtype} {list(final.shape)}.")
    check_finite(f"{path}: final_obs", final)
    return data


def read_rewards(path) -> np.ndarray:
    """The rewards of every transition of a saved buffer, its other arrays left unread.

    Raises:
        CheckpointError: a missing, unreadable or damaged file.
        DataError: a file without rewards.
    """
    data = read_archive(path, format=FORMAT, versions=(VERSION,), what="replay buffer", writer="ReplayBuffer.save()",
                        names=("rewards",))
    if "rewards" not in data:
        raise DataError(f"{path}: expected a saved replay buffer with a 'rewards' array, got none.")
    return np.asarray(data["rewards"], np.float64)


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
