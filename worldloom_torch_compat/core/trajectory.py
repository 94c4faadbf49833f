"""``Trajectory`` (torch tensors) at the original library's path ``worldloom.core.trajectory``."""

from worldloom_torch_compat.types import Trajectory

__all__ = ["Trajectory"]
