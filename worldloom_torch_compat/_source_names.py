"""The original's source names for config fields: the rows its code uses beyond its docs.

WorldLoom's source (its examples, tests and ``__init__`` files) names config
fields in a second vocabulary: ``stoch_discrete``, ``stoch_classes``,
``encoder_type``, ``decoder_type`` (DreamerV3), ``num_q_networks`` and
``gamma`` (TD-MPC2). The torch-face config classes add these rows to the JAX
configs' :data:`ORIGINAL_NAMES` tables (one mechanism, one meaning per name)
and :class:`SourceNames` lets code read them back, with ``model_type`` and
``model_name``; :func:`torch_config` gives a JAX model's config as the torch
face's class (what ``model.config`` returns).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from worldloom.core.config import OriginalName, renamed
from worldloom.core.errors import ConfigError
from worldloom.models.tdmpc2.config import MLP_LAYERS
from worldloom_torch_compat._names import source_size


def _coder_type(name: str) -> OriginalName:
    """``encoder_type``/``decoder_type``: which network reads or writes observations; here obs_shape decides."""

    def convert(value, values):
        expected = "cnn" if len(tuple(values["obs_shape"])) == 3 else "mlp"
        if str(value).lower() != expected:
            raise ConfigError(f"DreamerV3Config: {name}={value!r} has no faithful meaning for obs_shape="
                              f"{tuple(values['obs_shape'])}: the {name.split('_')[0]} follows obs_shape, a CNN for "
                              f"an image (C, H, W) and an MLP for a vector; expected {expected!r} or no {name}.")
        return {}

    return OriginalName(name, (), "`cnn` for image `obs_shape`, `mlp` for vectors (obs_shape decides)", convert)


# Before the docs' rows: stoch_dim reads the classes that stoch_classes sets.
DREAMER_SOURCE_NAMES = (
    renamed("stoch_classes", "classes", "`classes` (classes per latent)"),
    renamed("stoch_discrete", "stoch", "`stoch` (number of categorical latents)"),
    _coder_type("encoder_type"),
    _coder_type("decoder_type"),
)

TDMPC2_SOURCE_NAMES = (
    renamed("num_q_networks", "num_q", "`num_q` (size of the Q ensemble)"),
    renamed("gamma", "discount", "`discount` (a fixed discount in (0, 1])"),
)


def _image_or_vector(config) -> str:
    return "cnn" if len(tuple(config.obs_shape)) == 3 else "mlp"


DREAMER_READS: dict[str, Callable[[Any], Any]] = {
    "deter_dim": lambda c: c.deter,
    "stoch_discrete": lambda c: c.stoch,
    "stoch_classes": lambda c: c.classes,
    "num_categories": lambda c: c.classes,
    "stoch_dim": lambda c: c.stoch * c.classes,
    "hidden_dim": lambda c: c.hidden,
    "cnn_depth": lambda c: c.depth,
    "mlp_layers": lambda c: c.enc_layers,  # written to enc_layers and dec_layers; hidden_dim reads hidden alike
    "num_layers": lambda c: c.enc_layers,
    "kl_free": lambda c: c.free_nats,
    "kl_balance": lambda c: c.loss_scale_dyn / (c.loss_scale_dyn + c.loss_scale_rep),
    "encoder_type": _image_or_vector,
    "decoder_type": _image_or_vector,
}

TDMPC2_READS: dict[str, Callable[[Any], Any]] = {
    "hidden_dim": lambda c: c.mlp_dim,
    "num_q_networks": lambda c: c.num_q,
    "mlp_layers": lambda c: MLP_LAYERS,  # the only value the config takes
    "num_layers": lambda c: MLP_LAYERS,
}


class SourceNames:
    """Mixin: the original's names readable on a config (``config.deter_dim``, ``config.model_type``).

    ``model_type`` is the original's type name (``"dreamer"``, ``"tdmpc2"``);
    ``model_name`` is the preset whose every value the config holds, else ``"custom"``.
    """

    SOURCE_MODEL_TYPE: ClassVar[str] = ""
    SOURCE_READS: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    @classmethod
    def from_size(cls, size: str, **fields: Any):
        """As :meth:`ConfigBase.from_size`; the source's size ``ci`` is the family's smallest preset."""
        family, sep, name = str(size).rpartition(":")
        return super().from_size(f"{family}{sep}{source_size(cls.MODEL_TYPES[0], name)}", **fields)

    @property
    def model_type(self) -> str:
        return self.SOURCE_MODEL_TYPE

    def to_dict(self) -> dict[str, Any]:
        """The fields, with the original's ``"model_type"`` first (as its ``to_dict``); the config class
        takes the dict back."""
        return {"model_type": self.model_type, **super().to_dict()}

    @property
    def model_name(self) -> str:
        for name, values in self.PRESETS.items():
            if all(getattr(self, key) == value for key, value in values.items()):
                return name
        return "custom"

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields or attributes.
        read = type(self).SOURCE_READS.get(name)
        if read is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return read(self)


def torch_config(config) -> Any:
    """``config`` (a JAX model's config) as the torch face's config class: the same values, image
    ``obs_shape`` channels first, the original's names readable (``config.deter_dim``, ``config.model_type``).

    A config of another family, or an image shape that the torch face would not take channels first
    (``(H, W, C)`` whose ``(C, H, W)`` looks channels last), is returned unchanged.
    """
    from worldloom_torch_compat.core.config import DreamerV3Config, TDMPC2Config
    from worldloom_torch_compat.model import channels_first

    for torch_cls in (DreamerV3Config, TDMPC2Config):
        if type(config) is torch_cls.jax_class():
            try:
                return torch_cls(**{**config.to_dict(), "obs_shape": channels_first(config.obs_shape)})
            except ConfigError:
                return config
    return config
