"""Config base: frozen dataclasses with checked fields, the original's names and JSON round trips.

Every config class derives from :class:`ConfigBase`. Constructing one checks
each keyword: an unknown name is a :class:`ConfigError` with close matches,
a name of the original WorldLoom library (``deter_dim``, ``kl_free``, ...) is
translated through the class's :attr:`ConfigBase.ORIGINAL_NAMES` table, and
each value must have its field's type (no silent ``2.5 -> 2``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np

from worldloom.core.errors import CheckpointError, ConfigError

C = TypeVar("C", bound="ConfigBase")


def close_matches(name: str, choices) -> str:
    """`` Did you mean 'a', 'b'?`` for up to three of ``choices`` close to ``name``; ``""`` when none is."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=3)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


@dataclasses.dataclass(frozen=True)
class OriginalName:
    """A config name of the original WorldLoom library and its faithful meaning here.

    Attributes:
        name: The original's keyword (``"deter_dim"``).
        fields: The fields of this config it sets (``("deter",)``).
        meaning: One line for the docs' mapping table.
        convert: ``convert(value, values) -> {field: value}``; ``values`` holds the
            other keywords of the same call merged over the class defaults.
            Raises :class:`ConfigError` for a value with no faithful meaning.
    """

    name: str
    fields: tuple[str, ...]
    meaning: str
    convert: Callable[[Any, Mapping[str, Any]], dict[str, Any]]


def renamed(name: str, field: str, meaning: str = "", cast: Callable[[Any], Any] = lambda v: v) -> OriginalName:
    """An original name that is the same quantity as one of our fields."""
    return OriginalName(name, (field,), meaning or f"`{field}`", lambda value, _: {field: cast(value)})


class _ConfigMeta(type):
    """Checks and translates keywords before the dataclass ``__init__`` sees them."""

    def __call__(cls, *args, **kwargs):
        if args:
            raise ConfigError(f"{cls.__name__} takes keyword arguments only, got {len(args)} positional.")
        return super().__call__(**cls._translate(kwargs))


