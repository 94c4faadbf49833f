"""One official side of ``benchmarks.gpu_anchor``: danijar/dreamerv3 (JAX) or nicklashansen/tdmpc2 (PyTorch).

Started by :mod:`benchmarks.gpu_anchor` with ``PYTHONPATH`` naming one
official checkout (kept outside the repository) and the folder its
dependencies were installed into. It speaks ``benchmarks._compare_worker``'s
protocol, one JSON line per command, so the driver times both sides alike:

- ``{"setup": work, "batch", "length", "overrides", "compiled", "platform"}``:
  build the official model on the workload's config and run it once; answers
  the parameter count, the seconds of that first call (compilation included)
  and, for the JAX side, XLA's temporary bytes. ``platform`` is the JAX
  platform the driver found (``cpu`` or ``gpu``).
- ``{"time": work, "repeats": n}``: answers ``{"seconds": [...]}``, one per call.
- ``{"memory": true}``: answers ``{"peak_bytes": ...}``, the device's peak so far.

A failure answers ``{"error": "..."}`` and the process goes on. The official
code runs as its own entry points configure it (``dreamerv3/main.py``'s config
files and agent; ``tdmpc2/train.py``'s backend switches and agent); what is
set here is only what a benchmark needs, through the code's own config:

- DreamerV3: the preset's block of ``configs.yaml`` over ``defaults``, batch
  size and length, ``jax.platform`` (the local one), ``jax.prealloc: False``
  (the driver's processes share the device, and peak memory is then what
  each needs), ``jax.precompile: False`` (the report program is not built;
  the train program is compiled with the agent's own ``_compile_train``),
  ``jax.profiler: False``, ``jax.enable_policy: False`` (no acting copy of
  the policy's params: the learner alone, as worldloom's side). One update
  is the agent's jitted train program (world model, replay value and
  imagination actor-critic in one program), called as ``Agent.train`` calls
  it, without its host copies of the metrics of the step before.
- TD-MPC2: ``config.yaml`` with ``model_size`` and the workload's shapes; one
  update is ``TDMPC2._update`` on a batch already on the device (``update``
  less the replay sampling), one plan is ``TDMPC2.act`` (``mpc: true``);
  ``compiled`` sets ``compile: true`` (``torch.compile``, ``reduce-overhead``),
  and the setup answer then counts Dynamo's graph breaks by reason.

Three adaptations to versions newer than the ones the official code pins,
made here at run time and never in its files: ``jax.jit`` takes its old
positional arguments again (JAX made them keyword-only); under
``torch.compile``, Inductor's randperm-indexing rewrites are left out (they
fail to compile the Q ensemble's head pick in torch releases with
pytorch/pytorch#183988); and on a machine without CUDA, where this script's
tiny CPU check runs, TD-MPC2's hard-coded ``cuda:0`` device and capturable
Adam are mapped to the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ACTIONS = 6
VECTOR = {"dreamerv3": (39,), "tdmpc2": (24,)}
IMAGE = (64, 64, 3)
# worldloom's config fields -> the official DreamerV3 config's keys (regular expressions, as its size presets).
DREAMER_KEYS = {"deter": r".*\.rssm.deter", "hidden": r".*\.rssm.hidden", "classes": r".*\.rssm.classes",
                "stoch": r".*\.rssm.stoch", "blocks": r".*\.rssm.blocks", "depth": r".*\.depth",
                "units": r".*\.units", "compute_dtype": "jax.compute_dtype"}
# TD-MPC2's fields have the same names on both sides.
TDMPC2_KEYS = {"enc_dim", "mlp_dim", "latent_dim", "num_enc_layers", "num_q", "num_samples", "num_elites",
               "num_pi_trajs", "iterations", "horizon"}


def positional_jit() -> None:
    """Let ``jax.jit(fun, in_shardings, out_shardings, static_argnums, ...)`` work on JAX versions without it."""
    import jax

    jit = jax.jit
    names = ("in_shardings", "out_shardings", "static_argnums", "static_argnames", "donate_argnums")

    def compatible_jit(fun=None, *args, **kwargs):
        kwargs.update(zip(names, args))
        return jit(fun, **kwargs) if fun is not None else jit(**kwargs)

    jax.jit = compatible_jit


def _spaces_data(spaces: dict, batch: int, length: int, rng) -> dict:
    """Random replay windows ``[B, T, ...]`` for the official agent's input spaces."""
    import numpy as np

    data = {}
    for key, space in spaces.items():
        shape = (batch, length, *space.shape)
        if key == "is_first":
            data[key] = np.zeros(shape, bool)
            data[key][:, 0] = True
        elif key in ("is_last", "is_terminal"):
            data[key] = np.zeros(shape, bool)
        elif space.dtype == np.uint8 and len(space.shape) == 3:
            data[key] = rng.integers(0, 255, shape, dtype=np.uint8)
        elif key in ("vector", "reward"):
            data[key] = rng.normal(size=shape).astype(space.dtype)
        elif key == "action":
            data[key] = rng.uniform(-1, 1, shape).astype(space.dtype)
        else:  # replay context (stored latents), step ids: zeros, as worldloom's side stores them
            data[key] = np.zeros(shape, space.dtype)
    return data


