"""Run files: one YAML file that holds a whole agent run (run settings and world-model overrides).

A run file has the fields of :class:`AgentRunConfig` at the top level and the
world-model config overrides under ``world_model``::

    env: CartPole-v1
    algo: dreamerv3
    total_steps: 50000
    world_model:
      deter: 256

``run_agent`` writes the resolved run as ``config.yaml`` in its run directory,
so ``worldloom agent --config RUN/config.yaml`` runs it again. Files and
``--set KEY=VALUE`` overrides are read with OmegaConf structured configs: the
values are checked against ``AgentRunConfig``'s field types, and an unknown
key is an error that suggests the closest field.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from worldloom.core.errors import ConfigError

MODEL_KEY = "world_model"


def _schema():
    """A structured config with ``AgentRunConfig``'s fields and types plus a free ``world_model`` mapping."""
    import typing

    from omegaconf import OmegaConf

    from worldloom.agents.loop import AgentRunConfig

    hints = typing.get_type_hints(AgentRunConfig)
    fields = [(f.name, hints[f.name], dataclasses.field(default=f.default)) for f in dataclasses.fields(AgentRunConfig)]
    fields.append((MODEL_KEY, dict[str, typing.Any], dataclasses.field(default_factory=dict)))
    return OmegaConf.structured(dataclasses.make_dataclass("AgentRunFile", fields))


def _plain_sets(sets: list[str]) -> list[str]:
    """``KEY=VALUE`` items, a bare key that is no run field going to ``world_model.KEY``."""
    import difflib

    from worldloom.agents.loop import AgentRunConfig

    fields = set(AgentRunConfig.field_names())
    out = []
    for item in sets:
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in fields and "." not in key:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.85)
            if close:
                raise ConfigError(f"--set {key}: no run field {key!r}. Did you mean {close[0]!r}? (A world-model "
                                  f"field named so goes as {MODEL_KEY}.{key}.)")
            key = f"{MODEL_KEY}.{key}"
        out.append(f"{key}={value}")
    return out


def resolve_run(config_file=None, flags: dict | None = None, sets: list[str] = ()) -> tuple:
    """``(AgentRunConfig, world-model overrides)`` from defaults < ``config_file`` < ``flags`` < ``sets``.

    Args:
        config_file: A run file (YAML), or None.
        flags: Run fields given on the command line.
        sets: ``KEY=VALUE`` overrides; a run field, ``world_model.FIELD``, or a
            bare world-model field (``deter=256``).

    Raises:
        ConfigError: an unreadable file, an unknown key or a value of the wrong type.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from worldloom.agents.loop import AgentRunConfig

    try:
        merged = _schema()
        if config_file is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(Path(config_file)))
        if flags:
            merged = OmegaConf.merge(merged, OmegaConf.create(dict(flags)))
        if sets:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(_plain_sets(list(sets))))
        values = OmegaConf.to_container(merged, resolve=True)
    except ConfigError:
        raise
    except FileNotFoundError as err:
        raise ConfigError(f"--config: expected a run file, got {str(config_file)!r}, which does not exist.") from err
    except (OmegaConfBaseException, OSError, ValueError) as err:
        raise ConfigError(f"Run settings: {err}".replace("\n", "; ")) from err
    model = values.pop(MODEL_KEY) or {}
    return AgentRunConfig(**values), model


def write_run(path, config, model_overrides: dict) -> Path:
    """Write ``config`` and the world-model overrides as a run file, atomically."""
    import yaml

    path = Path(path)
    data = dataclasses.asdict(config)
    data[MODEL_KEY] = {key: (list(value) if isinstance(value, tuple) else value)
                       for key, value in model_overrides.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    return path