@dataclasses.dataclass(frozen=True)
class ConfigBase(metaclass=_ConfigMeta):
    """A frozen dataclass config. Subclasses list fields with docstrings."""

    ORIGINAL_NAMES: ClassVar[tuple[OriginalName, ...]] = ()
    """The original library's names for fields of this config (see :class:`OriginalName`)."""
    MODEL_TYPES: ClassVar[tuple[str, ...]] = ()
    """Accepted values of the original's ``model_type`` key (first: the family name)."""
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    """Preset name -> field values (the family's one preset table)."""

    @classmethod
    def from_size(cls: type[C], size: str, **fields: Any) -> C:
        """The config of preset ``size`` with ``fields`` set on top.

        Args:
            size: A preset of this family, ``"size12m"`` or ``"dreamerv3:size12m"``.
            **fields: Any field (our names or the original's), e.g. ``obs_shape=``, ``action_dim=``.

        Raises:
            UnknownModelError: ``size`` is not a preset of this family.
        """
        from worldloom.core.errors import UnknownModelError

        family, _, name = str(size).strip().lower().rpartition(":")
        if (family and family not in cls.MODEL_TYPES) or name not in cls.PRESETS:
            raise UnknownModelError(f"{cls.__name__}.from_size: unknown size {size!r}."
                                    f"{close_matches(name, cls.PRESETS)} Sizes: {', '.join(cls.PRESETS)}.")
        preset = dict(cls.PRESETS[name])
        return cls(**{**preset, **cls._translate(fields, preset)})

    def validate(self) -> None:
        """Raise :class:`ConfigError` when a value is out of range."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for field in dataclasses.fields(self):
            value = _checked(owner, field, getattr(self, field.name))
            object.__setattr__(self, field.name, value)
        try:
            self.validate()
        except ConfigError as err:  # each message names the config built, as the type checks' do
            if str(err).startswith((f"{owner}:", f"{owner}.")):
                raise
            detail = re.sub(r"^[A-Z]\w*: ", "", str(err))  # a config it builds inside (OptimizerSettings)
            raise ConfigError(f"{owner}: {detail}") from None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def accepted_names(cls) -> tuple[str, ...]:
        """Our field names, then the original's names this config understands."""
        return cls.field_names() + tuple(o.name for o in cls.ORIGINAL_NAMES) + (("model_type",) if cls.MODEL_TYPES
                                                                                 else ())

    @classmethod
    def _translate(cls, kwargs: Mapping[str, Any], base: Mapping[str, Any] = ()) -> dict[str, Any]:
        """Keywords in our field names: original names converted, unknown names refused.

        ``base`` holds the values the keywords go on top of (a preset's, a config's
        own); conversions that depend on other fields read them there.
        """
        names = cls.field_names()
        unknown = [k for k in kwargs if k not in cls.accepted_names()]
        if unknown:
            key = unknown[0]
            raise ConfigError(f"{cls.__name__} has no field {key!r}.{close_matches(key, cls.accepted_names())} "
                              f"Fields: {', '.join(names)}.")
        out = dict(kwargs)
        if "model_type" in out:
            model_type = out.pop("model_type")
            if str(model_type).lower() not in cls.MODEL_TYPES:
                raise ConfigError(f"{cls.__name__}: model_type {model_type!r} is not this family; expected one of "
                                  f"{list(cls.MODEL_TYPES)}.")
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        defaults.update(base)
        for original in cls.ORIGINAL_NAMES:
            if original.name not in out:
                continue
            value = out.pop(original.name)
            for field, converted in original.convert(value, {**defaults, **out}).items():
                if field in kwargs and kwargs[field] != converted:
                    raise ConfigError(f"{cls.__name__}: {original.name}={value!r} sets {field}={converted!r}, "
                                      f"but {field}={kwargs[field]!r} was also given; pass one of them.")
                out[field] = converted
        return out

    def replace(self: C, **overrides: Any) -> C:
        """A copy with ``overrides`` applied (our field names or the original's)."""
        values = self.to_dict()
        return type(self)(**{**values, **type(self)._translate(overrides, values)})

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """A config from a dict such as a ``config.json`` (the original's names are accepted)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}.from_dict: expected a mapping of field names, got "
                              f"{type(data).__name__}.")
        return cls(**dict(data))

    def to_json(self) -> str:
        """The config as JSON; a model family's config names its family (``"model_type"``), as the
        ``config.json`` of a saved model does."""
        data = self.to_dict()
        if self.MODEL_TYPES:
            data = {"model_type": self.MODEL_TYPES[0], **data}
        return json.dumps(data, indent=2, sort_keys=True)

    def save(self, path, *, overwrite: bool = False) -> None:
        """Write the config to ``path`` as JSON (:meth:`to_json`; read it back with :meth:`load`), whole or
        not at all.

        A file there is replaced only when it is empty or holds a JSON object
        (a config written before), unless ``overwrite=True``.

        Raises:
            ConfigError: ``path`` is not a file name.
            CheckpointError: ``path`` is a directory or another file, or the write failed.
        """
        from worldloom.core.archives import as_path
        from worldloom.core.files import atomic_write_text

        path = as_path(path, f"{type(self).__name__}.save(path)", "a str or os.PathLike file name")
        if not path.parent.is_dir() and not path.parent.exists():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)  # as the original's save did
            except OSError as err:
                raise CheckpointError(f"{type(self).__name__}.save: cannot make the directory {str(path.parent)!r} "
                                      f"for {str(path)!r}: {err}. Nothing was written.") from err
        if path.is_dir() or not (overwrite or not path.exists() or _holds_json_object(path)):
            found = "a directory" if path.is_dir() else f"a file of {path.stat().st_size} bytes, not a JSON config"
            raise CheckpointError(f"{type(self).__name__}.save: cannot write to {str(path)!r}: expected a new file "
                                  f"name or a JSON config file, got {found}. Nothing was written; choose another "
                                  "name, or pass overwrite=True to replace a file.")
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls: type[C], path) -> C:
        """Read a config written by :meth:`save` (or any JSON object of its fields, such as a saved model's
        ``config.json``).

        On a family's class the file's ``model_type``, when present, must be that family's; on the base
        class (the original's ``WorldModelConfig.load``) it chooses the class.

        Raises:
            ConfigError: ``path`` is not a file name, the file holds no JSON object, or names another family.
            CheckpointError: a missing or unreadable file.
        """
        from worldloom.core.archives import as_path

        path = as_path(path, f"{cls.__name__}.load(path)", "a str or os.PathLike file name")
        try:
            with open(path) as file:
                data = json.load(file)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{cls.__name__}.load: cannot read a JSON config at {str(path)!r}: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}.load: {str(path)!r} holds {type(data).__name__}; expected a JSON "
                              "object of config fields.")
        return cls.family_config(data.get("model_type"), path).from_dict(data)

    @classmethod
    def family_config(cls, model_type, path=None) -> type:
        """The config class to read a file whose ``"model_type"`` is ``model_type``: ``cls`` itself when it
        is a concrete config, else the registered family's class of that type."""
        where = repr(str(path)) if path is not None else "the data"
        if cls.field_names():
            if model_type is not None and str(model_type).lower() not in cls.MODEL_TYPES:
                expected = f"model_type {list(cls.MODEL_TYPES)}" if cls.MODEL_TYPES else "no model_type"
                raise ConfigError(f"{cls.__name__}: {where} holds a config of model_type {model_type!r}; expected "
                                  f"{expected}. Read it with that family's "
                                  "config class, or the base class's load.")
            return cls
        from worldloom.core import registry

        classes = [family.config_cls for family in registry.families().values()]
        for config_cls in classes:
            if str(model_type).lower() in config_cls.MODEL_TYPES:
                return config_cls
        found = "has no model_type" if model_type is None else f"has model_type {model_type!r}, which names no family"
        raise ConfigError(f"{cls.__name__}: {where} {found}; expected a model_type of "
                          f"{[t for c in classes for t in c.MODEL_TYPES]}.")


def _holds_json_object(path) -> bool:
    """Whether ``path`` is an empty file or one holding a JSON object (a config that may be replaced)."""
    try:
        if not path.is_file() or path.is_symlink():
            return False
        text = path.read_text()
        return not text or isinstance(json.loads(text), dict)
    except (OSError, ValueError):
        return False


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``condition``."""
    if not condition:
        raise ConfigError(message)


def flag(name: str, value) -> bool:
    """``value`` if it is True or False (Python or NumPy); ConfigError otherwise: ``"no"`` is not taken for a yes."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name}: expected True or False, got {type(value).__name__} {value!r}.")
    return bool(value)


