"""A worldloom world model as a ``torch.nn.Module``.

The JAX handle (``model.jax_model``) does the computing; this module holds
its params as torch ``nn.Parameter``s and converts at the edge:

- Tensors in and out are torch tensors on the module's device; JAX sees
  zero-copy DLPack views of them. Image observations are channels first
  (``[..., C, H, W]``) here and channels last for JAX.
- The Parameters are the source of truth: before each call they are handed to
  JAX (zero-copy), so a torch optimiser's steps take effect at once. After
  JAX-side training (``worldloom_torch_compat.training``) the JAX params are
  copied back into them. Call :meth:`WorldModel.sync_from_jax` after changing
  ``jax_model.params`` yourself.
- With grad mode on, outputs carry a ``grad_fn`` over ``jax.vjp``:
  ``loss.backward()`` fills ``.grad`` of the Parameters and of float inputs
  that require grad (continuous actions, float observations, states).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import torch
from torch import nn

import worldloom
from worldloom.core.config import ConfigBase
from worldloom.core.devices import resolve_device
from worldloom.core.errors import ConfigError, DeviceError, ShapeError
from worldloom.models.base import of_class, positive_batch_size
from worldloom_torch_compat import _params
from worldloom_torch_compat._autograd import call_jax
from worldloom_torch_compat._convert import jax_device, torch_device
from worldloom_torch_compat.types import LatentState, Trajectory, from_jax_types, to_jax_types, with_start_state


class WorldModel(nn.Module):
    """A worldloom world model (DreamerV3, TD-MPC2, ...) as a ``torch.nn.Module``.

    Shapes follow worldloom's: observations ``[B, *obs_shape]`` (sequences
    ``[B, T, *obs_shape]``, images ``[..., C, H, W]``), actions ``[B, A]``
    (sequences ``[B, T, A]``, imagined ``[H, B, A]``; discrete models also take
    integer indices).

    Args:
        model: The :class:`worldloom.WorldModel` handle to wrap, or a config
            (``DreamerV3Config``/``TDMPC2Config``, images channels first) for a
            fresh model, as the original's ``DreamerV3WorldModel(config)``.
        device: Device of a fresh model (``"cpu"``, ``"cuda"``, ``"auto"``).
        seed: Seeds a fresh model's params and RNG.

    Example:
        >>> from worldloom_torch_compat import create_world_model
        >>> model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu")
        >>> state = model.encode(torch.zeros(3, 4))
        >>> model.imagine(state, torch.zeros(15, 3, 2)).rewards.shape
        torch.Size([15, 3])
    """

    family_classes: ClassVar[dict[str, type]] = {}
    """Family name -> the torch class of that family (``DreamerV3WorldModel``, ...)."""
    family_name: ClassVar[str | None] = None

    def __init_subclass__(cls, family: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if family is not None:
            cls.family_name = family
            WorldModel.family_classes[family] = cls

    def __init__(self, model: worldloom.WorldModel | ConfigBase, *, device: str | torch.device = "auto",
                 seed: int = 0):
        super().__init__()
        if isinstance(model, ConfigBase):
            from worldloom.models.factory import build_from_config

            model = build_from_config(jax_config(model), seed=seed, device=_jax_device_name(device))
        if not isinstance(model, worldloom.WorldModel):
            raise ConfigError(f"{type(self).__name__} wraps a worldloom.WorldModel or builds one from a config, "
                              f"got {type(model).__name__}.")
        if self.family_name is not None and model.family != self.family_name:
            raise ConfigError(f"{type(self).__name__} is a {self.family_name} model, got a {model.family} one.")
        jax_model = model
        self.jax_model = jax_model
        self._treedef = jax.tree_util.tree_structure(jax_model.params)
        self._paths = _params.register(self, jax_model.params, torch_device(jax_model.device))
        self.train(jax_model.training)

    # ------------------------------------------------------------ facts

    @property
    def device(self) -> torch.device:
        """torch device of the Parameters (and of every output)."""
        return next(iter(self.parameters())).device

    latent_type: ClassVar[str] = "deterministic"
    """The original's ``LatentState.latent_type`` of this family's states."""
    source_losses: ClassVar[dict[str, str]] = {}
    """The original source's loss names -> worldloom's (``compute_loss`` returns both)."""

    @property
    def config(self):
        """The model's frozen config as the torch face's class (``DreamerV3Config``, ``TDMPC2Config``
        of ``worldloom_torch_compat``): the JAX model's values with an image ``obs_shape`` channels
        first, as the original's, reading the original's names too (``config.deter_dim``,
        ``config.model_type``, ``config.model_name``). ``config.to_jax()`` is the JAX model's config
        (``jax_model.config``, channels last)."""
        from worldloom_torch_compat._source_names import torch_config

        config = self.jax_model.config
        cached = self.__dict__.get("_config_view")
        if cached is None or cached[0] is not config:
            cached = (config, torch_config(config))
            self.__dict__["_config_view"] = cached
        return cached[1]

    @property
    def family(self) -> str:
        return self.jax_model.family

    @property
    def preset(self) -> str | None:
        return self.jax_model.preset

    @property
    def is_image(self) -> bool:
        return len(self.jax_model.config.obs_shape) == 3

    @property
    def obs_shape(self) -> tuple:
        """Observation shape at the torch edge: ``(C, H, W)`` for images."""
        shape = tuple(self.jax_model.config.obs_shape)
        return (shape[2], shape[0], shape[1]) if self.is_image else shape

    @property
    def action_dim(self) -> int:
        return int(self.jax_model.config.action_dim)

    def num_parameters(self) -> int:
        """Total number of trained parameters (equals ``sum(p.numel() for p in parameters())``)."""
        return self.jax_model.num_parameters()

    # ------------------------------------------------------------ sync

    def sync_to_jax(self, copy: bool = False) -> worldloom.WorldModel:
        """Hand the Parameters' current values to the JAX handle and return it.

        Args:
            copy: Give JAX its own copy instead of zero-copy views (needed
                before JAX code that donates or keeps the params).
        """
        self.jax_model.params = _params.push(self, self._paths, self._treedef, copy=copy)
        return self.jax_model

    def sync_from_jax(self, params=None) -> WorldModel:
        """Copy the JAX handle's params (or the params pytree ``params``) into the Parameters."""
        _params.pull(self, self._paths, self.jax_model.params if params is None else params)
        return self

    # ------------------------------------------------------------ torch module

    def train(self, mode: bool = True) -> WorldModel:
        """Training mode (stochastic latents); forwarded to the JAX handle."""
        super().train(mode)
        self.jax_model.train(mode)
        return self

    def to(self, *args, **kwargs):
        """``nn.Module.to``; a device torch does not know is a DeviceError naming it."""
        try:
            torch._C._nn._parse_to(*args, **kwargs)
        except (RuntimeError, TypeError) as err:
            raise DeviceError(f"{type(self).__name__}.to: expected a device (cpu, cuda, cuda:1, ...) or a dtype, "
                              f"got {', '.join(map(repr, [*args, *kwargs.values()]))} ({err}).") from err
        return super().to(*args, **kwargs)

    def _apply(self, fn, recurse: bool = True):
        # .to(), .cuda(), .cpu() and friends move the Parameters; the JAX handle follows.
        # A dtype change (.half(), .double(), .to(torch.float64)) is refused: the JAX
        # computation keeps float32 params, so converted Parameters would only pretend.
        before = {name: param.dtype for name, param in self.named_parameters()}
        try:
            out = super()._apply(fn, recurse)
        except (AssertionError, RuntimeError) as err:  # e.g. .to("cuda") on a torch without CUDA
            raise DeviceError(f"{type(self).__name__}: could not move the Parameters ({err}); expected a device "
                              f"this torch can use (CUDA available: {torch.cuda.is_available()}).") from err
        if "_paths" in self.__dict__:
            changed = {name: param.dtype for name, param in self.named_parameters() if param.dtype != before[name]}
            if changed:
                for name, param in self.named_parameters():
                    param.data = param.data.to(before[name])
                raise ConfigError(
                    f"{type(self).__name__}: expected the Parameters to stay {before[next(iter(changed))]}, got a "
                    f"conversion to {next(iter(changed.values()))}. worldloom computes with float32 params; for "
                    "bfloat16 matmuls set compute_dtype='bfloat16' in the model config. Moving devices "
                    "(.to('cuda'), .cpu()) works.")
            self.jax_model.to(jax_device(self.device))
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` with worldloom errors for a state dict that does not fit.

        Raises:
            CheckpointError: missing or unexpected keys (when ``strict``).
            ShapeError: a tensor whose shape differs from the Parameter's.
        """
        _params.check_state_dict(self, state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, obs, actions, is_first=None, state=None) -> LatentState:
        """Same as :meth:`observe_sequence`: posterior states ``[B, T, ...]`` of a sequence."""
        return self.observe_sequence(obs, actions, is_first=is_first, state=state)

    def __reduce_ex__(self, protocol):
        # copy.deepcopy and pickle: rebuild the JAX handle from its config and
        # the Parameters' values (a handle holds devices and compiled functions,
        # which do not pickle). The copy's RNG restarts from the model's seed.
        handle = self.jax_model
        meta = (handle.family, handle.preset, handle.config.to_dict(), handle.seed, str(self.device))
        tensors = [t.detach() for t in _params.tensors(self, self._paths)]
        flags = [t.requires_grad for t in _params.tensors(self, self._paths)]
        return _rebuild, (meta, tensors, flags, self.training)

    def __getattr__(self, name: str) -> Any:
        # Parameters and submodules first (nn.Module), then the family's own
        # methods (TD-MPC2's predict_q, act, ...), called through the same edge.
        # The handle's common methods (load_params, make_update, ...) are not
        # forwarded: they manage the JAX side (use model.jax_model for those).
        try:
            return super().__getattr__(name)
        except AttributeError:
            handle = self.__dict__.get("jax_model")
            common = name.startswith("_") or hasattr(worldloom.WorldModel, name)
            method = None if common else getattr(handle, name, None)
            if method is None or not inspect.ismethod(method):
                raise
            return functools.partial(self._call, name)

    def __repr__(self) -> str:
        name = f"{self.family}:{self.preset}" if self.preset else self.family
        return (f"{type(self).__name__}({name}, params={self.num_parameters():,}, "
                f"device={self.device}, training={self.training})")

    # ------------------------------------------------------------ edge

    # torch.compile: dynamo does not trace into JAX, which compiles the work itself;
    # the edge runs eagerly inside a compiled caller (a graph break).
    @torch.compiler.disable
    def _call(self, method: str | Callable[..., Any], *args, **kwargs) -> Any:
        """Run ``jax_model.<method>(*args, **kwargs)`` on torch inputs, differentiably.

        ``method`` may also be a function of the handle, run as ``method(jax_model, *args, **kwargs)``.
        """
        handle = self.sync_to_jax()
        params = jax.tree_util.tree_unflatten(self._treedef, _params.tensors(self, self._paths))
        function = functools.partial(method, handle) if callable(method) else getattr(handle, method)

        def run(traced_params, call_args, call_kwargs):
            if traced_params is None:
                return function(*call_args, **call_kwargs)
            pushed, handle.params = handle.params, traced_params
            try:
                return function(*call_args, **call_kwargs)
            finally:
                handle.params = pushed

        params = params if torch.is_grad_enabled() else None
        out = call_jax(run, params, to_jax_types(args), to_jax_types(kwargs), device=self.device)
        return _tagged(from_jax_types(out), self.latent_type)

    def _obs_in(self, obs, lead: int) -> Any:
        """Observations as JAX wants them: images channels last ``[..., H, W, C]``."""
        if not self.is_image or obs is None:
            return obs
        obs = torch.as_tensor(obs)
        if obs.ndim < 3 + lead or tuple(obs.shape[-3:]) != self.obs_shape:
            dims = ", ".join(["B", "T"][:lead] + [str(d) for d in self.obs_shape])
            hint = " (channels last; permute to channels first)" if tuple(obs.shape[-3:]) == tuple(
                self.jax_model.config.obs_shape) else ""
            raise ShapeError(f"obs: expected shape [{dims}] (channels first), got {list(obs.shape)}{hint}.")
        return obs.movedim(-3, -1)

    def _obs_out(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.movedim(-1, -3) if self.is_image else obs

    # ------------------------------------------------------------ protocol

    def initial_state(self, batch_size: int, device: str | torch.device | None = None) -> LatentState:
        """The model's start state ``[batch_size, ...]``, on ``device`` (the source's argument; default: the
        model's)."""
        state = self._call("initial_state", positive_batch_size(batch_size))
        return state if device is None else state.to(device)

    def encode(self, obs, deterministic: bool = False, **kwargs) -> LatentState:
        """Posterior state of a first observation ``[B, *obs_shape]`` -> ``[B, ...]``.

        ``deterministic`` (the source's argument): the distributions' modes instead of samples, for this call
        (as in :meth:`eval` mode). ``**kwargs`` are family-specific extras (TD-MPC2: ``task``).
        """
        with self._modes(deterministic):
            return self._call("encode", self._obs_in(obs, 1), **kwargs)

    @contextlib.contextmanager
    def _modes(self, deterministic: bool):
        """The JAX handle in eval mode (modes, not samples) for one call when ``deterministic``."""
        handle = self.jax_model
        training = handle.training
        if deterministic and training:
            handle.train(False)
        try:
            yield
        finally:
            handle.train(training)

    def observe(self, state: LatentState, action, obs, **kwargs) -> LatentState:
        """One posterior step: ``state [B, ...]``, the ``action [B, A]`` taken in it and
        the next ``obs [B, *obs_shape]`` (images channels first) -> next state ``[B, ...]``."""
        return self._call("observe", state, action, self._obs_in(obs, 1), **kwargs)

    def observe_sequence(self, obs, actions, is_first=None, state: LatentState | None = None,
                         **kwargs) -> LatentState:
        """Posterior states of a sequence.

        Args:
            obs: ``[B, T, *obs_shape]``.
            actions: ``[B, T, A]``; ``actions[:, t]`` is taken after ``obs[:, t]``.
            is_first: Optional ``[B, T]`` bool; the state resets there.
            state: Optional state ``[B, ...]`` before ``obs[:, 0]``.
            **kwargs: Family-specific extras (DreamerV3: ``prev_action [B, A]``).

        Returns:
            ``LatentState`` ``[B, T, ...]``.
        """
        return self._call("observe_sequence", self._obs_in(obs, 2), actions, is_first=is_first, state=state,
                          **kwargs)

    def predict(self, state: LatentState, action, deterministic: bool = False, **kwargs) -> LatentState:
        """One prior step: ``state [B, ...]``, ``action [B, A]`` -> next state ``[B, ...]``; ``deterministic``
        as in :meth:`encode`."""
        with self._modes(deterministic):
            return self._call("predict", state, action, **kwargs)

    def decode(self, state: LatentState, *args, **kwargs) -> dict:
        """Heads of a state ``[..., ...]``: ``reward`` and ``continue`` ``[..., 1]`` and, where the
        family has a decoder, ``obs`` (real units; images ``[..., C, H, W]`` in [0, 1]).

        Extra arguments go to the family's ``decode`` (TD-MPC2: ``action``, ``task``).
        """
        out = self._call("decode", state, *args, **kwargs)
        if "obs" in out:
            out["obs"] = self._obs_out(out["obs"])
        return out

    def imagine(self, initial_state: LatentState, actions, deterministic: bool = False, **kwargs) -> Trajectory:
        """Roll the prior forward under ``actions`` ``[H, B, A]`` from ``initial_state`` ``[B, ...]``.

        Returns:
            :class:`Trajectory` with states ``[H + 1, B, ...]`` (``initial_state``
            first, then the state after each action, as the original's), rewards
            ``[H, B]`` (real units) and continue probabilities ``[H, B]``; ``deterministic``
            as in :meth:`encode`.
        """
        with self._modes(deterministic):
            return self._call(_imagine_from_start, initial_state, actions, **kwargs)

    def compute_loss(self, batch: Mapping[str, Any], key=None) -> dict:
        """Loss terms on a ``[B, T, ...]`` batch (``obs, actions, rewards, continues``
        and optionally ``is_first``), as 0-dim tensors: ``{"loss", "loss/rec", ...}``, and
        the original source's names of the terms (:attr:`source_losses`). A batch
        without ``continues`` (or ``terminals``) has no episode end: continues are ones.

        ``compute_loss(batch)["loss"].backward()`` fills the Parameters' ``.grad``.
        """
        if not isinstance(batch, Mapping):
            raise ShapeError(f"batch: expected a dict of [B, T, ...] arrays, got {type(batch).__name__}.")
        batch = dict(batch)
        if "continues" not in batch and "terminals" not in batch and "rewards" in batch:
            # The source's batches may leave continues out: no episode ends inside them.
            batch["continues"] = torch.ones_like(torch.as_tensor(batch["rewards"]), dtype=torch.float32)
        if "obs" in batch:
            batch["obs"] = self._obs_in(batch["obs"], 2)
        return self.with_source_names(self._call("compute_loss", batch, key=key))

    def with_source_names(self, losses: dict) -> dict:
        """``losses`` (worldloom's names) with the original library's names of the same terms added: those it
        documents (``"kl_loss"``, ...: :meth:`worldloom.WorldModel.with_original_names`) and its source's
        (:attr:`source_losses`)."""
        losses = self.jax_model.with_original_names(losses)
        for source_name, name in self.source_losses.items():
            if name in losses:
                losses.setdefault(source_name, losses[name])
        return losses

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> WorldModel:
        """A model of this class from a preset, an alias or a saved directory: :func:`create_world_model`.

        Raises:
            ConfigError: ``name_or_path`` names a model of another family.
        """
        return of_class(cls, create_world_model(name_or_path, **kwargs), name_or_path)

    def save_pretrained(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the model (current Parameters) to directory ``path``; load with :func:`create_world_model`.

        As :meth:`worldloom.WorldModel.save_pretrained`: an earlier saved model is replaced atomically,
        anything else at ``path`` is a CheckpointError unless ``overwrite=True``.
        """
        self.sync_to_jax().save_pretrained(path, overwrite=overwrite)


def _imagine_from_start(handle: worldloom.WorldModel, initial_state, actions, **kwargs):
    """``handle.imagine`` with ``initial_state`` put before the imagined states (``H + 1`` states)."""
    return with_start_state(initial_state, handle.imagine(initial_state, actions, **kwargs))


def _tagged(out: Any, latent_type: str) -> Any:
    """``out`` with the family's ``latent_type`` on every LatentState in it."""
    if isinstance(out, LatentState):
        out.latent_type = latent_type
    elif isinstance(out, Trajectory):
        out.states.latent_type = latent_type
    elif isinstance(out, dict):
        for value in out.values():
            _tagged(value, latent_type)
    elif isinstance(out, (list, tuple)):
        for value in out:
            _tagged(value, latent_type)
    return out


def _rebuild(meta: tuple, tensors: list, flags: list, training: bool) -> WorldModel:
    """Inverse of :meth:`WorldModel.__reduce_ex__`."""
    from worldloom.core import registry
    from worldloom_torch_compat._convert import to_jax

    family_name, preset, config, seed, device = meta
    family = registry.families()[family_name]
    config = family.config_cls.from_dict(config)
    shapes = jax.eval_shape(lambda: family.init_params(config, jax.random.PRNGKey(0)))
    params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes),
                                          [jax.numpy.array(to_jax(t), copy=True) for t in tensors])
    handle = family.build(config, params=params, seed=seed, device=jax_device(torch.device(device)), preset=preset)
    module = wrap(handle).train(training)  # the family class (DreamerV3WorldModel, ...)
    for tensor, flag in zip(_params.tensors(module, module._paths), flags):
        tensor.requires_grad_(flag)
    return module


# ---------------------------------------------------------------- factory


def channels_last(obs_shape: Sequence[int] | None) -> tuple | None:
    """``(C, H, W)`` -> ``(H, W, C)``; other shapes unchanged.

    Raises:
        ConfigError: a 3-d shape that looks channels last (``(64, 64, 3)``).
    """
    if obs_shape is None:
        return None
    shape = tuple(int(d) for d in (obs_shape if isinstance(obs_shape, Sequence) else [obs_shape]))
    if len(shape) != 3:
        return shape
    if shape[0] not in (1, 2, 3, 4) and shape[-1] in (1, 2, 3, 4):
        raise ConfigError(f"obs_shape: expected an image shape channels first (C, H, W) such as "
                          f"({shape[-1]}, {shape[0]}, {shape[1]}), got {shape}.")
    return (shape[1], shape[2], shape[0])


def channels_first(obs_shape: Sequence[int]) -> tuple:
    """``(H, W, C)`` -> ``(C, H, W)``; other shapes unchanged."""
    shape = tuple(obs_shape)
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape


def _jax_device_name(device) -> str | jax.Device:
    """The JAX device for ``device``, kept where torch can reach it (no CUDA torch: CPU for "auto")."""
    name = "auto" if device is None else (device if isinstance(device, jax.Device) else str(device))
    if name == "auto" and resolve_device("auto").platform == "gpu" and not torch.cuda.is_available():
        return "cpu"
    return name


def create_world_model(
    model: str | os.PathLike,
    obs_shape: Sequence[int] | None = None,
    action_dim: int | None = None,
    device: str | torch.device = "auto",
    *,
    seed: int | None = None,
    **overrides: Any,
) -> WorldModel:
    """Create a world model as a ``torch.nn.Module``; arguments as :func:`worldloom.create_world_model`.

    Args:
        model: A preset (``"dreamerv3:size12m"``, also ``"dreamer:size12m"``), an alias, a
            ``save_pretrained`` directory, or ``"type:size"`` of a model class registered with
            ``WorldModelRegistry.register`` (built from its config class; ``seed`` does not apply).
        obs_shape: Observation shape; images channels first, ``(C, H, W)``. A new model
            without one gets the original's ``(3, 64, 64)``.
        action_dim: Action size (number of actions when discrete); by default the original's 6.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device`` or ``"auto"``.
        seed: Seeds the initial params and the model's RNG (``None``: 0); for a saved
            directory the RNG alone (``None``: the saved seed).
        **overrides: Config fields in any of the configs' names, e.g. ``deter=256``,
            ``deter_dim=256``, ``stoch_discrete=8``, ``action_type="discrete"``.

    Raises:
        UnknownModelError, ConfigError, CheckpointError, DeviceError: as worldloom's.
    """
    from worldloom_torch_compat._names import is_saved_path
    from worldloom_torch_compat.core.registry import build_registered, registered_type

    saved = not isinstance(model, (str, os.PathLike)) or is_saved_path(os.fspath(model))
    if not saved and registered_type(model) is not None:  # a user's own model class (WorldModelRegistry.register)
        return build_registered(model, obs_shape, action_dim, device, **overrides)
    if saved:
        handle = worldloom.create_world_model(model, channels_last(obs_shape), action_dim,
                                              device=_jax_device_name(device), seed=seed, **overrides)
        return wrap(handle)
    from worldloom.core import registry
    from worldloom_torch_compat._names import DEFAULT_ACTION_DIM, DEFAULT_OBS_SHAPE, preset_name

    name = preset_name(model)
    family, preset = registry.resolve(name)
    config_class = WorldModel.family_classes[family.name].config_class
    config = config_class.from_size(
        preset, obs_shape=DEFAULT_OBS_SHAPE if obs_shape is None else obs_shape,
        action_dim=DEFAULT_ACTION_DIM if action_dim is None else action_dim, **overrides)
    fields = config.to_jax().to_dict()
    handle = worldloom.create_world_model(name, fields.pop("obs_shape"), fields.pop("action_dim"),
                                          device=_jax_device_name(device), seed=seed, **fields)
    return wrap(handle)


def wrap(handle: worldloom.WorldModel) -> WorldModel:
    """``handle`` as its family's torch class (``DreamerV3WorldModel``, ...), or :class:`WorldModel`."""
    return WorldModel.family_classes.get(handle.family, WorldModel)(handle)


def from_config(config: ConfigBase, *, device: str | torch.device = "auto", seed: int = 0) -> WorldModel:
    """A fresh model of ``config`` (images channels first) as its family's torch class."""
    from worldloom.models.factory import build_from_config

    return wrap(build_from_config(jax_config(config), seed=seed, device=_jax_device_name(device)))


def jax_config(config: ConfigBase) -> ConfigBase:
    """The JAX model's config for ``config``: channels-first image shapes become channels last."""
    to_jax = getattr(config, "to_jax", None)
    return to_jax() if to_jax is not None else config
