"""``TrainingConfig``: what a training run does, as a frozen dataclass."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

from worldloom.core.config import ConfigBase, renamed, require
from worldloom.models.base import OptimizerSettings
from worldloom.training.guard import NONFINITE_MODES
from worldloom.training.reference import OPTIMIZER_FIELDS, REFERENCE, reference_settings

_DEVICE_KINDS = ("auto", "cpu", "cuda", "gpu", "rocm", "tpu")
REPLAY_SHARDINGS = ("replicated", "process")

# The papers' optimiser settings, per model family (from the one table of reference settings).
REFERENCE_SETTINGS: dict[str, dict[str, Any]] = {family: reference_settings(family, OPTIMIZER_FIELDS)
                                                 for family in REFERENCE}

# More dispatches queued at once risk XLA's rendezvous timeout with CPU collectives.
_MAX_IN_FLIGHT = 8

_INT_FIELDS = ("total_steps", "batch_size", "sequence_length", "warmup_steps", "log_interval", "eval_interval",
               "save_interval", "seed", "steps_per_dispatch", "eval_batches", "prefetch", "max_in_flight",
               "max_consecutive_skips")


@dataclasses.dataclass(frozen=True)
class TrainingConfig(ConfigBase):
    """Configuration of a training run (the spec's fields first, then extensions).

    Example:
        >>> config = TrainingConfig(total_steps=10_000, learning_rate=1e-4)
        >>> TrainingConfig.reference("dreamerv3").learning_rate
        4e-05
    """

    ORIGINAL_NAMES: ClassVar[tuple] = (
        renamed("output_dir", "checkpoint_dir", "`checkpoint_dir` (checkpoints are written there)"),
    )

    total_steps: int = 50_000
    """Total number of updates (one batch each)."""
    batch_size: int = 16
    """Windows per batch (``B``)."""
    sequence_length: int = 50
    """Transitions per window (``T``), the length of backpropagation through time."""
    learning_rate: float = 3e-4
    """Peak learning rate of the model's optimiser."""
    weight_decay: float = 0.0
    """Decoupled weight decay (L2 regularisation) of the kernels, not biases or norm scales; 0 disables it."""
    grad_clip: float = 100.0
    """Global gradient-norm clip; 0 disables it."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 over this many updates."""
    log_interval: int = 1000
    """Updates between log writes of :class:`LoggingCallback` (0: only at the end)."""
    eval_interval: int = 5000
    """Updates between evaluations on held-out windows (0 disables evaluation)."""
    save_interval: int = 10000
    """Updates between checkpoints written to ``checkpoint_dir`` (0: only at the end)."""
    device: str = "cuda"
    """Training device; an absent device falls back to the best available one with a warning."""
    seed: int = 42
    """Seeds replay sampling, the update keys and the held-out split: same seed, same run."""
    steps_per_dispatch: int = 10
    """Updates per jitted call (``lax.scan`` over pre-sampled batches)."""
    eval_fraction: float = 0.05
    """Share of the buffer's transitions (newest whole episodes) held out for evaluation."""
    eval_batches: int = 4
    """Held-out batches averaged per evaluation."""
    checkpoint_dir: str | None = None
    """If set, checkpoints go here every ``save_interval`` updates, at the end and on Ctrl-C."""
    keep_checkpoints: int = 3
    """Checkpoints kept in ``checkpoint_dir`` (the newest)."""
    prefetch: int = 2
    """Chunks of batches sampled ahead on a background thread."""
    data_parallel: bool | int = False
    """Data parallel over devices: False (one device), True (all of them, on all hosts) or a device count."""
    device_replay: bool | str = False
    """Copy the buffer to the device once and sample inside the jit: True, False or "auto" (when it fits)."""
    replay_sharding: str = "replicated"
    """With several processes: "replicated" (every process holds the same episodes) or "process" (each its own)."""
    max_in_flight: int = 1
    """Dispatches queued on the device before the trainer waits for the oldest (1: wait for each)."""
    on_nonfinite: str = "stop"
    """A NaN/inf loss, gradient or updated state: "stop" (TrainingError), "skip" (drop the update) or "ignore"."""
    max_consecutive_skips: int = 20
    """With ``on_nonfinite="skip"``: more consecutive skipped updates than this stop with TrainingError."""

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                object.__setattr__(self, name, int(value))
        if isinstance(self.checkpoint_dir, os.PathLike):
            object.__setattr__(self, "checkpoint_dir", os.fspath(self.checkpoint_dir))
        super().__post_init__()

    def validate(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool),
                    f"{name} must be an integer, got {value!r}.")
        require(self.seed >= 0, f"seed must be >= 0, got {self.seed}.")
        require(self.checkpoint_dir is None or (isinstance(self.checkpoint_dir, str) and self.checkpoint_dir.strip()),
                f"checkpoint_dir must be a directory path or None, got {type(self.checkpoint_dir).__name__} "
                f"{self.checkpoint_dir!r}.")
        for name in ("total_steps", "batch_size", "sequence_length", "steps_per_dispatch", "eval_batches",
                     "prefetch", "keep_checkpoints"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("warmup_steps", "log_interval", "eval_interval", "save_interval"):
            require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}.")
        require(1 <= self.max_in_flight <= _MAX_IN_FLIGHT,
                f"max_in_flight must be in [1, {_MAX_IN_FLIGHT}], got {self.max_in_flight}.")
        parallel = self.data_parallel
        require(isinstance(parallel, bool) or (isinstance(parallel, int) and parallel >= 1),
                f"data_parallel must be True, False or a device count >= 1, got {parallel!r}.")
        require(self.on_nonfinite in NONFINITE_MODES,
                f"on_nonfinite must be one of {', '.join(map(repr, NONFINITE_MODES))}, got {self.on_nonfinite!r}.")
        require(self.max_consecutive_skips >= 1,
                f"max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}.")
        require(isinstance(self.device_replay, bool) or self.device_replay == "auto",
                f"device_replay must be True, False or 'auto', got {self.device_replay!r}.")
        require(self.replay_sharding in REPLAY_SHARDINGS,
                f"replay_sharding must be one of {', '.join(map(repr, REPLAY_SHARDINGS))}, got "
                f"{self.replay_sharding!r}.")
        require(not (self.replay_sharding == "process" and self.device_replay is True),
                "device_replay=True copies one buffer to every device; with replay_sharding='process' each "
                "process holds its own episodes, so sample on the host (device_replay=False).")
        require(0.0 <= self.eval_fraction < 1.0, f"eval_fraction must be in [0, 1), got {self.eval_fraction}.")
        kind, colon, index = self.device.partition(":") if isinstance(self.device, str) else (None, "", "")
        require(kind is not None and kind.strip().lower() in _DEVICE_KINDS and (not colon or index.strip().isdigit()),
                f"device must be one of {', '.join(_DEVICE_KINDS)} (optionally ':index', an index >= 0), got "
                f"{self.device!r}.")
        # The optimiser fields are checked where they are used.
        self.optimizer_settings()

    # ------------------------------------------------------------ the original's helpers

    @property
    def output_dir(self) -> str | None:
        """The original's name of :attr:`checkpoint_dir`."""
        return self.checkpoint_dir

    def with_updates(self, **overrides: Any) -> TrainingConfig:
        """The original's name of :meth:`replace`."""
        return self.replace(**overrides)

    def resolve_device(self) -> str:
        """The kind of device :attr:`device` resolves to: ``"cpu"``, ``"cuda"`` (a GPU) or ``"tpu"``."""
        from worldloom.core.devices import resolve_device

        platform = resolve_device(self.device).platform
        return "cuda" if platform == "gpu" else platform

    def optimizer_settings(self) -> OptimizerSettings:
        """The optimiser fields as the models' :class:`OptimizerSettings`."""
        return OptimizerSettings(learning_rate=float(self.learning_rate), weight_decay=float(self.weight_decay),
                                 grad_clip=float(self.grad_clip or 0.0), warmup_steps=int(self.warmup_steps))

    @classmethod
    def reference(cls, family, **overrides: Any) -> TrainingConfig:
        """The papers' optimiser settings for a model family.

        Args:
            family: ``"dreamerv3"`` or ``"tdmpc2"``, a preset name such as
                ``"dreamerv3:size12m"``, or a ``WorldModel``.
            **overrides: Any other field.

        Returns:
            DreamerV3: lr 4e-5 with 1000 warm-up updates and no global clip
            (its optimiser clips adaptively); TD-MPC2: lr 3e-4, grad clip 20.
        """
        name = getattr(family, "family", family)
        key = str(name).split(":")[0].strip().lower()
        if key not in REFERENCE_SETTINGS:
            from worldloom.core import registry
            from worldloom.core.errors import UnknownModelError

            try:
                key = registry.resolve(str(name))[0].name
            except UnknownModelError:
                pass
        require(key in REFERENCE_SETTINGS,
                f"No reference settings for {name!r}; expected one of {sorted(REFERENCE_SETTINGS)}.")
        values = dict(REFERENCE_SETTINGS[key])
        values.update(overrides)
        base = cls()
        return base.replace(**values)
