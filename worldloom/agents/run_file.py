"""Run files: one YAML file that holds a whole run (run settings and world-model overrides), and the one
resolver of both commands' settings (:func:`resolve_settings`: defaults < run file < flags < ``--set``).

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
``worldloom train`` resolves its run file (flags' names at the top level,
``world_model`` and ``training`` sections) through the same
:func:`resolve_settings`.
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


def resolve_settings(config_file, known, sections, flags: dict | None, sets, place) -> tuple[dict, dict]:
    """A command's settings from defaults < ``config_file`` < ``flags`` < ``sets``: ``(values, {section: values})``.

    Args:
        config_file: A run file (YAML), or None; read by :func:`~worldloom.core.config.read_settings_file`.
        known: The top-level keys a run file may hold; ``sections``: those of them that hold mappings.
        flags: Top-level values given on the command line (they win over the file's).
        sets: ``KEY=VALUE`` items (text, parsed by :func:`~worldloom.core.config.parse_setting`, or pairs).
        place: ``place(values, parts, key, value)`` puts one setting where it belongs; the file's section
            entries come to it first, as ``SECTION.KEY`` items, then ``sets``.

    Raises:
        ConfigError: an unreadable file, an unknown key, or a setting ``place`` refuses.
    """
    values = {}
    if config_file is not None:
        values = read_settings_file(config_file, known=known, sections=sections)
    parts = {name: {} for name in sections}
    filed = [(f"{name}.{key}", value) for name in sections for key, value in (values.pop(name, None) or {}).items()]
    values.update(flags or {})
    for item in [*filed, *sets]:
        key, value = parse_setting(item) if isinstance(item, str) else item
        place(values, parts, key, value)
    return values, parts


def _place_agent(values: dict, parts: dict, key: str, value) -> None:
    _apply_sets(values, parts[MODEL_KEY], [(key, value)])


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
    values, parts = resolve_settings(config_file, (*AgentRunConfig.field_names(), MODEL_KEY), (MODEL_KEY,), flags,
                                     sets, _place_agent)
    model = parts[MODEL_KEY]
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
    """The run's settings as a few lines (``key=value, ...``), for the start of a run; the fields of the other
    algorithm are left out (``config.yaml`` keeps every field)."""
    other = {"dreamerv3": ("updates_per_step", "episodic"), "tdmpc2": ("train_ratio", "replay_online")}
    items = [f"{key}={value}" for key, value in run_data(config, {}).items()
             if key != MODEL_KEY and key not in other.get(config.algo, ())]
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
