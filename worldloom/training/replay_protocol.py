"""The replay protocol the online agents share: ``add``/``sample``/``update``/``save``/``load``, typed batches.

:class:`~worldloom.agents.replay.StreamReplay` (DreamerV3: one row per step
as it happens) and :class:`~worldloom.training.episode_replay.EpisodeReplay`
(TD-MPC2: whole episodes) implement :class:`Replay`. A sample is a
:class:`SampledBatch`: the ``[B, T, ...]`` arrays and where they came from,
which is what :meth:`Replay.update` takes back with the values an update
computed for those rows (DreamerV3's fresh posteriors). The documented
:class:`~worldloom.training.ReplayBuffer` keeps its own API; ``EpisodeReplay``
holds one.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np


class SampledBatch(NamedTuple):
    """A sampled batch and its locations; unpacks as ``batch, where = replay.sample(...)``.

    Attributes:
        data: ``{name: [B, T, ...]}`` NumPy arrays (the replay's fields).
        where: Where the windows lie, for :meth:`Replay.update` (``None`` when
            the replay stores nothing back).
    """

    data: dict[str, np.ndarray]
    where: Any


class WindowLocations(NamedTuple):
    """Rows of a stream replay's sampled windows; unpacks as ``streams, slots = where``.

    Attributes:
        streams: ``[B]`` the stream of each window.
        slots: ``[B, T]`` the ring slots of its rows.
    """

    streams: np.ndarray
    slots: np.ndarray


@runtime_checkable
class Replay(Protocol):
    """What the run loop needs of a replay."""

    def __len__(self) -> int: ...

    def add(self, step: dict) -> None:
        """Store new experience (a step of every stream, or an episode)."""

    def sample(self, batch_size: int, length: int) -> SampledBatch:
        """``batch_size`` windows of ``length`` rows."""

    def update(self, where: Any, values: dict) -> None:
        """Store values an update computed for the rows ``where`` names (a no-op where nothing is stored back)."""

    def save(self, path: str | os.PathLike) -> None:
        """Write the replay's state to ``path`` (its rows, or for a disk replay their checksums and counters)."""

    def load(self, path: str | os.PathLike) -> Replay:
        """Restore :meth:`save`'s state into this replay; returns it."""


__all__ = ["Replay", "SampledBatch", "WindowLocations"]
