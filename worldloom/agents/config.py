"""``AgentRunConfig``: what an online run does, and its settings resolved against the reference's.

Settings are stacked as the reference stacks its config blocks: the
algorithm's reference defaults (:data:`worldloom.training.reference.REFERENCE`),
then the named presets of ``configs`` in order
(:data:`worldloom.training.reference.PRESETS`; by default the block the
environment id selects), then the fields given. Presets fill the fields left
``None`` when the config is made; :meth:`AgentRunConfig.resolve` fills the
rest, so a run's ``config.yaml`` holds the settings it actually used (and the
presets' names) and reproduces it alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from worldloom.core.config import ConfigBase, require
from worldloom.core.errors import ConfigError
from worldloom.envs.factory import check_render_mode
from worldloom.models.base import OptimizerSettings
from worldloom.training.guard import NONFINITE_MODES
from worldloom.training.reference import PRESETS, REFERENCE, stack_presets

RUN_FIELDS = ("model", "batch_size", "sequence_length", "learning_rate", "grad_clip", "warmup_steps", "seed_steps")
DEFAULTS = {algo: {name: values[name] for name in RUN_FIELDS} for algo, values in REFERENCE.items()}
"""Algorithm -> the reference defaults of the run fields left ``None`` (a view of the one reference table)."""
STEP_DEFAULTS = dict(total_steps=50_000, num_envs=1, train_ratio=32.0, updates_per_step=1.0, eval_every=5_000,
                     eval_episodes=5, buffer_capacity=1_000_000, replay_online=True)
"""The fields no preset sets: their values (train ratio 32 and one update per step are the references')."""


@dataclasses.dataclass(frozen=True)
class AgentRunConfig(ConfigBase):
    """An online training run. ``None`` fields take the algorithm's reference default (see :meth:`resolve`)."""

    env: str = "CartPole-v1"
    """Gymnasium id or suite id (``dmc:cartpole-balance:pixels``, ``atari:pong``); Discrete or Box actions,
    vector or image observations."""
    env_options: dict[str, Any] | None = None
    """Keywords for every environment the run makes: a suite's settings over its reference's
    (``{"fast_render": True}``, ``{"repeat": 2}``; see :mod:`worldloom.envs.suites`), or ``gymnasium.make``
    keywords for a Gymnasium id."""
    algo: str = "dreamerv3"
    """``"dreamerv3"`` (actor-critic in imagination) or ``"tdmpc2"`` (MPPI planning)."""
    configs: tuple[str, ...] | None = None
    """Presets stacked in order, later ones winning (``("dmc_vision", "size12m")``; names in
    :data:`~worldloom.training.reference.PRESETS`); fields given here win over them. ``None``: the block
    ``env`` selects (DreamerV3: ``dmc_proprio``, ``dmc_vision``, ``atari100k``, ``quick`` for a Gymnasium id;
    TD-MPC2: ``tdmpc2``, ``tdmpc2_pixels``); a list without a suite block gets it first; ``"defaults"`` stands
    for none. Made, the config holds the full list."""
    model: str | None = None
    """World-model preset; default ``dreamerv3:size1m`` / ``tdmpc2:5m``. TD-MPC2's ``5m`` is its reference's
    default size; DreamerV3's reference defaults to ``size200m`` and selects ``size1m`` in its ``dmc_proprio``
    block, the size that trains on a laptop."""
    total_steps: int | None = None
    """Environment steps (summed over environments); default: the presets', else 50,000."""
    num_envs: int | None = None
    """Environments stepped together; the agent acts on all in one call (default: the presets', else 1)."""
    train_ratio: float | None = None
    """Replayed steps per environment step (DreamerV3); updates = steps * ratio / (B * T). Default: the
    presets' (``dmc_proprio`` 1024, ``dmc_vision`` and ``atari100k`` 256), else the reference's 32."""
    updates_per_step: float | None = None
    """Updates per environment step (TD-MPC2's update-to-data ratio; default 1)."""
    batch_size: int | None = None
    sequence_length: int | None = None
    """Rows per replayed window (DreamerV3: 64; TD-MPC2: the world model's ``horizon + 1``, and no fewer, as
    the reference samples them)."""
    learning_rate: float | None = None
    grad_clip: float | None = None
    warmup_steps: int | None = None
    seed_steps: int | None = None
    """Random-action steps before learning starts (DreamerV3: none, it acts with its initial policy from
    step 0, as the reference; TD-MPC2: ``max(1000, 5 * episode length)``)."""
    episodic: bool | None = None
    """TD-MPC2: termination head and planning that stops at predicted terminations. ``None``: on when a
    random-action probe of the environment (2,000 steps, not counted) sees a termination; set it for tasks
    that terminate only on success or failure a random policy never reaches."""
    log_every: int = 10
    """Updates between logged training losses (TensorBoard ``train/*``)."""
    eval_every: int | None = None
    """Environment steps between evaluations (default: the presets', else 5,000)."""
    eval_episodes: int | None = None
    """Episodes per evaluation (default: the presets', else 5)."""
    eval_video: bool = True
    """Record each evaluation's first episode: ``videos/eval_step_<N>.gif`` in ``out_dir`` and TensorBoard's
    ``eval/video`` (image-observation DreamerV3 runs also get the open-loop report, ``eval/open_loop``)."""
    logger: str = "tensorboard"
    """Where metrics go besides ``metrics.jsonl``: ``"tensorboard"`` (``logs/``, always written) or ``"wandb"``
    (W&B as well; the ``wandb`` extra; ``WANDB_MODE=offline`` keeps it in ``out_dir/wandb``)."""
    stop_return: float | None = None
    """Stop once a mean evaluation return reaches this (``None``: the presets' (``quick``: 475), else run all
    ``total_steps``; ``math.inf``, ``.inf`` in YAML: run all ``total_steps`` whatever the presets say)."""
    checkpoint_every: int = 10_000
    """Environment steps between checkpoints (0: only at the end)."""
    buffer_capacity: int | None = None
    """Replay rows at most (default: the presets', else 1,000,000); a run holds ``min(buffer_capacity,
    total_steps + 1000)`` (a resumed run with more steps grows its replay, keeping every row)."""
    replay_storage: str = "auto"
    """Where replay rows live: ``"ram"``, ``"disk"`` (memory-mapped files in ``out_dir/replay``, for replays
    larger than memory) or ``"auto"`` (disk when the replay's full size is over half of the available memory).
    The choice is printed at start; a resumed run keeps the storage it was saved with."""
    replay_online: bool | None = None
    """DreamerV3's online queue (the reference's ``replay.online: True``; default: the presets', else on): each
    newly completed window is trained once, in order, before uniform samples fill the batch. TD-MPC2's
    reference samples only uniformly over episodes; it ignores this setting."""
    out_dir: str = "runs/agent"
    device: str = "auto"
    """Where the agent computes: ``"cpu"``, ``"cuda"``, ``"tpu"`` or ``"auto"`` (the fastest present)."""
    seed: int = 0
    on_nonfinite: str = "stop"
    """A NaN/inf loss, gradient or updated state: "stop" (TrainingError), "skip" (drop the update) or "ignore"."""
    max_consecutive_skips: int = 20
    """With ``on_nonfinite="skip"``: more consecutive skipped updates than this stop with TrainingError."""

    def __post_init__(self) -> None:
        names = self.configs
        if isinstance(names, str):  # "dmc_vision size12m" or "dmc_vision,size12m"
            names = names.replace(",", " ").split()
        if names is not None and not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
            raise ConfigError(f"AgentRunConfig.configs: expected a list of preset names, got {names!r}.")
        if self.algo in DEFAULTS:  # else validate() reports the algo
            names, run, _ = stack_presets(names, str(self.env), self.algo)
            object.__setattr__(self, "configs", names)
            for name, value in {**STEP_DEFAULTS, **run}.items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        super().__post_init__()

    def validate(self) -> None:
        require(self.algo in DEFAULTS, f"algo must be one of {sorted(DEFAULTS)}, got {self.algo!r}.")
        require(self.total_steps > 0, f"total_steps must be positive, got {self.total_steps}.")
        require(self.num_envs >= 1, f"num_envs must be >= 1, got {self.num_envs}.")
        for name in ("train_ratio", "updates_per_step"):
            value = getattr(self, name)
            require(math.isfinite(value) and value > 0, f"{name} must be a finite number > 0, got {value}.")
        require(self.eval_every > 0, f"eval_every must be > 0, got {self.eval_every}.")
        require(self.eval_episodes >= 0, f"eval_episodes must be >= 0, got {self.eval_episodes}.")
        require(self.checkpoint_every >= 0,
                f"checkpoint_every must be >= 0 (0: only at the end), got {self.checkpoint_every}.")
        require(self.buffer_capacity >= 1, f"buffer_capacity must be >= 1, got {self.buffer_capacity}.")
        require(self.stop_return is None or not math.isnan(self.stop_return) and self.stop_return != -math.inf,
                f"stop_return must be a return, or inf (.inf in YAML and --set) to run all steps, got "
                f"{self.stop_return}.")
        for name in ("batch_size", "sequence_length"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"{name} must be >= 1, got {value}.")
        for name in ("warmup_steps", "seed_steps"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"{name} must be >= 0, got {value}.")
        # The optimiser fields follow OptimizerSettings' rules, as TrainingConfig's do.
        OptimizerSettings(**{name: self.resolved(name) for name in ("learning_rate", "grad_clip", "warmup_steps")})
        require(self.on_nonfinite in NONFINITE_MODES,
                f"on_nonfinite must be one of {', '.join(map(repr, NONFINITE_MODES))}, got {self.on_nonfinite!r}.")
        require(self.env_options is None or (isinstance(self.env_options, dict)
                                              and all(isinstance(key, str) for key in self.env_options)
                                              and "agent" not in self.env_options),
                f"env_options must be a mapping of keyword names to values (the agent's suite settings come "
                f"from algo, not an 'agent' key), got {self.env_options!r}.")
        check_render_mode((self.env_options or {}).get("render_mode"), "env_options['render_mode']")
        require(self.seed >= 0, f"seed must be a non-negative integer (it seeds the environments, the model and "
                                f"sampling), got {self.seed}.")
        require(self.logger in ("tensorboard", "wandb"),
                f"logger must be 'tensorboard' or 'wandb', got {self.logger!r}.")
        require(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}.")
        require(self.replay_storage in ("auto", "ram", "disk"),
                f"replay_storage must be 'auto', 'ram' or 'disk', got {self.replay_storage!r}.")
        require(isinstance(self.replay_online, bool),
                f"replay_online must be true or false, got {self.replay_online!r}.")
        require(self.max_consecutive_skips >= 1,
                f"max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}.")

    def preset_world_model(self) -> dict[str, Any]:
        """The world-model fields the presets set (``debug``'s tiny model), to go under explicit overrides."""
        return stack_presets(self.configs, str(self.env), self.algo)[2]

    def preset_values(self) -> list[tuple[str, dict[str, Any]]]:
        """``[(preset name, {field: value it sets}), ...]`` in stacking order, world-model fields as
        ``world_model.FIELD``."""
        return [(name, {**PRESETS[name].run, **{f"world_model.{k}": v for k, v in PRESETS[name].world_model.items()}})
                for name in self.configs or ()]

    def make_env(self, **kwargs):
        """One environment of this run: ``env`` with the agent's suite settings and ``env_options``."""
        from worldloom.envs import make_env

        return make_env(self.env, agent=self.algo, **(self.env_options or {}), **kwargs)

    def resolved(self, name: str):
        """The value of field ``name``: its own, or the reference default when it is ``None``."""
        value = getattr(self, name)
        return DEFAULTS[self.algo][name] if value is None else value

    def resolve(self, episode_length: int | None = None, episodic: bool | None = None) -> AgentRunConfig:
        """This config with every reference default filled in (``None`` left only in ``stop_return``,
        ``env_options`` and, until its probe, TD-MPC2's ``episodic``).

        Args:
            episode_length: The environment's time limit: TD-MPC2's seed steps
                are ``max(1000, 5 * episode_length)`` unless set.
            episodic: TD-MPC2's episodic mode, when ``self.episodic`` is ``None``
                (found by probing the environment).
        """
        values = {name: self.resolved(name) for name in RUN_FIELDS}
        values["seed_steps"] = seed_steps_for(self, episode_length)
        if self.algo == "tdmpc2" and (self.episodic is not None or episodic is not None):
            values["episodic"] = bool(self.episodic if self.episodic is not None else episodic)
        return self.replace(**values)

    def capacity(self) -> int:
        """Replay rows of this run: ``min(buffer_capacity, total_steps + 1000)``."""
        return min(self.buffer_capacity, self.total_steps + 1000)

    def updates_per_env_step(self) -> float:
        """DreamerV3: ``train_ratio / (B * T)``; TD-MPC2: ``updates_per_step``."""
        if self.algo == "dreamerv3":
            return self.train_ratio / (self.resolved("batch_size") * self.resolved("sequence_length"))
        return self.updates_per_step


def seed_steps_for(config: AgentRunConfig, episode_length: int | None) -> int:
    """Random-action steps: ``config.seed_steps``, else DreamerV3's 0 or TD-MPC2's ``max(1000, 5 * L)``."""
    if config.seed_steps is not None or config.algo != "tdmpc2" or not episode_length:
        return config.resolved("seed_steps")
    return max(DEFAULTS["tdmpc2"]["seed_steps"], 5 * int(episode_length))


__all__ = ["DEFAULTS", "STEP_DEFAULTS", "AgentRunConfig", "presets_text", "seed_steps_for"]


def presets_text(config: AgentRunConfig, width: int = 110) -> list[str]:
    """Lines naming each preset of ``config`` and the values it sets (``a -> b`` where a later one or a
    field given changed it), for the start of a run and its ``config.yaml``."""
    if not config.configs:
        return ["Presets: none (the reference defaults)."]
    lines = [f"Presets {' + '.join(config.configs)} (later ones and the fields given win):"]
    for name, values in config.preset_values():
        items = []
        for key, value in values.items():
            final = getattr(config, key, value)
            items.append(f"{key}={value}" if final == value else f"{key}={value} -> {final}")
        text = f"  {name} ({PRESETS[name].source}): {', '.join(items) or 'nothing'}"
        while len(text) > width:
            cut = text.rfind(", ", 0, width) + 1 or width
            lines.append(text[:cut])
            text = "    " + text[cut:].lstrip()
        lines.append(text)
    return lines
