"""TD-MPC2 configuration and the preset table (the one source of preset sizes).

Defaults follow the reference ``config.yaml`` of nicklashansen/tdmpc2 and its
``5m`` model size. ``PRESETS`` holds the five reference model sizes; every
other field keeps its default unless overridden.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from worldloom.core.config import ConfigBase, OriginalName, check_sizes, renamed, require
from worldloom.core.errors import ConfigError

# name: encoder width / MLP width / latent size / encoder layers / Q-ensemble size
PRESETS = {
    "1m": dict(enc_dim=256, mlp_dim=384, latent_dim=128, num_enc_layers=2, num_q=2),
    "5m": dict(enc_dim=256, mlp_dim=512, latent_dim=512, num_enc_layers=2, num_q=5),
    "19m": dict(enc_dim=1024, mlp_dim=1024, latent_dim=768, num_enc_layers=3, num_q=5),
    "48m": dict(enc_dim=1792, mlp_dim=1792, latent_dim=768, num_enc_layers=4, num_q=5),
    "317m": dict(enc_dim=4096, mlp_dim=4096, latent_dim=1376, num_enc_layers=5, num_q=8),
}

# The original library's aliases; 1m and 19m are reached by their full names.
ALIASES = {
    "tdmpc": "tdmpc2:5m",
    "tdmpc2": "tdmpc2:5m",
    "tdmpc-small": "tdmpc2:5m",
    "tdmpc-medium": "tdmpc2:48m",
    "tdmpc-large": "tdmpc2:317m",
}

MLP_LAYERS = 2  # hidden layers of the dynamics, reward, policy and Q networks (the reference's ``mlp``)


def _mlp_layers(name: str) -> OriginalName:
    def convert(value, _):
        if value != MLP_LAYERS or isinstance(value, bool):
            raise ConfigError(f"TDMPC2Config: {name}={value!r} has no faithful meaning: TD-MPC2's dynamics, reward, "
                              f"policy and Q networks have {MLP_LAYERS} hidden layers, as in the reference. Change "
                              "their width with mlp_dim (hidden_dim), the encoder's depth with num_enc_layers.")
        return {}

    return OriginalName(name, (), f"must be {MLP_LAYERS} (the reference's depth); width is `mlp_dim`", convert)


ORIGINAL_NAMES = (
    renamed("hidden_dim", "mlp_dim", "`mlp_dim` (dynamics, reward, policy and Q width)"),
    _mlp_layers("mlp_layers"),
    _mlp_layers("num_layers"),
)


def heuristic_discount(episode_length: float, denom: float = 5.0, minimum: float = 0.95,
                       maximum: float = 0.995) -> float:
    """The reference's discount from episode length: ``clip((L/d - 1)/(L/d), min, max)``.

    Example:
        >>> heuristic_discount(500)
        0.99
    """
    frac = episode_length / denom
    return float(min(max((frac - 1.0) / frac, minimum), maximum))


@dataclasses.dataclass(frozen=True)
class TDMPC2Config(ConfigBase):
    """TD-MPC2 world-model, training and planning hyperparameters (defaults: ``5m``).

    Also takes the original library's names (``hidden_dim``, ``mlp_layers``,
    ``model_type``); see :data:`ORIGINAL_NAMES`.

    Example:
        >>> TDMPC2Config.from_size("19m", obs_shape=(39,), action_dim=6).latent_dim
        768
    """

    ORIGINAL_NAMES: ClassVar[tuple] = ORIGINAL_NAMES
    MODEL_TYPES: ClassVar[tuple] = ("tdmpc2", "tdmpc")
    PRESETS: ClassVar[dict] = PRESETS

    # ---------------------------------------------------------------- spaces
    obs_shape: tuple = (24,)
    """Observation shape: ``(64, 64, C)`` is an image (pixel encoder), ``(D,)`` a state vector."""
    action_dim: int = 6
    """Size of the action vector (number of actions when discrete)."""
    action_type: str = "continuous"
    """``"continuous"`` (vectors in [-1, 1]) or ``"discrete"`` (one-hot; planned as relaxed vectors)."""

    # ---------------------------------------------------------------- architecture
    enc_dim: int = 256
    """Hidden width of the state encoder."""
    mlp_dim: int = 512
    """Hidden width of dynamics, reward, termination, policy and Q networks."""
    latent_dim: int = 512
    """Size of the SimNorm latent ``z``."""
    num_enc_layers: int = 2
    """Layers of the state encoder; it has ``max(num_enc_layers - 1, 1)`` hidden layers."""
    num_q: int = 5
    """Size of the Q ensemble."""
    num_channels: int = 32
    """Channels of every pixel-encoder convolution."""
    simnorm_dim: int = 8
    """Group size of SimNorm (softmax over consecutive groups of this many latents)."""
    num_bins: int = 101
    """Bins of the two-hot reward and Q heads."""
    vmin: float = -10.0
    """Lowest bin, in symlog space."""
    vmax: float = 10.0
    """Highest bin, in symlog space."""
    dropout: float = 0.01
    """Dropout on the first layer of each Q network (training only)."""
    shift_pad: int = 3
    """Padding of the random-shift image augmentation (the reference's ``ShiftAug(pad=3)``)."""
    augment_acting: bool = True
    """Shift-augment image observations when acting as well as in the loss: the
    reference's encoder applies its ``ShiftAug`` on every call. ``False``
    plans from the unshifted frame."""
    episodic: bool = False
    """Add a termination head and stop bootstrapping at predicted terminations."""
    num_tasks: int = 0
    """Number of tasks for a multitask model (0: single task, no task embedding)."""
    task_dim: int = 96
    """Size of the learned task embedding (used only when ``num_tasks > 0``)."""

    # ---------------------------------------------------------------- training
    horizon: int = 3
    """Latent rollout length of the update and planning horizon of MPPI."""
    rho: float = 0.5
    """Temporal weight: the loss of rollout step ``t`` is scaled by ``rho**t``."""
    consistency_coef: float = 20.0
    """Weight of the latent consistency loss."""
    reward_coef: float = 0.1
    """Weight of the reward cross-entropy."""
    value_coef: float = 0.1
    """Weight of the Q cross-entropy."""
    termination_coef: float = 1.0
    """Weight of the termination cross-entropy (episodic models)."""
    entropy_coef: float = 1e-4
    """Weight of the policy's (action-dimension scaled) entropy bonus."""
    log_std_min: float = -10.0
    """Lower bound of the policy's log standard deviation."""
    log_std_max: float = 2.0
    """Upper bound of the policy's log standard deviation."""
    tau: float = 0.01
    """Polyak rate of the target Q networks and of the running Q scale."""
    enc_lr_scale: float = 0.3
    """Encoder learning rate relative to the rest of the model."""
    pi_adam_eps: float = 1e-5
    """Adam epsilon of the policy optimiser (the model's Adam uses 1e-8)."""

    # ---------------------------------------------------------------- discount
    episode_length: int = 500
    """Episode length the discount heuristic uses (500 gives the reference's 0.99)."""
    discount_denom: float = 5.0
    """Denominator of the discount heuristic."""
    discount_min: float = 0.95
    """Smallest discount the heuristic returns."""
    discount_max: float = 0.995
    """Largest discount the heuristic returns."""
    discount: float | None = None
    """A fixed discount; ``None`` derives it from ``episode_length`` (see :attr:`gamma`)."""

    # ---------------------------------------------------------------- planning (MPPI)
    iterations: int = 6
    """MPPI iterations; two more are run when ``action_dim >= 20`` (see :attr:`mppi_iterations`)."""
    num_samples: int = 512
    """Action sequences evaluated per MPPI iteration (policy trajectories included)."""
    num_elites: int = 64
    """Best sequences that update the sampling distribution."""
    num_pi_trajs: int = 24
    """Sequences drawn from the policy prior instead of the Gaussian."""
    min_std: float = 0.05
    """Lower bound of the sampling standard deviation."""
    max_std: float = 2.0
    """Initial and largest sampling standard deviation."""
    temperature: float = 0.5
    """Inverse temperature of the elite weights ``exp(temperature * (v - max v))``."""

    # ---------------------------------------------------------------- derived

    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3

    @property
    def obs_size(self) -> int:
        return int(math.prod(self.obs_shape))

    @property
    def multitask(self) -> bool:
        return self.num_tasks > 0

    @property
    def task_size(self) -> int:
        """Width the task embedding adds to each network input (0 for one task)."""
        return self.task_dim if self.multitask else 0

    @property
    def gamma(self) -> float:
        """The discount: :attr:`discount` if set, else the episode-length heuristic."""
        if self.discount is not None:
            return float(self.discount)
        return heuristic_discount(self.episode_length, self.discount_denom, self.discount_min, self.discount_max)

    @property
    def mppi_iterations(self) -> int:
        """MPPI iterations, with the reference's +2 for large action spaces."""
        return self.iterations + 2 * int(self.action_dim >= 20)

    @property
    def bin_size(self) -> float:
        return (self.vmax - self.vmin) / (self.num_bins - 1)

    def validate(self) -> None:
        check_sizes(type(self).__name__, "obs_shape", self.obs_shape)
        require(len(self.obs_shape) in (1, 3),
                f"obs_shape must be (D,) for states or (64, 64, C) for images, got {tuple(self.obs_shape)}.")
        if self.is_image:
            require(tuple(self.obs_shape[:2]) == (64, 64),
                    f"TD-MPC2's pixel encoder expects 64x64 images (H, W, C), got {tuple(self.obs_shape)}.")
        require(self.action_dim > 0, f"action_dim must be positive, got {self.action_dim}.")
        require(self.action_type in ("continuous", "discrete"),
                f"action_type must be 'continuous' or 'discrete', got {self.action_type!r}.")
        for name in ("enc_dim", "mlp_dim", "latent_dim", "num_enc_layers", "num_q", "num_channels",
                     "simnorm_dim", "horizon", "episode_length", "iterations", "num_samples", "num_elites"):
            require(int(getattr(self, name)) > 0, f"{name} must be positive, got {getattr(self, name)}.")
        require(self.latent_dim % self.simnorm_dim == 0,
                f"latent_dim ({self.latent_dim}) must be divisible by simnorm_dim ({self.simnorm_dim}).")
        require(self.num_q >= 2, f"num_q must be >= 2 (targets use two random heads), got {self.num_q}.")
        require(self.num_bins >= 2, f"num_bins must be >= 2, got {self.num_bins}.")
        require(self.vmin < self.vmax, f"vmin must be < vmax, got {self.vmin} and {self.vmax}.")
        require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}.")
        require(0.0 < self.rho <= 1.0, f"rho must be in (0, 1], got {self.rho}.")
        require(0.0 < self.tau <= 1.0, f"tau must be in (0, 1], got {self.tau}.")
        require(self.log_std_min < self.log_std_max,
                f"log_std_min must be < log_std_max, got {self.log_std_min} and {self.log_std_max}.")
        require(self.num_tasks >= 0, f"num_tasks must be >= 0, got {self.num_tasks}.")
        require(not self.multitask or self.task_dim > 0, f"task_dim must be positive, got {self.task_dim}.")
        require(self.discount is None or 0.0 < self.discount <= 1.0,
                f"discount must be in (0, 1] or None, got {self.discount}.")
        require(0 <= self.num_pi_trajs < self.num_samples,
                f"num_pi_trajs must be in [0, num_samples={self.num_samples}), got {self.num_pi_trajs}.")
        require(self.num_elites <= self.num_samples,
                f"num_elites ({self.num_elites}) must be <= num_samples ({self.num_samples}).")
        require(0.0 < self.min_std <= self.max_std,
                f"min_std must be in (0, max_std={self.max_std}], got {self.min_std}.")
        require(self.shift_pad >= 0, f"shift_pad must be >= 0, got {self.shift_pad}.")
