"""Configs at the original library's path ``worldloom.core.config``, torch face.

``DreamerV3Config`` and ``TDMPC2Config`` are worldloom's configs with image
``obs_shape`` channels first; they take the docs' original names (``deter_dim``,
``stoch_dim``, ...) and the source's (``stoch_discrete``, ``stoch_classes``,
``num_q_networks``, ``gamma``, ...), and read them back as attributes.

Example:
    >>> from worldloom_torch_compat.core.config import DreamerV3Config
    >>> config = DreamerV3Config(stoch_discrete=8, stoch_classes=8, deter_dim=256)
    >>> config.stoch_dim, config.model_type, tuple(config.obs_shape)
    (64, 'dreamer', (3, 64, 64))
"""

from __future__ import annotations

import dataclasses
import enum
from typing import ClassVar

from worldloom.core.config import ConfigBase
from worldloom.models import dreamerv3, tdmpc2
from worldloom_torch_compat._channels import ChannelsFirst
from worldloom_torch_compat._source_names import (
    DREAMER_READS,
    DREAMER_SOURCE_NAMES,
    TDMPC2_READS,
    TDMPC2_SOURCE_NAMES,
    SourceNames,
)


@dataclasses.dataclass(frozen=True)
class WorldModelConfig(ConfigBase):
    """The original's config base class: worldloom's :class:`~worldloom.core.config.ConfigBase`.

    A config file is one format on both faces, that of a saved model's
    ``config.json`` (an image ``obs_shape`` channels last, as the JAX model
    takes it): ``save`` writes the JAX model's config, and ``load`` (on this
    class, the class its ``model_type`` names) reads one back as the torch
    face's class, channels first.
    """

    def save(self, path, *, overwrite: bool = False) -> None:
        """Write the config as JSON, as a saved model's ``config.json`` holds it (image ``obs_shape`` channels
        last); :meth:`load` reads it back channels first."""
        self.to_jax().save(path, overwrite=overwrite)

    @classmethod
    def load(cls, path):
        """Read a config file (:meth:`save`'s, or a saved model's ``config.json``) as this face's class."""
        from worldloom_torch_compat._source_names import torch_config

        jax_cls = cls.jax_class() if cls.MODEL_TYPES else ConfigBase
        return torch_config(jax_cls.load(path))


class LatentType(enum.Enum):
    """The original's kinds of latent (the tag ``LatentState.latent_type`` holds)."""

    DETERMINISTIC = "deterministic"
    CATEGORICAL = "categorical"
    GAUSSIAN = "gaussian"
    SIMNORM = "simnorm"
    VQ = "vq"


class DynamicsType(enum.Enum):
    """The original's kinds of latent dynamics: DreamerV3's RSSM, TD-MPC2's MLP."""

    RSSM = "rssm"
    MLP = "mlp"
    TRANSFORMER = "transformer"


@dataclasses.dataclass(frozen=True)
class DreamerV3Config(SourceNames, ChannelsFirst, WorldModelConfig, dreamerv3.DreamerV3Config):
    """:class:`worldloom.models.dreamerv3.DreamerV3Config` with image ``obs_shape`` channels first
    (default ``(3, 64, 64)`` and ``action_dim`` 6, the original's defaults) and the source's names
    (``stoch_discrete``, ``stoch_classes``, ``encoder_type``, ``decoder_type``) beside the docs'."""

    ORIGINAL_NAMES: ClassVar[tuple] = DREAMER_SOURCE_NAMES + dreamerv3.DreamerV3Config.ORIGINAL_NAMES
    SOURCE_MODEL_TYPE: ClassVar[str] = "dreamer"
    SOURCE_READS: ClassVar[dict] = DREAMER_READS

    obs_shape: tuple = (3, 64, 64)
    """Observation shape: ``(C, H, W)`` is an image, anything else a vector (flattened)."""
    action_dim: int = 6
    """Size of the action vector (number of actions when discrete); the original's default, 6."""


@dataclasses.dataclass(frozen=True)
class TDMPC2Config(SourceNames, ChannelsFirst, WorldModelConfig, tdmpc2.TDMPC2Config):
    """:class:`worldloom.models.tdmpc2.TDMPC2Config` with image ``obs_shape`` channels first and
    the source's names (``num_q_networks``, ``gamma``) beside the docs'."""

    ORIGINAL_NAMES: ClassVar[tuple] = TDMPC2_SOURCE_NAMES + tdmpc2.TDMPC2Config.ORIGINAL_NAMES
    SOURCE_MODEL_TYPE: ClassVar[str] = "tdmpc2"
    SOURCE_READS: ClassVar[dict] = TDMPC2_READS


__all__ = ["DreamerV3Config", "DynamicsType", "LatentType", "TDMPC2Config", "WorldModelConfig"]
