"""Run files: one YAML file that holds a whole agent run (run settings and world-model overrides).

A run file has the fields of :class:`AgentRunConfig` at the top level and the
world-model config overrides under ``world_model``::

    env: CartPole-v1
    algo: dreamerv3
    total_steps: 50000
    world_model:
      deter: 256

``run_agent`` writes the resolved run as ``config.yaml`` in its run directory
(every reference default filled in), so ``worldloom agent --config
RUN/config.yaml`` runs it again. Files are read by
:func:`~worldloom.core.config.read_settings_file` (unknown keys refused with
close matches before any value is read) and ``--set KEY=VALUE`` by
:func:`~worldloom.core.config.parse_setting`, the parser ``worldloom train``
uses too; values are checked against ``AgentRunConfig``'s field types.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from worldloom.agents.config import AgentRunConfig, presets_text
from worldloom.core.config import parse_setting, read_settings_file
from worldloom.core.errors import ConfigError

MODEL_KEY = "world_model"


def _apply_sets(values: dict, model: dict, sets) -> None:
    """Put each ``KEY=VALUE`` (text or a parsed pair) into the run's ``values`` or the world-model ``model``.

    A run field goes to the run, ``env_options.KEYWORD`` to the environments'
    keywords; ``world_model.FIELD`` or a bare key that is no run field (and
    close to none) goes to the world model.
    """
    fields = AgentRunConfig.field_names()
    for item in sets:
        key, value = parse_setting(item) if isinstance(item, str) else item
        if key.startswith(f"{MODEL_KEY}."):
            model[key.removeprefix(f"{MODEL_KEY}.")] = value
        elif key in fields:
            values[key] = value
        elif key.partition(".")[0] == "env_options":  # one keyword of the environments
            values["env_options"] = {**(values.get("env_options") or {}), key.partition(".")[2]: value}
        elif "." in key:
            raise ConfigError(f"--set {key}: expected a run field, env_options.KEYWORD or {MODEL_KEY}.FIELD, got "
                              f"{key!r}.")
        else:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.85)
            if close:
                raise ConfigError(f"--set {key}: no run field {key!r}. Did you mean {close[0]!r}? (A world-model "
                                  f"field named so goes as {MODEL_KEY}.{key}.)")
            model[key] = value


def resolve_run(config_file=None, flags: dict | None = None, sets=()) -> tuple:
    """``(AgentRunConfig, world-model overrides)`` from defaults < presets < ``config_file`` < ``flags`` < ``sets``.

    The presets are the file's, flags' or sets' ``configs`` (by default the
    environment's suite block; see :class:`AgentRunConfig`).

    Args:
        config_file: A run file (YAML), or None.
        flags: Run fields given on the command line.
        sets: ``KEY=VALUE`` overrides (text, or ``(key, value)`` pairs); a run
            field, ``world_model.FIELD``, or a bare world-model field (``deter=256``).

    Raises:
        ConfigError: an unreadable file, an unknown key or a value of the wrong type.
    """
    values = {}
    if config_file is not None:
        values = read_settings_file(config_file, known=(*AgentRunConfig.field_names(), MODEL_KEY),
                                    sections=(MODEL_KEY,))
    model = dict(values.pop(MODEL_KEY, None) or {})
    values.update(flags or {})
    _apply_sets(values, model, sets)
    config = AgentRunConfig(**values)
    return config, {**config.preset_world_model(), **model}  # the presets' world-model fields under the given


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def run_data(config: AgentRunConfig, model_overrides: dict) -> dict:
    """The run file's mapping of ``config`` and the world-model overrides."""
    data = {key: _plain(value) for key, value in dataclasses.asdict(config).items()}
    data[MODEL_KEY] = {key: _plain(value) for key, value in model_overrides.items()}
    return data


def write_run(path, config: AgentRunConfig, model_overrides: dict) -> Path:
    """Write ``config`` and the world-model overrides as a run file, atomically; comments at its top name
    the presets and the values they set."""
    import yaml

    from worldloom.core.files import atomic_write_text

    path = Path(path)
    header = "".join(f"# {line.strip()}\n" for line in presets_text(config))
    atomic_write_text(path, header + yaml.safe_dump(run_data(config, model_overrides), sort_keys=False))
    return path


def settings_text(config: AgentRunConfig, model_overrides: dict, path=None, width: int = 110) -> str:
    """The run's settings as a few lines (``key=value, ...``), for the start of a run."""
    items = [f"{key}={value}" for key, value in run_data(config, {}).items() if key != MODEL_KEY]
    items += [f"{MODEL_KEY}.{key}={value}" for key, value in model_overrides.items()]
    lines, line = [], ""
    for item in items:
        if line and len(line) + len(item) + 2 > width:
            lines.append(line + ",")
            line = ""
        line = f"{line}, {item}" if line else f"  {item}"
    lines.append(line)
    where = f" (saved as {path})" if path is not None else ""
    return "\n".join([*presets_text(config, width), f"Run settings{where}:", *lines])
