"""The original library's exception names; the same classes as :mod:`worldloom.core.exceptions`."""

from worldloom.core.exceptions import *  # noqa: F403 - a re-export
from worldloom.core.exceptions import __all__  # noqa: F401
