"""Saved agents, agent checkpoints and plots of the online loop.

Both are saved directories of :mod:`worldloom.core.persist`: written whole
under a temporary name and swapped into place, with ``manifest.json`` listing
the size and CRC-32 of every other file, checked on load.

A saved agent (format ``worldloom-agent``, version 2)::

    agent.json      {"format": "worldloom-agent", "version": 2, "algo", ...the agent's settings}
    world_model/    a saved model (create_world_model reads it alone)
    behaviour/      DreamerV3: orbax directory of the actor and critic (what playing and evaluating use; the
                    slow critic and the return normaliser are in the checkpoint's train state, which resumes)
    manifest.json

An agent checkpoint (format ``worldloom-agent-checkpoint``, version 1)::

    train_state/    orbax directory of the train state (process 0 only)
    replay.npz      the collector's replay (a signed archive of worldloom.core.archives): its rows, or for
                    a disk replay (out_dir/replay, memory-mapped) its counters, the replay directory's id
                    and a CRC-32 per chunk of rows, which vouch for the files outside the checkpoint
    loop.json       the counters and histories (:class:`LoopState`)
    algo.txt        the agent's name
    manifest.json

Directories written before manifests (a saved agent without ``version``, a
checkpoint without ``manifest.json``) are refused with a CheckpointError:
nothing can vouch for their files. The ``world_model/`` of such a saved agent
still loads with ``create_world_model``.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from pathlib import Path

from worldloom.core.errors import CheckpointError
from worldloom.core.files import WriterLock, recover
from worldloom.core.persist import check_saved_files, open_saved, read_manifest, save_directory
from worldloom.models.checkpoint import restore_pytree, save_pytree

AGENT_FORMAT = "worldloom-agent"
AGENT_VERSION = 2
CHECKPOINT_FORMAT = "worldloom-agent-checkpoint"
CHECKPOINT_VERSION = 1
AGENT_FILE = "agent.json"
LOOP_FILE = "loop.json"
# The settings each agent's ``save`` puts in agent.json and its ``load`` reads back.
AGENT_KEYS = {"dreamerv3": ("config", "seed"), "tdmpc2": ("use_policy", "seed_steps", "seed")}


LATER_FIELDS = {"skipped_updates": 0}
"""Counters added after the first format, with the value a checkpoint without them stands for."""


@dataclasses.dataclass
class LoopState:
    """Counters and histories of an online run (saved as JSON in checkpoints)."""

    env_step: int = 0
    updates: int = 0
    updates_owed: float = 0.0
    pretrained: bool = False
    wall_time: float = 0.0
    train_returns: list = dataclasses.field(default_factory=list)
    eval_returns: list = dataclasses.field(default_factory=list)
    processes: int = 1
    skipped_updates: int = 0
    """Updates ``on_nonfinite="skip"`` dropped (not in the counters of checkpoints written before it was kept)."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str, source) -> LoopState:
        """The counters in ``text``; every field must be there, with a value of its type.

        Raises:
            CheckpointError: invalid JSON, another shape, a missing or unknown field, or a value of another type.
        """
        try:
            values = json.loads(text)
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{source} is not valid JSON ({err}): expected the counters of an online run; "
                                  "the checkpoint is damaged.") from err
        fields = {field.name: field.type for field in dataclasses.fields(cls)}
        if not isinstance(values, dict):
            raise CheckpointError(f"{source}: expected the counters of an online run as a JSON object with "
                                  f"{sorted(fields)}, got {type(values).__name__}.")
        values = {**LATER_FIELDS, **values}  # a checkpoint written before these were kept
        missing, unknown = sorted(set(fields) - set(values)), sorted(set(values) - set(fields))
        if missing or unknown:
            raise CheckpointError(f"{source}: expected the counters {sorted(fields)}, got "
                                  f"{'missing ' + str(missing) if missing else ''}"
                                  f"{' and ' if missing and unknown else ''}"
                                  f"{'unknown ' + str(unknown) if unknown else ''}.")
        kinds = {"int": numbers.Integral, "float": numbers.Real, "bool": bool, "list": list}
        wrong = [f"{name}={values[name]!r} (expected {kind})" for name, kind in fields.items()
                 if not isinstance(values[name], kinds.get(kind, object))
                 or (kind != "bool" and isinstance(values[name], bool))]
        if wrong:
            raise CheckpointError(f"{source}: counters of another type: {', '.join(wrong)}.")
        return cls(**values)


