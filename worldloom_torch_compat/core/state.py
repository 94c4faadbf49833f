"""``LatentState`` (torch tensors) at the original library's path ``worldloom.core.state``."""

from worldloom_torch_compat.types import LatentState, Trajectory

__all__ = ["LatentState", "Trajectory"]
