"""The original library's ``core`` paths, torch face: ``core.state`` and ``core.exceptions``."""

from worldloom_torch_compat.core import exceptions, state
from worldloom_torch_compat.types import LatentState, Trajectory

__all__ = ["LatentState", "Trajectory", "exceptions", "state"]