class DreamerWork:
    """The official DreamerV3 agent's train program on one workload."""

    def __init__(self, name: str, batch: int | None, length: int | None, overrides: dict, platform: str):
        import elements
        import numpy as np
        from ruamel.yaml import YAML

        kind, preset, *rest = name.split(":")
        if kind != "dreamer-agent":
            raise ValueError(f"the official DreamerV3 side times 'dreamer-agent' workloads, got {name!r}")
        obs = rest[0] if rest else "vector"
        batch, length = batch or 16, length or 64
        from dreamerv3 import agent as agent_module

        folder = Path(agent_module.__file__).parent
        self.tree = str(folder.parent)
        configs = YAML(typ="safe").load((folder / "configs.yaml").read_text())
        config = elements.Config(configs["defaults"]).update(configs[preset])
        unknown = set(overrides) - set(DREAMER_KEYS)
        if unknown:
            raise ValueError(f"no official DreamerV3 config key for {sorted(unknown)}; known: {sorted(DREAMER_KEYS)}")
        config = config.update({DREAMER_KEYS[key]: value for key, value in overrides.items()})
        config = config.update({"batch_size": batch, "batch_length": length, "jax.prealloc": False,
                                "jax.platform": "cuda" if platform == "gpu" else platform})
        # The agent's log directory (it writes nothing there with the profiler off), removed when the process ends.
        self.logdir = tempfile.TemporaryDirectory(prefix="gpu-anchor-dreamerv3-")
        obs_space = {"reward": elements.Space(np.float32), "is_first": elements.Space(bool),
                     "is_last": elements.Space(bool), "is_terminal": elements.Space(bool)}
        if obs == "image":
            obs_space["image"] = elements.Space(np.uint8, IMAGE)
        else:
            obs_space["vector"] = elements.Space(np.float32, VECTOR["dreamerv3"])
        act_space = {"action": elements.Space(np.float32, (ACTIONS,), -1, 1)}
        agent_config = elements.Config(
            **config.agent, logdir=self.logdir.name, seed=config.seed,
            jax=dict(config.jax, precompile=False, profiler=False, enable_policy=False),
            batch_size=batch, batch_length=length, replay_context=config.replay_context,
            report_length=config.report_length, replica=0, replicas=1)
        agent = agent_module.Agent(obs_space, act_space, agent_config)
        modules = ("enc/", "dyn/", "dec/", "rew/", "con/", "pol/", "val/")
        self.params = int(sum(v.size for k, v in agent.params.items() if k.startswith(modules)))
        start = time.perf_counter()
        agent._compile_train()
        self.compile_s = time.perf_counter() - start
        memory = agent._train.memory_analysis()
        self.temp_bytes = int(memory.temp_size_in_bytes) if memory is not None else None
        from embodied.jax import internal

        rng = np.random.default_rng(0)
        context = config.replay_context
        self.data = internal.device_put(_spaces_data(agent.spaces, batch, length + context, rng),
                                        agent.train_sharded)
        self.carry = agent.init_train(batch)
        self.agent, self.count = agent, 0
        self.call()
        self.compile_s += self.last_s

    def call(self) -> None:
        import jax

        agent = self.agent
        start = time.perf_counter()
        seed = agent._seeds(self.count, agent.train_mirrored)
        allocated = {k: v for k, v in agent.params.items() if k in agent.policy_keys}
        donated = {k: v for k, v in agent.params.items() if k not in agent.policy_keys}
        agent.params, self.carry, _, metrics = agent._train(donated, allocated, seed, self.carry, self.data)
        jax.block_until_ready((agent.params, metrics))
        self.count += 1
        self.last_s = time.perf_counter() - start

    @staticmethod
    def peak_bytes() -> int | None:
        import jax

        return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def map_cuda_to_cpu(*modules) -> None:
    """Run code written for ``cuda:0`` on the CPU: its ``torch.device(...)`` and ``Adam(capturable=True)``."""
    import types

    import torch

    class CpuTorch(types.ModuleType):
        def __getattr__(self, name):
            return getattr(torch, name)

    proxy = CpuTorch("torch")
    proxy.device = lambda *args, **kwargs: torch.device("cpu")
    adam = torch.optim.Adam
    proxy.optim = types.SimpleNamespace(Adam=lambda *args, capturable=False, **kwargs: adam(*args, **kwargs))
    for module in modules:
        module.torch = proxy


