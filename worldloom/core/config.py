"""Config base: frozen dataclasses with checked overrides and JSON round trips."""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from worldloom.core.errors import ConfigError

C = TypeVar("C", bound="ConfigBase")


def _close_matches(name: str, choices) -> str:
    matches = difflib.get_close_matches(name, list(choices), n=3)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


@dataclasses.dataclass(frozen=True)
class ConfigBase:
    """A frozen dataclass config. Subclasses list fields with docstrings."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` when a value is out of range."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
        self.validate()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self: C, **overrides: Any) -> C:
        """A copy with ``overrides`` applied; unknown names are a ConfigError."""
        names = self.field_names()
        for key in overrides:
            if key not in names:
                raise ConfigError(
                    f"{type(self).__name__} has no field {key!r}.{_close_matches(key, names)} "
                    f"Fields: {', '.join(names)}."
                )
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        names = cls.field_names()
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"{cls.__name__} got unknown fields {unknown}; expected a subset of {list(names)}.")
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``condition``."""
    if not condition:
        raise ConfigError(message)
