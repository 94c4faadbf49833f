"""Torch ``nn.Parameter`` mirrors of a JAX params pytree.

Every leaf of the params pytree becomes an ``nn.Parameter`` registered under
nested :class:`ParameterGroup` modules, so ``named_parameters()`` and
``state_dict()`` keys are worldloom's dotted parameter names
(``encoder.NormAct_0.Dense_0.Dense_0.kernel``). A name that would shadow an
attribute of the owning module gets a trailing ``_``.

The Parameters own their memory. :func:`push` hands JAX zero-copy views of
them; :func:`pull` copies JAX values into them.
"""

from __future__ import annotations

from typing import Any

import jax
import torch
from torch import nn

from worldloom.core.errors import CheckpointError, ShapeError
from worldloom.models.base import flatten_params
from worldloom_torch_compat._convert import to_jax, to_torch


class ParameterGroup(nn.Module):
    """A container for one level of a JAX params tree (it has no forward)."""


def _free_name(parent: nn.Module, name: str) -> str:
    name = name or "_"
    while hasattr(parent, name):
        name += "_"
    return name


def register(module: nn.Module, params: Any, device: torch.device) -> list[str]:
    """Register every leaf of ``params`` as an ``nn.Parameter`` under ``module``.

    Args:
        module: The module that owns the Parameters.
        params: A JAX params pytree.
        device: torch device of the Parameters.

    Returns:
        The registered dotted names, in the pytree's leaf order.
    """
    renamed: dict[tuple[int, str], str] = {}
    paths = []
    for name, leaf in flatten_params(params):
        parent, registered = module, []
        *groups, last = name.split(".")
        for part in groups:
            key = renamed.get((id(parent), part))
            if key is None:
                key = renamed[(id(parent), part)] = _free_name(parent, part)
                parent.add_module(key, ParameterGroup())
            parent = parent._modules[key]
            registered.append(key)
        key = _free_name(parent, last)
        parent.register_parameter(key, nn.Parameter(to_torch(leaf, device).clone()))
        registered.append(key)
        paths.append(".".join(registered))
    return paths


def tensors(module: nn.Module, paths: list[str]) -> list[torch.Tensor]:
    """The Parameters at ``paths``, in order."""
    named = dict(module.named_parameters())
    return [named[path] for path in paths]


def push(module: nn.Module, paths: list[str], treedef, copy: bool = False) -> Any:
    """The params pytree as JAX arrays: zero-copy views of the Parameters unless ``copy``."""
    leaves = [to_jax(t) for t in tensors(module, paths)]
    if copy:
        leaves = [jax.numpy.array(x, copy=True) for x in leaves]
    return jax.tree_util.tree_unflatten(treedef, leaves)


@torch.no_grad()
def pull(module: nn.Module, paths: list[str], params: Any) -> None:
    """Copy a JAX params pytree into the Parameters at ``paths``.

    Raises:
        ShapeError: ``params`` does not have the registered leaves' shapes.
    """
    leaves = jax.tree_util.tree_leaves(params)
    targets = tensors(module, paths)
    if len(leaves) != len(targets):
        raise ShapeError(f"params: expected {len(targets)} arrays, got {len(leaves)}.")
    for path, target, leaf in zip(paths, targets, leaves):
        if tuple(target.shape) != tuple(leaf.shape):
            raise ShapeError(f"params[{path!r}]: expected shape {list(target.shape)}, got {list(leaf.shape)}.")
        target.copy_(to_torch(leaf, target.device))


class StateDictError(CheckpointError, RuntimeError):
    """A state dict with missing or unexpected keys; a RuntimeError too, as torch raises there."""


class StateDictShapeError(ShapeError, RuntimeError):
    """A state-dict tensor of the wrong shape; a RuntimeError too, as torch raises there."""


def check_state_dict(module: nn.Module, state_dict, strict: bool) -> None:
    """Raise worldloom errors for a ``state_dict`` that does not fit ``module``.

    Both are also ``RuntimeError`` (what ``torch.nn.Module.load_state_dict``
    raises), so ``except RuntimeError`` catches them as it would in torch.

    Raises:
        StateDictError: (a CheckpointError) missing or unexpected keys (when ``strict``).
        StateDictShapeError: (a ShapeError) a tensor whose shape differs from the Parameter's.
    """
    own = module.state_dict(keep_vars=True)
    if strict:
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise StateDictError(
                f"state_dict does not fit this model: missing keys {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                f"{' ...' if len(unexpected) > 5 else ''} (expected the {len(own)} keys of model.state_dict())."
            )
    for key, value in state_dict.items():
        if key in own and tuple(getattr(value, "shape", ())) != tuple(own[key].shape):
            raise StateDictShapeError(f"state_dict[{key!r}]: expected shape {list(own[key].shape)}, "
                             f"got {list(getattr(value, 'shape', ()))}.")
