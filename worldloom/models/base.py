"""The ``WorldModel`` handle shared by every model family.

A handle holds a Flax module, its frozen config, a params pytree, an RNG key
and the device. Protocol methods are thin wrappers over jitted pure functions.
Training goes through :meth:`WorldModel.make_update`, which returns pure
``init``/``step`` functions the trainer jits, scans and donates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from worldloom.core import validation
from worldloom.core.arrays import as_array, check_trailing_shape
from worldloom.core.config import ConfigBase, require
from worldloom.core.devices import device_name, resolve_device
from worldloom.core.errors import ConfigError, DataError, ShapeError
from worldloom.core.types import LatentState
from worldloom.nn.functional import example_keys

Params = Any
Batch = Mapping[str, jax.Array]
Metrics = dict


@dataclasses.dataclass(frozen=True)
class OptimizerSettings(ConfigBase):
    """What a trainer asks of a model's optimiser."""

    learning_rate: float = 3e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay (0 disables it)."""
    grad_clip: float = 100.0
    """Global gradient-norm clip (0 or None disables it)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 over this many updates."""

    def validate(self) -> None:
        require(0 < self.learning_rate < math.inf, f"learning_rate must be finite and > 0, got {self.learning_rate}.")
        require(0 <= self.weight_decay < math.inf, f"weight_decay must be finite and >= 0, got {self.weight_decay}.")
        require(self.grad_clip is None or 0 <= self.grad_clip < math.inf,
                f"grad_clip must be finite and >= 0 (0 or None: no clip), got {self.grad_clip}.")
        require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}.")

    def schedule(self):
        """Learning rate as a function of the update count (linear warm-up, then constant)."""
        import optax

        if self.warmup_steps > 0:
            return optax.linear_schedule(0.0, self.learning_rate, self.warmup_steps)
        return optax.constant_schedule(self.learning_rate)


@dataclasses.dataclass(frozen=True)
class UpdateFunctions:
    """Pure training functions of a model, for a trainer to jit and scan.

    Attributes:
        init: ``init(params) -> state``; the state pytree holds params,
            optimiser state and any other training state (target nets, scales).
            It owns its buffers (params are copied) and is committed to the
            params' device (see :func:`owned_state`), so a trainer may donate it
            and the update compiles once.
        step: ``step(state, batch, key) -> (state, metrics)``; one update on
            a ``[B, T, ...]`` batch. ``metrics`` maps names to f32 scalars and
            always holds ``"loss"``.
        params: ``params(state) -> params``: the model params inside a state.
        gradients: For a loss that is a mean over the batch's examples and draws
            its noise from per-example keys (``nn.functional.example_keys``):
            ``gradients(state, batch, keys [B]) -> (grads, metrics)``, and
            ``step`` is ``apply_gradients(state, *gradients(state, batch,
            example_keys(key, B)))``. A data-parallel trainer then computes
            the gradients of each batch shard on its own device and averages
            them with one all-reduce per update; the result is the one-device
            update's. ``None`` for updates that need the whole batch at once.
        apply_gradients: ``apply_gradients(state, grads, metrics) -> (state, metrics)``
            with the averaged gradients and metrics (``None`` with ``gradients``).
    """

    init: Callable[[Params], Any]
    step: Callable[[Any, Batch, jax.Array], tuple]
    params: Callable[[Any], Params]
    gradients: Callable[[Any, Batch, jax.Array], tuple] | None = None
    apply_gradients: Callable[[Any, Any, dict], tuple] | None = None


def step_from_gradients(gradients: Callable, apply_gradients: Callable) -> Callable:
    """``step(state, batch, key)`` of an update split into ``gradients`` and ``apply_gradients``.

    Example ``i`` of the batch draws from ``example_keys(key, B)[i]``, whether
    ``gradients`` sees the whole batch or (data parallel) its shard of it.
    """
    def step(state, batch, key):
        keys = example_keys(key, jax.tree_util.tree_leaves(batch)[0].shape[0])
        return apply_gradients(state, *gradients(state, batch, keys))

    return step


class ParameterView:
    """A named view of one parameter array (``numel()``, ``shape``, ``__array__``)."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: jax.Array):
        self.name = name
        self.value = value

    @property
    def shape(self) -> tuple:
        return tuple(self.value.shape)

    @property
    def dtype(self):
        return self.value.dtype

    def numel(self) -> int:
        return int(np.prod(self.value.shape, dtype=np.int64))

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.value)
        return out.astype(dtype) if dtype is not None else out

    def __jax_array__(self):
        return self.value

    def __repr__(self) -> str:
        return f"ParameterView({self.name!r}, shape={self.shape}, dtype={self.dtype})"


