"""The original's ``WorldModel`` at ``worldloom.core.protocol``: the torch face's model class."""

from worldloom_torch_compat.model import WorldModel

__all__ = ["WorldModel"]
