"""Config classes as the torch edge sees them: image ``obs_shape`` channels first."""

from __future__ import annotations

from worldloom.core.errors import ConfigError


class ChannelsFirst:
    """Mixin for a family config whose image ``obs_shape`` is ``(C, H, W)``.

    The fields are the JAX config's; only ``obs_shape`` of an image reads
    channels first. :meth:`to_jax` gives the JAX model's config (channels last).
    """

    def to_jax(self):
        """The same config for the JAX model, ``obs_shape`` channels last."""
        from worldloom_torch_compat.model import channels_last

        base = next(c for c in type(self).__mro__[1:] if not issubclass(c, ChannelsFirst))
        try:
            shape = channels_last(self.obs_shape)
        except ConfigError as err:
            raise ConfigError(f"{type(self).__name__}: {err}") from err
        return base(**{**self.to_dict(), "obs_shape": shape})

    def validate(self) -> None:
        self.to_jax()  # the JAX config checks every value