def flatten_params(params: Params) -> list[tuple[str, jax.Array]]:
    """``[(dotted_name, array), ...]`` in a stable order."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    out = []
    for path, leaf in flat:
        parts = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
        if parts and parts[0] == "params":
            parts = parts[1:]
        out.append((".".join(parts), leaf))
    return out


class WorldModel:
    """Base handle. Subclasses set ``family`` and implement the protocol."""

    family: ClassVar[str] = ""
    config_cls: ClassVar[type] = ConfigBase
    check_device_inputs: bool = True
    """Read the values of inputs already on an accelerator to check them (one host sync per call).
    Host inputs (NumPy, lists, CPU arrays) are always checked; set this to False on a handle to skip
    the sync where inputs are known to be valid (see :mod:`worldloom.core.validation`)."""

    def __init__(self, config: ConfigBase, params: Params | None = None, *, seed: int = 0, device=None,
                 preset: str | None = None):
        """A handle for ``config``: ``params`` if given, else fresh ones from ``seed``.

        ``DreamerV3WorldModel(config)`` is the original library's constructor.
        """
        if not isinstance(config, self.config_cls):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_cls.__name__}, "
                              f"got {type(config).__name__}.")
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
            raise ConfigError(f"{type(self).__name__}: seed: expected an integer, got {seed!r} "
                              f"({type(seed).__name__}).")
        if preset is not None and not isinstance(preset, str):
            raise ConfigError(f"{type(self).__name__}: preset: expected a preset name (a string) or None, got "
                              f"{preset!r} ({type(preset).__name__}).")
        if params is None:
            params = self.init_params(config, jax.random.PRNGKey(int(seed)))
        self.config = config
        self.preset = preset
        self.device = resolve_device(device)
        self.params = jax.device_put(params, self.device)
        self.seed = int(seed)
        self._key = jax.device_put(jax.random.PRNGKey(self.seed + 1), self.device)
        self.training = True

    # ------------------------------------------------------------ protocol

    def initial_state(self, batch_size: int):
        raise NotImplementedError

    def encode(self, obs):
        raise NotImplementedError

    def observe(self, state, action, obs):
        """One posterior step: ``state [B, ...]``, ``action [B, A]``, next ``obs [B, *obs_shape]``."""
        raise NotImplementedError

    def observe_sequence(self, obs, actions, is_first=None, state=None):
        """Posterior states ``[B, T, ...]`` of a whole sequence ``obs [B, T, ...]``."""
        raise NotImplementedError

    def predict(self, state, action):
        raise NotImplementedError

    def decode(self, state):
        raise NotImplementedError

    def imagine(self, state, actions):
        raise NotImplementedError

    def compute_loss(self, batch, key=None):
        raise NotImplementedError

    def with_original_names(self, losses: dict) -> dict:
        """``losses`` (an update's or :meth:`compute_loss`'s terms, arrays or floats) with the original
        library's names of the terms added, each as it enters ``"loss"``."""
        return dict(losses)

    def prepare_batch(self, batch) -> dict:
        """Check a ``[B, T, ...]`` batch and move it to the device (jit-ready dtypes)."""
        raise NotImplementedError

    def make_update(self, settings: OptimizerSettings) -> UpdateFunctions:
        raise NotImplementedError

    @staticmethod
    def init_params(config, key) -> Params:
        """Fresh params for ``config`` (subclasses implement)."""
        raise NotImplementedError

    @classmethod
    def build(cls, config, *, params=None, seed: int = 0, device=None, preset=None) -> WorldModel:
        """A handle for ``config``: ``params`` if given, else fresh ones from ``seed``."""
        return cls(config, params, seed=seed, device=device, preset=preset)

    # ------------------------------------------------------------ common

    def _given_key(self, key) -> jax.Array:
        """A PRNG key given to a method on the model's device, or the handle's next one for ``None``."""
        if key is None:
            return self.next_key()
        if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            valid = key.shape == ()
        else:
            dtype = getattr(key, "dtype", None)
            valid = (dtype is not None and np.shape(key) == (2,) and np.dtype(dtype) == np.uint32)
        if not valid:
            got = (f"{np.dtype(key.dtype).name} of shape {list(np.shape(key))}" if hasattr(key, "dtype")
                   else f"{type(key).__name__} {key!r}")
            raise ConfigError(f"key: expected a PRNG key (jax.random.PRNGKey(seed): 2 uint32), got {got}.")
        return jax.device_put(key, self.device)

    def next_key(self) -> jax.Array:
        """A fresh key; advances the handle's RNG."""
        self._key, key = jax.random.split(self._key)
        return key

    def _array(self, x, name: str = "input"):
        """``x`` as an array where it already is: a JAX array (or tracer) as it is, a DLPack tensor as a
        JAX array (no copy), anything else as a NumPy array on the host, where its values are checked
        before it is copied to the device. ShapeError for a state, None or a non-array."""
        if isinstance(x, LatentState):
            raise ShapeError(f"{name}: expected an array, got a LatentState.")
        if x is None or isinstance(x, (str, bytes, dict)):
            raise ShapeError(f"{name}: expected an array, got {type(x).__name__}.")
        if isinstance(x, jax.Array):
            return x
        try:
            if not isinstance(x, np.ndarray) and hasattr(x, "__dlpack__"):
                return as_array(x)
            array = np.asarray(x)
        except (TypeError, ValueError, OverflowError) as err:
            raise ShapeError(f"{name}: expected an array of numbers, got {type(x).__name__} ({err}).") from err
        if array.dtype.kind not in "biuf" and not jnp.issubdtype(array.dtype, jnp.floating):
            error = DataError if array.dtype.kind == "c" else ShapeError
            raise error(f"{name}: expected an array of real numbers, got {type(x).__name__} of dtype {array.dtype}.")
        if array.dtype == np.float64:  # as JAX will hold it: values beyond float32 become inf here, and are refused
            with np.errstate(over="ignore"):
                array = array.astype(np.float32)
        return array

    def _obs(self, obs, lead: int):
        """Observations ``[*lead, *obs_shape]`` (exactly ``lead`` leading axes), their values checked
        (:func:`~worldloom.core.validation.check_observations`: integer images read as uint8)."""
        obs = self._array(obs, name="obs")
        check_trailing_shape("obs", obs, self.config.obs_shape, min_lead=lead)
        dims = ", ".join(["B", "T"][:lead] + [str(d) for d in self.config.obs_shape])
        if obs.ndim != len(self.config.obs_shape) + lead:
            raise ShapeError(f"obs: expected shape [{dims}], got {list(obs.shape)}.")
        if lead == 1 and obs.shape[0] == 0:  # sequences: check_sequence_length or check_batch_lead
            raise ShapeError(f"obs: expected shape [{dims}] with a batch of at least one, got {list(obs.shape)}.")
        obs = validation.check_observations("obs", obs, image=self.config.is_image,
                                            device_checks=self.check_device_inputs)
        return self._put(obs, None if obs.dtype == np.uint8 else jnp.float32, "obs")

    def _put(self, x, dtype=None, name: str = "input") -> jax.Array:
        """``x`` as a JAX array on the model's device; ShapeError for a state, None or a non-array."""
        array = self._array(x, name)
        try:
            array = as_array(array, dtype)
        except (TypeError, ValueError, OverflowError) as err:
            raise ShapeError(f"{name}: expected an array of numbers, got {type(x).__name__} ({err}).") from err
        return jax.device_put(array, self.device)

    def _indices_or_vectors(self, actions, lead: int, name: str, *, bound: float | None = None):
        """Discrete integer indices ``[*lead]`` (``[*lead, 1]`` too) as one-hot ``[*lead, A]``, else the
        array itself; values checked by the one set of rules (:mod:`worldloom.core.validation`).

        Returns:
            ``(actions, converted)``: ``converted`` when the indices became one-hot.
        """
        cfg = self.config
        checks = self.check_device_inputs
        if cfg.action_type == "discrete" and jnp.issubdtype(actions.dtype, jnp.integer):
            if actions.ndim == lead + 1 and actions.shape[-1] == 1:
                actions = actions[..., 0]
            if actions.ndim == lead:
                validation.check_action_indices(name, actions, cfg.action_dim, device_checks=checks)
                return jax.nn.one_hot(self._put(actions, name=name), cfg.action_dim, dtype=jnp.float32), True
        if actions.ndim == lead + 1 and actions.shape[-1] == cfg.action_dim:
            one_hot = cfg.action_type == "discrete" and bound is None
            validation.check_action_vectors(name, actions, one_hot=one_hot, bound=bound, device_checks=checks)
        return actions, False

    def _state(self, state, name: str = "state") -> LatentState:
        """``state`` checked to be a batched :class:`LatentState` (what encode/observe/predict return) of finite
        values."""
        if not isinstance(state, LatentState):
            raise ShapeError(f"{name}: expected a LatentState (from encode, observe, predict or "
                             f"initial_state), got {type(state).__name__}.")
        if np.ndim(state.deterministic) < 2:
            shape = list(np.shape(state.deterministic))
            raise ShapeError(f"{name}: expected a batched state [B, ...], got deterministic of shape {shape}.")
        for part in ("deterministic", "stochastic"):
            value = getattr(state, part)
            if value is not None and hasattr(value, "dtype"):
                validation.check_finite(f"{name}.{part}", value, device_checks=self.check_device_inputs)
        return state

    @staticmethod
    def _same_batch(name: str, got: int, expected: int, what: str = "the state") -> None:
        if got != expected:
            raise ShapeError(f"{name}: expected batch size {expected} (that of {what}), got {got}.")

    def parameters(self) -> list[ParameterView]:
        """Every parameter as a :class:`ParameterView` (``p.numel()`` works)."""
        return [ParameterView(n, v) for n, v in flatten_params(self.params)]

    def named_parameters(self) -> Iterator[tuple[str, ParameterView]]:
        for view in self.parameters():
            yield view.name, view

    def num_parameters(self) -> int:
        """Total number of trained parameters (target networks excluded)."""
        return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree_util.tree_leaves(self.params)))

    def train(self, mode: bool = True) -> WorldModel:
        """Training mode: stochastic latents are sampled, augmentation/dropout on."""
        self.training = bool(mode)
        return self

    def eval(self) -> WorldModel:
        """Evaluation mode: deterministic where the model allows it."""
        return self.train(False)

    def to(self, device) -> WorldModel:
        """Move params to ``device`` (``"cpu"``, ``"cuda"``, ...)."""
        self.device = resolve_device(device)
        self.params = jax.device_put(self.params, self.device)
        self._key = jax.device_put(self._key, self.device)
        return self

    def load_params(self, params: Params) -> WorldModel:
        """Replace the params (same structure) in place."""
        self.params = jax.device_put(params, self.device)
        return self

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs) -> WorldModel:
        """A model of this class from a preset, an alias or a saved directory: :func:`create_world_model`.

        Raises:
            ConfigError: ``name_or_path`` names a model of another family.
        """
        from worldloom.models.factory import create_world_model

        return of_class(cls, create_world_model(name_or_path, **kwargs), name_or_path)

    def save_pretrained(self, path, overwrite: bool = False) -> None:
        """Write ``config.json`` and the weights (orbax) to directory ``path``, atomically.

        ``path`` may be new, an empty directory or an earlier saved model (replaced
        in one step); anything else raises CheckpointError unless ``overwrite=True``.
        """
        from worldloom.models.checkpoint import save_model

        save_model(self, path, overwrite=overwrite)

    def __repr__(self) -> str:
        name = f"{self.family}:{self.preset}" if self.preset else self.family
        return (f"{type(self).__name__}({name}, params={self.num_parameters():,}, "
                f"device={device_name(self.device)}, training={self.training})")


