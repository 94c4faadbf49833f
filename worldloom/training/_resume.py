"""Which run a trainer's checkpoints belong to, and what it resumes from.

A run opens its checkpoint directories before the first update: it takes
each one's writer lock, cleans leftovers of killed writes, and checks that the
directories hold no other run's checkpoints. A resumed run continues the run
of its checkpoint (same ``run_id``); when the newest checkpoint cannot be
loaded it falls back to the newest one that can, with a warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from worldloom.core.errors import CheckpointError, ConfigError
from worldloom.training import _checkpoint
from worldloom.training.callbacks import Callback, CheckpointCallback

# What a checkpoint records of the buffer it was trained on (``meta["data"]``).
DATA_FIELDS = ("num_transitions", "train_segments", "eval_segments", "buffer_digest")


@dataclasses.dataclass
class Lineage:
    """The run whose checkpoints a trainer writes.

    Attributes:
        run_id: Stored in every checkpoint; a resumed run keeps its checkpoint's.
        writers: The run's checkpoint callbacks (their directories are locked).
        candidates: Checkpoints to resume from, best first (empty: a fresh run).
        source: The checkpoint resumed from; ``data``: its ``meta["data"]``.
    """

    run_id: str | None
    writers: list = dataclasses.field(default_factory=list)
    candidates: list = dataclasses.field(default_factory=list)
    source: Path | None = None
    data: dict | None = None

    def close(self) -> None:
        """Release the writers' locks."""
        for writer in self.writers:
            writer.release()


def open_run(resume_from, resume: bool, callbacks: list[Callback]) -> Lineage:
    """Lock the run's checkpoint directories and list what to resume from.

    Raises:
        CheckpointError: a directory is locked by another process, or (for a
            fresh run) already holds checkpoints.
        ConfigError: ``resume`` without any checkpoint directory.
    """
    writers = [callback for callback in callbacks if isinstance(callback, CheckpointCallback)]
    lineage = Lineage(run_id=uuid.uuid4().hex, writers=[])
    try:
        for writer in writers:
            writer.acquire()
            lineage.writers.append(writer)
        if resume_from is not None:
            lineage.candidates = _checkpoint.resume_candidates(resume_from)
        elif resume:
            if not writers:
                raise ConfigError("train(resume=True) needs a checkpoint directory: set TrainingConfig.checkpoint_dir, "
                                  "add a CheckpointCallback or pass Trainer(resume_from=...).")
            # The newest step any writer saved first (a later writer's copy of the same step next).
            found = [(step, -order, path) for order, writer in enumerate(writers)
                     for step, path in _checkpoint.list_checkpoints(writer.save_dir)]
            lineage.candidates = [path for *_, path in sorted(found, key=lambda entry: entry[:2], reverse=True)]
        if not lineage.candidates:
            for writer in writers:
                _checkpoint.check_one_run(writer.save_dir, lineage.run_id)
    except BaseException:
        lineage.close()
        raise
    return lineage


def restore(lineage: Lineage, source: Path, like: Any, check: Callable[[Path, dict], None],
            total_steps: int) -> tuple[dict, Any]:
    """The meta and tree of the newest loadable checkpoint from ``source`` on; the lineage adopts its run.

    Args:
        lineage: From :func:`open_run` (its candidates start at ``source``).
        source: The newest candidate.
        like: The expected tree (``ShapeDtypeStruct`` leaves).
        check: ``check(path, meta)`` raises when the checkpoint is of another
            model (that is an error, not a reason to fall back).
        total_steps: The run's target step.

    Raises:
        CheckpointError: no candidate loads, or a checkpoint directory holds
            another run's checkpoints.
        ConfigError: the checkpoint is past ``total_steps``.
    """
    candidates = lineage.candidates if lineage.candidates[:1] == [Path(source)] else [Path(source)]
    try:
        path, meta, tree = first_loadable(candidates, like, check)
        step = int(meta["step"])
        if step > total_steps:
            raise ConfigError(f"The checkpoint at {path} is at step {step}: expected total_steps >= {step}, got "
                              f"total_steps={total_steps}. Raise total_steps to train on, or resume from an "
                              "earlier checkpoint.")
        if step == total_steps:
            warnings.warn(f"The checkpoint at {path} is already at total_steps={total_steps}: nothing is left to "
                          "train; raise total_steps to train on.", RuntimeWarning, stacklevel=4)
        for writer in lineage.writers:
            _checkpoint.check_one_run(writer.save_dir, meta.get("run_id"))
    except BaseException:
        lineage.close()
        raise
    lineage.run_id, lineage.source, lineage.data = meta.get("run_id"), path, meta.get("data")
    return meta, tree


