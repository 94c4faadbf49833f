"""Where an online run keeps its replay: the ``replay_storage`` choice, checked and printed at start.

``"auto"`` puts the replay on disk when its full size (the rows RAM would
hold, :meth:`AgentRunConfig.capacity`, times the bytes of one row) is over
half of the host's available memory
(:func:`~worldloom.training.replay_storage.choose_storage`). A disk replay is
created for ``buffer_capacity`` rows in ``out_dir/replay`` (``replay.process<i>``
for the other processes of a multi-process run): its files are sparse, so
the room costs no disk until rows fill it, and a resumed run with more steps
needs no copy. Its full size is checked against the free disk at start. A
resumed run keeps the storage its checkpoint was saved with.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

from worldloom.core.errors import ConfigError
from worldloom.training.replay_storage import check_free_disk, choose_storage, size_text

__all__ = ["replay_options", "row_bytes", "saved_storage"]


def row_bytes(config, agent, obs_shape) -> int:
    """Bytes of one replay row of ``config.algo``'s replay (images stored as uint8, vectors as float32)."""
    model = agent.world_model.config
    obs = math.prod(obs_shape) * (1 if len(obs_shape) == 3 else 4)
    flags = 3  # DreamerV3: is_first, is_last, is_terminal; TD-MPC2: dones, terminals, is_first
    latents = 4 * model.deter + model.stoch_size if config.algo == "dreamerv3" else 0
    return obs + 4 * model.action_dim + 4 + flags + latents


def saved_storage(checkpoint_dir: Path) -> str | None:
    """``"disk"`` or ``"ram"``: how the replay in an agent checkpoint was saved (``None``: no replay file)."""
    path = Path(checkpoint_dir) / "replay.npz"
    try:
        with zipfile.ZipFile(path) as archive:
            return "disk" if "disk_id.npy" in archive.namelist() else "ram"
    except (OSError, zipfile.BadZipFile):
        return None  # the checkpoint's own checks report a missing or damaged file


def replay_options(config, agent, obs_shape, out_dir: Path, process: int, checkpoint_dir: Path | None,
                   announce: bool = True) -> dict:
    """The replay keywords of a run's collector: ``capacity``, ``online``, ``directory``, ``resume``.

    Args:
        config: The resolved :class:`AgentRunConfig`.
        agent: The agent (its world model's sizes give the row size).
        obs_shape: One observation.
        out_dir: The run's directory.
        process: This process's index (its replay directory's suffix).
        checkpoint_dir: The checkpoint being resumed, or ``None``.
        announce: Print the choice (one line).

    Raises:
        ConfigError: a disk replay the free disk cannot hold, or a storage other than the checkpoint's on resume.
    """
    row = row_bytes(config, agent, obs_shape)
    nbytes = row * config.capacity()
    saved = None if checkpoint_dir is None else saved_storage(checkpoint_dir)
    if saved is not None and config.replay_storage in ("auto", saved):
        storage, why = saved, "the storage the run was saved with"
    elif saved is not None:
        raise ConfigError(f"replay_storage={config.replay_storage!r}: the run in {out_dir} saved its replay "
                          f"{'on disk' if saved == 'disk' else 'in RAM'}; expected replay_storage 'auto' or "
                          f"{saved!r} to resume it.")
    else:
        storage, why = choose_storage(config.replay_storage, nbytes)
    options = {"capacity": config.capacity(), "online": config.algo == "dreamerv3" and config.replay_online}
    if storage == "disk":
        directory = Path(out_dir) / ("replay" if process == 0 else f"replay.process{process}")
        options.update(capacity=config.buffer_capacity, directory=directory, resume=saved == "disk")
        full = row * config.buffer_capacity
        check_free_disk(directory, full)
        where = f"on disk at {directory} ({size_text(full)} when full, sparse: disk is used as rows arrive)"
    else:
        where = f"in RAM ({size_text(nbytes)} when full)"
    if announce:
        queue = ", online queue on" if options["online"] else ""
        print(f"Replay: {options['capacity']:,} rows {where}; {why}{queue}", flush=True)
    return options