# ---------------------------------------------------------------- field types

def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_float(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_tuple(owner: str, name: str, value):
    if isinstance(value, (list, tuple)):
        return tuple(int(v) if _is_int(v) else v for v in value)
    if hasattr(value, "tolist") and not isinstance(value, str):  # a NumPy array of sizes
        return _as_tuple(owner, name, value.tolist())
    raise ConfigError(f"{owner}.{name}: expected a tuple, got {type(value).__name__} {value!r}.")


_CHECKS: dict[str, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    "int": (_is_int, int, "an int"),
    "float": (_is_float, float, "a number"),
    "bool": (lambda v: isinstance(v, bool) or (hasattr(v, "dtype") and v.dtype == bool), bool, "a bool"),
    "str": (lambda v: isinstance(v, str), str, "a string"),
}


def _checked(owner: str, field: dataclasses.Field, value):
    """``value`` in its field's type (ints stay ints, floats become float), else ConfigError."""
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None and "None" in kinds:
        return None
    if "tuple" in kinds or "list" in kinds:
        value = _as_tuple(owner, field.name, value)
        return value if "tuple" in kinds else list(value)
    known = [k for k in kinds if k in _CHECKS]
    if not known or len(known) != len([k for k in kinds if k != "None"]):
        return value  # a type this check does not know: the class validates it
    for kind in known:
        ok, cast, _ = _CHECKS[kind]
        if ok(value):
            return cast(value)
    expected = " or ".join(_CHECKS[k][2] for k in known) + (" or None" if "None" in kinds else "")
    raise ConfigError(f"{owner}.{field.name}: expected {expected}, got {type(value).__name__} {value!r}.")


def check_sizes(owner: str, name: str, value) -> tuple[int, ...]:
    """A shape of positive ints, e.g. ``obs_shape``; ConfigError for ``'4'``, ``(4.5,)``, ``(True,)``."""
    if not isinstance(value, tuple) or not value or not all(_is_int(d) and d > 0 for d in value):
        raise ConfigError(f"{owner}.{name}: expected a non-empty tuple of positive ints, got {value!r}.")
    return value


def original_names_table(*config_classes: type[ConfigBase]) -> str:
    """The docs' mapping table of the original library's config names, from the classes' tables."""
    rows = ["| config | original name | here |", "|---|---|---|"]
    for cls in config_classes:
        for original in cls.ORIGINAL_NAMES:
            rows.append(f"| `{cls.__name__}` | `{original.name}` | {original.meaning} |")
        if cls.MODEL_TYPES:
            types = " or ".join(f"`{t}`" for t in cls.MODEL_TYPES)
            rows.append(f"| `{cls.__name__}` | `model_type` | must be {types} |")
    return "\n".join(rows)


SETTINGS_FILE_LIMIT = 1 << 20
"""Largest run file read, in bytes: a run's settings take a few kilobytes."""


def read_settings_file(path, known=None, sections=()) -> dict:
    """A run file (YAML mapping) as a dict, checked before anything reads its values.

    Args:
        path: The file.
        known: Top-level keys it may hold (``None``: any); an unknown one is
            refused with close matches, before any value is converted.
        sections: Keys whose values are mappings of further settings.

    Raises:
        ConfigError: a missing, unreadable or oversized file, a document that is
            not a mapping, or an unknown key.
    """
    from pathlib import Path

    import yaml

    path = Path(path)
    try:
        size = path.stat().st_size
        if size > SETTINGS_FILE_LIMIT:
            raise ConfigError(f"--config: expected a run file of settings (at most {SETTINGS_FILE_LIMIT:,} bytes), "
                              f"got {str(path)!r} of {size:,} bytes.")
        text = path.read_text()
    except FileNotFoundError as err:
        raise ConfigError(f"--config: expected a run file, got {str(path)!r}, which does not exist.") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config: could not read {str(path)!r}: {err}") from err
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        raise ConfigError(f"--config: {str(path)!r} is not valid YAML: {err}".replace("\n", " ")) from err
    if not isinstance(data, dict):
        raise ConfigError(f"--config: expected a mapping of settings in {str(path)!r}, got {type(data).__name__}.")
    data = _numbers_read(data)
    if known is not None:
        known = list(known)
        for key in data:
            if not isinstance(key, str) or key not in known:
                raise ConfigError(f"--config {path}: no setting {key!r}.{close_matches(key, known)}")
    for section in sections:
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise ConfigError(f"--config {path}: expected {section} to be a mapping of settings, got "
                              f"{type(data[section]).__name__}.")
    return data


def parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``: the key, and the value read as YAML (``3`` int, ``1e-4`` float, ``[64, 64]`` list).

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    import yaml

    key, sep, value = str(text).partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set: expected KEY=VALUE, got {text!r}.")
    try:
        parsed = yaml.load(value, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        parsed = value
    return key, "" if not value.strip() else _numbers_read(parsed)  # YAML 1.1 reads 1e-4 as a string


def _numbers_read(value):
    """``value`` with the strings YAML 1.1 leaves unread that are numbers (``1e-4``) made floats."""
    if isinstance(value, dict):
        return {key: _numbers_read(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers_read(item) for item in value]
    return float(value) if isinstance(value, str) and _is_float_text(value) else value


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")
