"""Objects shared by equal arguments, whose compiled programs live no longer than they are used.

A model's jitted programs, its update functions and the K-update programs
built from them depend on its config and optimiser settings alone. Built
once per configuration, a second model, agent or run of that configuration in
a process (another seed, a reload, a resumed run) reuses what ``jax.jit``
traced and compiled for the first. But every compiled program holds host
memory and, on the CPU, thousands of memory mappings (one per compiled
kernel; Linux allows 65,530 per process by default, and LLVM aborts the
process when it cannot map more), so a cache must not keep every
configuration a process ever built.

:func:`shared` keeps an entry while anything uses it (a model holds its
programs, a run its update) and the ``keep`` most recently asked-for ones
besides; the rest are dropped with their executables. An entry is built
outside any trace (``jax.ensure_compile_time_eval``): the first one asked for
inside ``jax.eval_shape`` or a jit, as loading a checkpoint does, holds
concrete constants, not that trace's tracers.
"""

from __future__ import annotations

import collections
import functools
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

import jax

T = TypeVar("T")


def shared(keep: int = 2, key: Callable[..., object] | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate ``build(*args, **kwargs)`` so that equal (hashable) arguments give the same object.

    An entry stays while anything else holds a reference to it, and the
    ``keep`` most recently asked-for entries stay regardless. ``key(*args, **kwargs)``,
    if given, is what is compared instead of the arguments. Arguments (or keys)
    that cannot be hashed build a new object each call. ``build.cache_clear()``
    drops every entry; ``build.cache_info()`` gives ``(entries, kept)`` counts.
    """

    def decorate(build: Callable[..., T]) -> Callable[..., T]:
        live: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        recent: collections.OrderedDict = collections.OrderedDict()  # strong references to the latest ``keep``
        lock = threading.RLock()

        @functools.wraps(build)
        def get(*args, **kwargs):
            entry = (args, tuple(sorted(kwargs.items()))) if key is None else key(*args, **kwargs)
            try:
                hash(entry)
            except TypeError:
                return build(*args, **kwargs)
            with lock:
                value = live.get(entry, recent.get(entry))
                if value is None:
                    with jax.ensure_compile_time_eval():
                        value = build(*args, **kwargs)
                    try:
                        live[entry] = value
                    except TypeError:  # it cannot be weakly referenced: shared while among the latest
                        pass
                recent[entry] = value
                recent.move_to_end(entry)
                while len(recent) > keep:
                    recent.popitem(last=False)
                return value

        def cache_clear() -> None:
            with lock:
                live.clear()
                recent.clear()

        get.cache_clear = cache_clear
        get.cache_info = lambda: (len(set(live.keys()) | set(recent)), len(recent))
        return get

    return decorate


__all__ = ["shared"]
