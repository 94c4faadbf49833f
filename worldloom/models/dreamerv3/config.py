"""DreamerV3 configuration and the preset table (the one source of preset sizes)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import ClassVar

from worldloom.core.config import ConfigBase, OriginalName, check_sizes, renamed, require
from worldloom.core.errors import ConfigError

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

# The original library's aliases; size1m is reached by its full name.
ALIASES = {
    "dreamer": "dreamerv3:size12m",
    "dreamerv3": "dreamerv3:size12m",
    "dreamer-small": "dreamerv3:size12m",
    "dreamer-medium": "dreamerv3:size50m",
    "dreamer-large": "dreamerv3:size200m",
}


def _stoch_dim(value, values) -> dict:
    """The original's flat stochastic size: 32 latents x classes there, ``stoch`` latents x ``classes`` here."""
    classes = values["classes"]
    if isinstance(classes, bool) or not isinstance(classes, numbers.Integral) or classes < 2:
        raise ConfigError(f"DreamerV3Config: classes (num_categories) must be an int >= 2, got {classes!r}.")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % classes:
        raise ConfigError(f"DreamerV3Config: stoch_dim={value!r} must be a positive multiple of the classes per "
                          f"latent ({classes}; set them with num_categories=); it sets stoch = stoch_dim / classes.")
    return {"stoch": value // classes}


def _kl_balance(value, values) -> dict:
    """The original's KL balance alpha: dyn and rep weighted alpha : 1 - alpha (dyn scale kept)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(f"DreamerV3Config: kl_balance must be in (0, 1], got {value!r}; the reference's "
                          f"loss_scale_dyn=1, loss_scale_rep=0.1 is kl_balance={1 / 1.1:.4f}.")
    dyn = values["loss_scale_dyn"]
    if isinstance(dyn, bool) or not isinstance(dyn, numbers.Real):
        raise ConfigError(f"DreamerV3Config.loss_scale_dyn: expected a number, got {type(dyn).__name__} {dyn!r}.")
    return {"loss_scale_rep": float(dyn) * (1.0 - value) / value}


def _mlp_layers(name: str) -> OriginalName:
    return OriginalName(name, ("enc_layers", "dec_layers"), "`enc_layers` and `dec_layers` (vector encoder and "
                        "decoder MLPs)", lambda value, _: {"enc_layers": value, "dec_layers": value})


ORIGINAL_NAMES = (
    renamed("deter_dim", "deter"),
    renamed("num_categories", "classes"),
    OriginalName("stoch_dim", ("stoch",), "`stoch` = stoch_dim / `classes` (flat size = latents x classes)",
                 _stoch_dim),
    renamed("cnn_depth", "depth"),
    OriginalName("hidden_dim", ("hidden", "units"), "`hidden` and `units` (equal in every reference preset)",
                 lambda value, _: {"hidden": value, "units": value}),
    _mlp_layers("mlp_layers"),
    _mlp_layers("num_layers"),
    renamed("kl_free", "free_nats", "`free_nats` (free bits after summing over latents)"),
    OriginalName("kl_balance", ("loss_scale_rep",), "`loss_scale_rep` = `loss_scale_dyn` x (1 - kl_balance) / "
                 "kl_balance", _kl_balance),
)


# (fields, check, what is expected) of DreamerV3Config.validate; NaN fails every check.
VALUE_CHECKS = (
    (("action_dim", "deter", "hidden", "stoch", "blocks", "depth", "units", "decoder_blocks"),
     lambda v: v >= 1, ">= 1"),
    (("classes",), lambda v: v >= 2, ">= 2 (a categorical of one class holds no information)"),
    (("enc_layers", "dec_layers", "head_layers", "img_layers", "obs_layers"),
     lambda v: v >= 0, ">= 0 (0: no hidden layer)"),
    (("kernel",), lambda v: v >= 1 and v % 2, "odd and >= 1 (a same-padded conv's centred kernel)"),
    (("reward_bins",), lambda v: v >= 3 and v % 2, "odd and >= 3 (symexp bins around an exact zero)"),
    (("unimix",), lambda v: 0.0 <= v < 1.0, "in [0, 1) (the uniform share of the latents' categoricals)"),
    (("free_nats", "loss_scale_rec", "loss_scale_rew", "loss_scale_con", "loss_scale_dyn", "loss_scale_rep"),
     lambda v: 0.0 <= v < math.inf, "finite and >= 0"),
    (("contdisc_horizon",), lambda v: 1.0 <= v < math.inf,
     "finite and >= 1 (the continue target and discount are 1 - 1/contdisc_horizon)"),
)


@dataclasses.dataclass(frozen=True)
class DreamerV3Config(ConfigBase):
    """DreamerV3 world-model hyperparameters (defaults: ``size12m``).

    Also takes the original library's names (``deter_dim``, ``stoch_dim`` with
    ``num_categories``, ``cnn_depth``, ``hidden_dim``, ``mlp_layers``, ``kl_free``,
    ``kl_balance``, ``model_type``); see :data:`ORIGINAL_NAMES`.

    Example:
        >>> DreamerV3Config.from_size("size50m", obs_shape=(64, 64, 3), action_dim=18).deter
        4096
        >>> DreamerV3Config(deter_dim=1024, kl_free=0.5).free_nats
        0.5
    """

    ORIGINAL_NAMES: ClassVar[tuple] = ORIGINAL_NAMES
    MODEL_TYPES: ClassVar[tuple] = ("dreamerv3", "dreamer")
    PRESETS: ClassVar[dict] = PRESETS

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
    remat: str = "cnn"
    """Rematerialisation of image models: ``"cnn"`` runs the encoder and decoder of the loss in chunks of
    about 64 frames and recomputes their activations in the backward pass (the CNNs hold one chunk's
    activations, for one more forward pass of each); ``"none"`` keeps every activation."""

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
        check_sizes(type(self).__name__, "obs_shape", self.obs_shape)
        check_sizes(type(self).__name__, "cnn_mults", self.cnn_mults)
        for names, ok, expected in VALUE_CHECKS:  # ranges first: the checks below divide by them
            for name in names:
                value = getattr(self, name)
                require(ok(value), f"{name} must be {expected}, got {value}.")
        require(self.action_type in ("continuous", "discrete"),
                f"action_type must be 'continuous' or 'discrete', got {self.action_type!r}.")
        require(self.deter % self.blocks == 0,
                f"deter ({self.deter}) must be divisible by blocks ({self.blocks}).")
        require(self.compute_dtype in ("float32", "bfloat16"),
                f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}.")
        require(self.remat in ("none", "cnn"), f"remat must be 'none' or 'cnn', got {self.remat!r}.")
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
