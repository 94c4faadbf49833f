"""Config classes as the torch edge sees them: image ``obs_shape`` channels first."""

from __future__ import annotations

from worldloom.core.errors import ConfigError


class ChannelsFirst:
    """Mixin for a family config whose image ``obs_shape`` is ``(C, H, W)``.

    The fields are the JAX config's; only ``obs_shape`` of an image reads
    channels first. :meth:`to_jax` gives the JAX model's config (channels last).
    """

    @classmethod
    def jax_class(cls) -> type:
        """The JAX family config class this torch-face class extends."""
        from worldloom.core.config import ConfigBase

        return next(c for c in cls.__mro__[1:]
                    if issubclass(c, ConfigBase) and c.MODEL_TYPES and not issubclass(c, ChannelsFirst))

    def to_jax(self):
        """The same config for the JAX model, ``obs_shape`` channels last."""
        from worldloom_torch_compat.model import channels_last

        base = self.jax_class()
        try:
            shape = channels_last(self.obs_shape)
        except ConfigError as err:
            raise ConfigError(f"{type(self).__name__}: {err}") from err
        return base(**{**self.to_dict(), "obs_shape": shape})

    def validate(self) -> None:
        self.to_jax()  # the JAX config checks every value