def tdmpc2_config(folder: Path, preset: str, obs_shape: tuple, batch: int, overrides: dict, compiled: bool):
    """The official ``config.yaml`` with the workload's fields set, as ``parse_cfg`` sets a single-task run's."""
    from common import MODEL_SIZE
    from ruamel.yaml import YAML

    values = YAML(typ="safe").load((folder / "config.yaml").read_text())
    values.pop("defaults", None)
    unknown = set(overrides) - TDMPC2_KEYS
    if unknown:
        raise ValueError(f"no official TD-MPC2 config key for {sorted(unknown)}; known: {sorted(TDMPC2_KEYS)}")
    size = int(preset.rstrip("m"))
    values.update(model_size=size, **MODEL_SIZE[size])
    values.update(task="benchmark", task_title="Benchmark", obs="state", obs_shape={"state": obs_shape},
                  action_dim=ACTIONS, episode_length=500, multitask=False, tasks=["benchmark"], task_dim=0,
                  batch_size=batch, compile=compiled, seed_steps=batch,
                  bin_size=(values["vmax"] - values["vmin"]) / (values["num_bins"] - 1), **overrides)
    # parse_cfg hands the agent a dataclass (no graph breaks under torch.compile): the same here.
    fields = [(key, Any, dataclasses.field(default_factory=lambda value=value: value)) for key, value in values.items()]
    config_class = dataclasses.make_dataclass("Config", fields)
    config_class.get = lambda self, key, default=None: getattr(self, key, default)
    return config_class()


def skip_inductor_randperm_patterns() -> None:
    """Leave out Inductor's "misc" rewrites (``x[randperm(n)[:k]]`` into unchecked indexing) when compiling.

    The official Q ensemble picks two heads as ``torch.randperm(num_q)[:2]``,
    and Inductor's pattern for that fails to compile in torch releases with
    pytorch/pytorch#183988 ("Not all inputs to pattern found in match.kwargs",
    ``slice_shape``). Without the rewrite the pick compiles as ordinary
    indexing of two elements.
    """
    from torch._inductor.fx_passes import misc_patterns

    misc_patterns._misc_patterns_init = lambda *args, **kwargs: None