# ------------------------------------------------------------ saved agents


def write_agent(path: Path, algo: str, world_model, meta: dict, fill=None) -> None:
    """Write a saved agent atomically: ``world_model/``, ``agent.json``, what ``fill(tmp)`` adds, and the manifest.

    Raises:
        CheckpointError: the write failed (naming ``path`` and the cause; an agent saved there before stays).
    """

    def write(tmp: Path) -> None:
        world_model.save_pretrained(tmp / "world_model")
        if fill is not None:
            fill(tmp)
        content = {**meta, "format": AGENT_FORMAT, "version": AGENT_VERSION, "algo": algo}
        (tmp / AGENT_FILE).write_text(json.dumps(content, indent=2))

    save_directory(Path(path), write, format=AGENT_FORMAT, version=AGENT_VERSION, what="saved agent")


def read_agent_meta(path: Path, algo: str) -> dict:
    """``agent.json`` of a saved agent of ``algo``, after every file of the agent is checked against its manifest.

    Raises:
        CheckpointError: no saved agent there, a damaged file, a format version
            this worldloom does not read, another agent, or missing settings.
    """
    path = Path(path)
    meta_file = path / AGENT_FILE
    if not path.is_dir() or not (os.path.lexists(meta_file) or os.path.lexists(path / "manifest.json")):
        raise CheckpointError(f"No saved agent at {str(path)!r}: expected a directory written by the agent's save() "
                              f"({AGENT_FILE}, world_model/ and manifest.json).")
    open_saved(path, format=AGENT_FORMAT, versions=(AGENT_VERSION,), what="saved agent")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"No readable agent at {str(path)!r}: {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_file}: expected a JSON object of the agent's settings, got "
                              f"{type(meta).__name__}.")
    if meta.get("algo") != algo:
        raise CheckpointError(f"{path} holds a {meta.get('algo')!r} agent, expected {algo!r}.")
    missing = [key for key in AGENT_KEYS.get(algo, ()) if key not in meta]
    if missing:
        raise CheckpointError(f"{meta_file} lacks {missing}: expected every setting of a {algo} agent.")
    if algo == "dreamerv3":
        from worldloom.agents.dreamer_losses import DreamerAgentConfig
        from worldloom.core.persist import saved_config

        saved_config(DreamerAgentConfig, meta["config"], f"{meta_file} (config)")
    return meta


# ------------------------------------------------------------ agent checkpoints


def checkpoint_lock(directory: Path) -> WriterLock:
    """The writer lock of the agent checkpoint ``directory`` (``.<name>.lock`` beside it).

    A run may hold it throughout (``lock.acquire()`` ... ``lock.release()``); each
    :func:`save_checkpoint` takes it for the write (borrowing it when this process holds it).
    """
    directory = Path(directory)
    return WriterLock(directory.parent, name=f".{directory.name}.lock")


def has_checkpoint(directory: Path) -> bool:
    """Whether an agent checkpoint is at ``directory``, once leftovers of a killed write are cleaned.

    A previous checkpoint that a killed swap left under a temporary name is put back first.
    """
    directory = Path(directory)
    recover(directory)
    return directory.is_dir()


