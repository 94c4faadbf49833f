"""Trainer checkpoints on disk, for code outside the Trainer (the command line, scripts).

``list_checkpoints(directory)`` lists the complete checkpoints a directory
holds as ``[(step, path), ...]``, oldest first; ``find_checkpoint(path)`` is
the checkpoint a ``resume_from`` path names (a directory's newest, or one
``step_<N>``). Writing and reading them is the Trainer's
(``TrainingConfig.checkpoint_dir``, ``Trainer(resume_from=...)``).
"""

from worldloom.training._checkpoint import find_checkpoint, list_checkpoints

__all__ = ["find_checkpoint", "list_checkpoints"]