def of_class(cls: type, model, name) -> Any:
    """``model`` if it is a ``cls``; ConfigError naming what ``name`` holds otherwise (``cls.from_pretrained``)."""
    if not isinstance(model, cls):
        raise ConfigError(f"{cls.__name__}.from_pretrained({str(name)!r}): expected a model of this class, got a "
                          f"{type(model).__name__}; load it with create_world_model() or that class.")
    return model


def positive_batch_size(batch_size) -> int:
    """``batch_size`` as an int >= 1, else ConfigError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size: expected a positive int, got {batch_size!r}.")
    return int(batch_size)


def check_batch_mapping(batch) -> None:
    """ShapeError unless ``batch`` is a dict of arrays."""
    if not isinstance(batch, Mapping):
        raise ShapeError(f"batch: expected a dict of [B, T, ...] arrays (obs, actions, rewards, continues), "
                         f"got {type(batch).__name__}.")


def check_batch_lead(shape) -> None:
    """ShapeError for an empty batch (``B == 0`` or ``T == 0``)."""
    if shape[0] < 1 or shape[1] < 1:
        raise ShapeError(f"batch: expected at least one window of at least one step, got obs of shape "
                         f"{list(shape)}.")


def check_sequence_length(shape) -> None:
    """ShapeError for a sequence of no steps (``obs`` ``[B, 0, ...]``) or a batch of none (``[0, T, ...]``)."""
    if shape[1] < 1:
        raise ShapeError(f"obs: expected a sequence of at least one step [B, T >= 1, ...], got shape {list(shape)}.")
    if shape[0] < 1:
        raise ShapeError(f"obs: expected a batch of at least one sequence [B >= 1, T, ...], got shape "
                         f"{list(shape)}.")


def check_batch_values(name: str, value, device_checks: bool = True) -> None:
    """The value rules of a batch's per-step arrays: ``rewards`` finite; ``continues`` and ``terminals``
    in [0, 1]; ``is_first`` and ``is_final`` booleans or 0/1 (:mod:`worldloom.core.validation`)."""
    if name in ("is_first", "is_final"):
        validation.check_flags(name, value, device_checks=device_checks)
    elif name in ("continues", "terminals"):
        validation.check_unit_interval(name, value, device_checks=device_checks)
    elif name == "rewards":
        validation.check_finite(name, value, device_checks=device_checks)


def zeros_like_tree(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def owned_state(state, params):
    """``state`` with its own copies of every buffer, committed to ``params``' device.

    Update states are donated, so they must not share buffers with a handle's
    params; and every leaf must be committed, or the first update's outputs
    (committed) would not hit the jit cache of its inputs (some uncommitted)
    and the update would compile twice.
    """
    leaves = jax.tree_util.tree_leaves(params)
    sharding = leaves[0].sharding if leaves and hasattr(leaves[0], "sharding") else None
    copied = jax.tree_util.tree_map(jnp.copy, state)
    return jax.device_put(copied, sharding) if sharding is not None else copied