class TDMPC2Work:
    """The official TD-MPC2 agent's update or plan on one workload, eager or under ``torch.compile``."""

    def __init__(self, name: str, batch: int | None, overrides: dict, compiled: bool):
        os.environ.setdefault("LAZY_LEGACY_OP", "0")  # as tdmpc2/train.py sets them
        os.environ.setdefault("TORCHDYNAMO_INLINE_INBUILT_NN_MODULES", "1")
        import tdmpc2 as agent_module
        import torch
        from common import scale

        kind, preset = name.split(":")[:2]
        if kind not in ("tdmpc2-update", "tdmpc2-plan"):
            raise ValueError(f"the official TD-MPC2 side times 'tdmpc2-update' and 'tdmpc2-plan', got {name!r}")
        self.cuda = torch.cuda.is_available()
        if not self.cuda:
            map_cuda_to_cpu(agent_module, scale)
        if compiled:
            skip_inductor_randperm_patterns()
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        torch.manual_seed(1)
        batch = batch or 256
        folder = Path(agent_module.__file__).parent
        self.tree = str(folder)
        cfg = tdmpc2_config(folder, preset, VECTOR["tdmpc2"], batch, overrides, compiled)
        self.agent = agent = agent_module.TDMPC2(cfg)
        self.params = int(agent.model.total_params)
        self.temp_bytes = None
        device = agent.device
        generator = torch.Generator().manual_seed(0)
        horizon, obs_dim = cfg.horizon, VECTOR["tdmpc2"][0]
        if kind == "tdmpc2-update":
            self.batch = (torch.randn(horizon + 1, batch, obs_dim, generator=generator).to(device),
                          (torch.rand(horizon, batch, ACTIONS, generator=generator) * 2 - 1).to(device),
                          torch.randn(horizon, batch, 1, generator=generator).to(device),
                          torch.zeros(horizon, batch, 1).to(device))
            self.run = self._update
        else:
            self.obs = torch.randn(obs_dim, generator=generator)
            self.run = self._plan
        start = time.perf_counter()
        self.run(first=True)  # a plan at an episode's start (t0), then one as timed: torch.compile builds both
        self.call()
        self.compile_s = time.perf_counter() - start
        for _ in range(2):  # reduce-overhead records its CUDA graphs in the first calls after compiling
            self.call()
        if compiled:  # where Dynamo split the program (each break is a piece run apart), by reason
            from torch._dynamo.utils import counters

            breaks = counters["graph_break"].items()
            self.graph_breaks = {" ".join(reason.split())[:240]: count for reason, count in breaks}

    def _update(self, first: bool = False):
        import torch

        torch.compiler.cudagraph_mark_step_begin()  # as TDMPC2.update does before each _update
        return self.agent._update(*self.batch)

    def _plan(self, first: bool = False):
        return self.agent.act(self.obs, t0=first)

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def call(self) -> None:
        start = time.perf_counter()
        self.run()
        self.sync()
        self.last_s = time.perf_counter() - start

    def peak_bytes(self) -> int | None:
        if not self.cuda:
            return None
        import torch

        return int(torch.cuda.max_memory_allocated())


def build(command: dict):
    name = command["setup"]
    overrides = dict(command.get("overrides") or {})
    if name.startswith("dreamer"):
        positional_jit()
        return DreamerWork(name, command.get("batch"), command.get("length"), overrides,
                           command.get("platform", "gpu"))
    return TDMPC2Work(name, command.get("batch"), overrides, bool(command.get("compiled")))


def versions() -> dict:
    """The versions of the libraries this process imported that the official code depends on."""
    from importlib import metadata

    found = {}
    for name in ("jax", "jaxlib", "elements", "ninjax", "optax", "chex", "torch", "tensordict"):
        if name in sys.modules:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                found[name] = getattr(sys.modules[name], "__version__", None)
    return found


def main() -> None:
    # The official code prints to stdout; the protocol keeps the real stdout, everything else goes to stderr.
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    works: dict[str, Any] = {}
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if "setup" in command:
                work = works[command["setup"]] = build(command)
                reply = {"tree": work.tree, "params": work.params, "compile_s": work.compile_s,
                         "temp_bytes": work.temp_bytes, "flops": None, "versions": versions()}
                if getattr(work, "graph_breaks", None) is not None:
                    reply["graph_breaks"] = work.graph_breaks
            elif "memory" in command:
                work = next(iter(works.values()), None)
                reply = {"peak_bytes": work.peak_bytes() if work is not None else None}
            else:
                work = works[command["time"]]
                seconds = []
                for _ in range(int(command["repeats"])):
                    work.call()
                    seconds.append(work.last_s)
                reply = {"seconds": seconds}
        except Exception as err:  # noqa: BLE001 - reported to the driver, which records it and goes on
            traceback.print_exc()
            reply = {"error": f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


if __name__ == "__main__":
    main()