def save_checkpoint(directory: Path, train_state, collector, loop: LoopState, agent) -> None:
    """Train state (orbax; ``None``: left out), the collector's replay and counters (JSON), as one saved directory.

    Raises:
        CheckpointError: another live process writes this checkpoint, or the
            write failed (naming the path and the cause; the previous checkpoint stays).
    """

    def fill(tmp: Path) -> None:
        if train_state is not None:
            save_pytree(train_state, tmp / "train_state")
        collector.save(tmp)
        (tmp / LOOP_FILE).write_text(loop.to_json())
        (tmp / "algo.txt").write_text(agent.algo)

    save_directory(Path(directory), fill, format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION,
                   what="agent checkpoint", lock=checkpoint_lock(directory))


def open_checkpoint(directory: Path) -> dict:
    """Check an agent checkpoint before it is read (leftovers cleaned, every file against the manifest)."""
    return open_saved(directory, format=CHECKPOINT_FORMAT, versions=(CHECKPOINT_VERSION,), what="agent checkpoint")


def read_loop_state(directory: Path, checked: bool = False) -> LoopState:
    """The counters of the agent checkpoint ``directory`` (how far a run got, before it is resumed).

    Args:
        checked: The checkpoint was opened by :func:`open_checkpoint` already;
            otherwise ``loop.json`` alone is checked against the manifest
            (leftovers of a killed write are cleaned first).

    Raises:
        CheckpointError: no checkpoint there, a format version this worldloom
            does not read, or a damaged or malformed ``loop.json``.
    """
    directory = Path(directory)
    if not checked:
        if not has_checkpoint(directory):
            raise CheckpointError(f"No agent checkpoint at {str(directory)!r}: expected a directory written by "
                                  "an online run (loop.json, replay.npz and manifest.json).")
        manifest = read_manifest(directory, CHECKPOINT_FORMAT, (CHECKPOINT_VERSION,), "agent checkpoint")
        check_saved_files(directory, manifest, "agent checkpoint", names=(LOOP_FILE,))
    try:
        text = (directory / LOOP_FILE).read_text()
    except OSError as err:
        raise CheckpointError(f"Cannot read the counters {str(directory / LOOP_FILE)!r}: {err}") from err
    return LoopState.from_json(text, directory / LOOP_FILE)


def load_checkpoint(directory: Path, like_state, agent, collector):
    """Restore a :func:`save_checkpoint`: returns ``(train_state, loop)``; fills ``collector``'s replay.

    ``like_state=None`` leaves the train state out (it returns ``None`` for it).

    Raises:
        CheckpointError: no checkpoint there, a damaged file, a format version
            this worldloom does not read, another agent's run, or a train state
            of another structure.
    """
    directory = Path(directory)
    open_checkpoint(directory)
    algo_file = directory / "algo.txt"
    algo = algo_file.read_text().strip() if algo_file.is_file() else None
    if algo != agent.algo:
        raise CheckpointError(f"{directory} holds a {algo!r} run, expected {agent.algo!r}.")
    state = None
    if like_state is not None:
        try:
            state = restore_pytree(directory / "train_state", like_state)
        except Exception as err:  # noqa: BLE001 - orbax raises many types
            raise CheckpointError(f"Could not restore the train state at {directory / 'train_state'} into the "
                                  f"expected structure (another model or optimiser?): {err}") from err
    collector.load(directory)
    return state, read_loop_state(directory, checked=True)


def plot_curves(loop: LoopState, path: Path, title: str) -> Path:
    """PNG of training-episode and evaluation returns against environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    if loop.train_returns:
        steps, returns = np.asarray(loop.train_returns, float).T
        ax.plot(steps, returns, ".", alpha=0.3, color="tab:blue", label="training episodes")
    if loop.eval_returns:
        steps, mean, std = np.asarray(loop.eval_returns, float).T
        ax.plot(steps, mean, "-o", color="tab:orange", label="evaluation (mean)")
        ax.fill_between(steps, mean - std, mean + std, color="tab:orange", alpha=0.2,
                        label="evaluation (mean ± std over its episodes)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if loop.train_returns or loop.eval_returns:
        ax.legend(loc="best")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
