"""DreamerV3 configuration and the preset table (the one source of preset sizes)."""

from __future__ import annotations

import dataclasses
import math

from worldloom.core.config import ConfigBase, require

# name: (deter, hidden, classes, cnn depth, units)
PRESETS = {
    "size1m": dict(deter=512, hidden=64, classes=4, depth=4, units=64),
    "size12m": dict(deter=2048, hidden=256, classes=16, depth=16, units=256),
    "size25m": dict(deter=3072, hidden=384, classes=24, depth=24, units=384),
    "size50m": dict(deter=4096, hidden=512, classes=32, depth=32, units=512),
    "size100m": dict(deter=6144, hidden=768, classes=48, depth=48, units=768),
    "size200m": dict(deter=8192, hidden=1024, classes=64, depth=64, units=1024),
    "size400m": dict(deter=12288, hidden=1536, classes=96, depth=96, units=1536),
}

ALIASES = {
    "dreamer": "dreamerv3:size12m",
    "dreamerv3": "dreamerv3:size12m",
    "dreamer-small": "dreamerv3:size1m",
    "dreamer-medium": "dreamerv3:size12m",
    "dreamer-large": "dreamerv3:size50m",
}


@dataclasses.dataclass(frozen=True)
class DreamerV3Config(ConfigBase):
    """DreamerV3 world-model hyperparameters (defaults: ``size12m``)."""

    obs_shape: tuple = (64, 64, 3)
    """Observation shape: ``(H, W, C)`` is an image, anything else a vector (flattened)."""
    action_dim: int = 18
    """Size of the action vector (number of actions when discrete)."""
    action_type: str = "continuous"
    """``"continuous"`` (vectors in [-1, 1]) or ``"discrete"`` (one-hot or indices)."""
    deter: int = 2048
    """Size of the GRU's deterministic state."""
    hidden: int = 256
    """Width of the RSSM's input, prior and posterior layers."""
    stoch: int = 32
    """Number of categorical latents."""
    classes: int = 16
    """Classes per categorical latent."""
    blocks: int = 8
    """Blocks of the block-diagonal GRU."""
    depth: int = 16
    """CNN base depth; stages use ``depth * cnn_mults``."""
    cnn_mults: tuple = (2, 3, 4, 4)
    """Channel multipliers of the CNN stages (each halves the resolution)."""
    kernel: int = 5
    """CNN kernel size."""
    units: int = 256
    """Width of MLPs (vector encoder/decoder, heads)."""
    enc_layers: int = 3
    """Layers of the vector encoder."""
    dec_layers: int = 3
    """Layers of the vector decoder."""
    head_layers: int = 1
    """Hidden layers of the reward and continue heads."""
    img_layers: int = 2
    """Hidden layers of the prior."""
    obs_layers: int = 1
    """Hidden layers of the posterior."""
    decoder_blocks: int = 8
    """Blocks of the image decoder's first (block-linear) layer."""
    unimix: float = 0.01
    """Uniform mixture of the latent categoricals."""
    reward_bins: int = 255
    """Two-hot bins of the reward head."""
    free_nats: float = 1.0
    """Free bits of the KL terms, applied after summing over latents."""
    contdisc_horizon: float = 333.0
    """Non-terminal continue target is ``1 - 1/contdisc_horizon``."""
    loss_scale_rec: float = 1.0
    loss_scale_rew: float = 1.0
    loss_scale_con: float = 1.0
    loss_scale_dyn: float = 1.0
    loss_scale_rep: float = 0.1
    compute_dtype: str = "float32"
    """``"float32"`` or ``"bfloat16"`` matmuls/convs; norms, distributions and losses stay f32."""

    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3

    @property
    def obs_size(self) -> int:
        return int(math.prod(self.obs_shape))

    @property
    def stoch_size(self) -> int:
        return self.stoch * self.classes

    @property
    def feature_size(self) -> int:
        return self.deter + self.stoch_size

    def validate(self) -> None:
        require(len(self.obs_shape) >= 1 and all(int(d) > 0 for d in self.obs_shape),
                f"obs_shape must be a non-empty tuple of positive sizes, got {self.obs_shape}.")
        require(int(self.action_dim) > 0, f"action_dim must be positive, got {self.action_dim}.")
        require(self.action_type in ("continuous", "discrete"),
                f"action_type must be 'continuous' or 'discrete', got {self.action_type!r}.")
        require(self.deter % self.blocks == 0,
                f"deter ({self.deter}) must be divisible by blocks ({self.blocks}).")
        require(self.compute_dtype in ("float32", "bfloat16"),
                f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}.")
        require(self.reward_bins % 2 == 1, f"reward_bins must be odd, got {self.reward_bins}.")
        for name in ("hidden", "stoch", "classes", "units", "depth"):
            require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}.")
        if self.is_image:
            factor = 2 ** len(self.cnn_mults)
            height, width, _ = self.obs_shape
            require(height % factor == 0 and width % factor == 0,
                    f"image observations must have height and width divisible by {factor}, "
                    f"got {tuple(self.obs_shape)}.")
            last = self.depth * self.cnn_mults[-1]
            require(last % self.decoder_blocks == 0 and self.deter % self.decoder_blocks == 0,
                    f"the image decoder needs depth * cnn_mults[-1] ({last}) and deter ({self.deter}) "
                    f"divisible by decoder_blocks ({self.decoder_blocks}).")