def first_loadable(candidates: list[Path], like: Any, check: Callable[[Path, dict], None]):
    """``(path, meta, tree)`` of the first of ``candidates`` that loads, warning about those skipped.

    Raises:
        CheckpointError: none loads (``check`` raises for one of another model, without falling back).
    """
    skipped: list[tuple[Path, CheckpointError]] = []
    for path in candidates:
        try:
            meta = _checkpoint.read_meta(path)
        except CheckpointError as err:
            skipped.append((path, err))
            continue
        check(path, meta)
        try:
            tree = _checkpoint.load_state(path, like, meta)
        except CheckpointError as err:
            skipped.append((path, err))
            continue
        if skipped:
            names = "; ".join(f"{bad.name} ({err})" for bad, err in skipped)
            warnings.warn(f"Resuming from {path}, the newest checkpoint that loads; skipped newer ones that do "
                          f"not: {names}.", RuntimeWarning, stacklevel=5)
        return path, meta, tree
    if len(skipped) == 1:
        raise skipped[0][1]
    names = "; ".join(f"{bad.name} ({err})" for bad, err in skipped)
    raise CheckpointError(f"None of the {len(skipped)} checkpoints could be loaded: {names}.") from skipped[0][1]


def buffer_digest(buffer, max_rows: int = 1024) -> str:
    """SHA-256 of a buffer's episode bounds and of up to ``max_rows`` evenly spaced rows (all fields).

    Cheap (a fixed number of rows whatever the buffer's size) and different for
    two buffers of the same size that hold other data.
    """
    bounds = np.asarray(buffer.episode_bounds(), np.int64)
    digest = hashlib.sha256(bounds.tobytes())
    if bounds.size:
        first, last = int(bounds.min()), int(bounds.max())
        rows = np.unique(np.linspace(first, max(first, last - 1), num=max_rows).astype(np.int64))
        for name, values in sorted(buffer.gather(rows).items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def buffer_data(run: dict) -> dict:
    """What a checkpoint records of the run's buffer (``meta["data"]``)."""
    return {name: run.get(name) for name in DATA_FIELDS}


def eval_history(meta: dict) -> list:
    """The ``[[step, metrics]]`` evaluations a checkpoint records up to its step (none for one written before
    checkpoints kept them, or a malformed list)."""
    history, step = meta.get("eval_history"), int(meta["step"])
    if not isinstance(history, list):
        return []
    return [entry for entry in history
            if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], int)
            and not isinstance(entry[0], bool) and entry[0] <= step and isinstance(entry[1], dict)]


def skipped_updates(meta: dict) -> int:
    """Updates up to a checkpoint's step that ``on_nonfinite="skip"`` did not apply (0 when not recorded)."""
    value = meta.get("skipped_updates", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= int(meta["step"]) else 0


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class LineageCallback(Callback):
    """The trainer's own callback for a run's lineage (it runs after the others).

    Before the first update, warns when a resumed run's buffer is not the one
    its checkpoint trained on: the checkpoint records the buffer's transition
    count and the rows of its training and held-out blocks, and any difference
    means the resumed run draws other batches than the uninterrupted run would
    have. At the end (also of a run stopped by a non-finite update), releases
    the run's checkpoint directories.
    """

    def __init__(self, lineage: Lineage):
        self.lineage = lineage

    def on_train_begin(self, trainer) -> None:
        if self.lineage.source is None:
            return
        saved, now = self.lineage.data or {}, buffer_data(trainer._run)
        names = [name for name in DATA_FIELDS if name in saved and saved[name] != now[name]]
        changed = [f"{name}: checkpoint {_short(saved[name])}, this run {_short(now[name])}" for name in names]
        if changed and set(names) <= {"train_segments", "eval_segments"}:  # the same data, split otherwise
            warnings.warn(f"Resuming from {self.lineage.source} on the same buffer, held out otherwise "
                          f"({'; '.join(changed)}): the TrainingConfig's evaluation settings, or the rule that "
                          "splits off the held-out episodes, differ from the run that wrote the checkpoint. "
                          "Training goes on, but it will not match that run.", RuntimeWarning, stacklevel=2)
        elif changed:
            warnings.warn(f"Resuming from {self.lineage.source} on another buffer than the checkpoint was trained "
                          f"on ({'; '.join(changed)}): training goes on, but it will not match the run that wrote "
                          "the checkpoint.", RuntimeWarning, stacklevel=2)

    def on_train_end(self, trainer) -> None:
        self.lineage.close()
