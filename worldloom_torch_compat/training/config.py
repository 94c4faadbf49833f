"""``TrainingConfig`` at the original library's path ``worldloom.training.config``.

worldloom's own :class:`~worldloom.training.TrainingConfig` (the documented
fields and defaults), which also takes the original's ``output_dir`` (the
checkpoint directory) and has its helpers ``save``/``load`` (JSON),
``with_updates`` and ``resolve_device``.

Example:
    >>> config = TrainingConfig(total_steps=1_000, output_dir="runs/a")
    >>> config.with_updates(batch_size=32).checkpoint_dir
    'runs/a'
"""

from worldloom.training import TrainingConfig

__all__ = ["TrainingConfig"]
