"""The original library's import path of :class:`LatentState` (``worldloom.core.state``)."""

from worldloom.core.types import LatentState, Trajectory

__all__ = ["LatentState", "Trajectory"]
