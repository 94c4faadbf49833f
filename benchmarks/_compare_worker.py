"""One side of ``benchmarks.compare``: builds workloads with whichever ``worldloom`` is first on the path.

Started by :mod:`benchmarks.compare` with ``PYTHONPATH`` set to one source
tree; it reads JSON commands on stdin and answers each with one JSON line:

- ``{"setup": work}``: build and compile ``work``; answers the tree's path,
  parameter count, compile seconds and XLA's temporary bytes. Optional
  ``"batch"``, ``"length"`` (the update's window) and ``"overrides"`` (model
  config fields, e.g. ``{"compute_dtype": "bfloat16"}``) change the workload.
- ``{"time": work, "repeats": n}``: answers ``{"seconds": [...]}``, one per call.
- ``{"memory": true}``: answers ``{"peak_bytes": ...}``, the device's peak bytes
  in use so far in this process (None where the device does not count them).
- ``{"peak": seconds}``: answers ``{"flops_per_s": ..., "flops_per_s_bf16": ...}``,
  the f32 and bf16 matmul rates of ``benchmarks.train_step.device_peaks``.

It only uses the documented API (and the agent classes), feature-detecting
what changed between revisions, so the same workload runs on both sides.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np

import worldloom
from worldloom import create_world_model
from worldloom.models.base import OptimizerSettings

VECTOR = {"dreamerv3": (39,), "tdmpc2": (24,)}
IMAGE = (64, 64, 3)
ACTIONS = 6


def _sequences(rng, batch: int, length: int, obs_shape) -> dict:
    if len(obs_shape) == 3:
        obs = rng.integers(0, 255, (batch, length, *obs_shape), dtype=np.uint8)
    else:
        obs = rng.normal(size=(batch, length, *obs_shape)).astype(np.float32)
    is_first = np.zeros((batch, length), bool)
    is_first[:, 0] = True
    return {"obs": obs, "actions": rng.uniform(-1, 1, (batch, length, ACTIONS)).astype(np.float32),
            "rewards": rng.normal(size=(batch, length)).astype(np.float32),
            "continues": np.ones((batch, length), np.float32), "is_first": is_first}


def _agent_batch(agent, rng, batch: int, seq: int) -> dict:
    """The agent's replay windows of ``seq`` trained rows, in the layout its revision expects."""
    cfg = agent.world_model.config
    try:
        from worldloom.agents.replay import StreamReplay
    except ImportError:  # whole-episode replay: plain windows
        return _sequences(rng, batch, seq, cfg.obs_shape)
    replay = StreamReplay(batch * (seq + 1), batch, cfg.obs_shape, np.float32 if len(cfg.obs_shape) == 1 else np.uint8,
                          cfg.action_dim, cfg.deter, cfg.stoch_size, seed=0)
    rows = _sequences(rng, batch, seq + 1, cfg.obs_shape)
    for t in range(seq + 1):
        replay.add({"obs": rows["obs"][:, t], "actions": rows["actions"][:, t], "rewards": rows["rewards"][:, t],
                    "is_first": rows["is_first"][:, t], "is_last": np.zeros(batch, bool),
                    "is_terminal": np.zeros(batch, bool), "deter": np.zeros((batch, cfg.deter), np.float32),
                    "stoch": np.zeros((batch, cfg.stoch_size), np.uint8)})
    return replay.sample(batch, seq + 1)[0]


class Work:
    """A compiled program and its inputs; ``call()`` runs it once and blocks until done."""

    def __init__(self, name: str, batch: int | None = None, length: int | None = None,
                 overrides: dict | None = None):
        kind, model, *rest = name.split(":")
        obs = rest[0] if rest else "vector"
        family = "dreamerv3" if kind.startswith("dreamer") else "tdmpc2"
        shape = IMAGE if obs == "image" else VECTOR[family]
        self.handle = create_world_model(f"{family}:{model}", obs_shape=shape, action_dim=ACTIONS,
                                         **(overrides or {}))
        window = (256, 4) if family == "tdmpc2" else (16, 64)
        batch, length = batch or window[0], length or window[1]
        rng = np.random.default_rng(0)
        key = jax.random.PRNGKey(0)
        self.temp_bytes, self.flops = None, None
        if kind == "tdmpc2-plan":
            single = rng.normal(size=(1, *shape)).astype(np.float32)
            self.params = self.handle.num_parameters()
            start = time.perf_counter()  # the first plan compiles it
            np.asarray(self.handle.act(single, t0=True))
            self.compile_s = time.perf_counter() - start
            self.call = lambda: np.asarray(self.handle.act(single, t0=False))
            self.single = single
            return
        if kind == "dreamer-agent":
            from worldloom.agents import DreamerAgent

            owner = DreamerAgent(self.handle, seed=0)
            data = _agent_batch(owner, rng, batch, length)
        else:
            owner = self.handle
            data = _sequences(rng, batch, length, shape)
        self.params = int(owner.num_parameters())
        update = owner.make_update(OptimizerSettings())
        data = jax.device_put(data)
        state = update.init(owner.params)
        step = jax.jit(update.step, donate_argnums=0)
        start = time.perf_counter()
        compiled = step.lower(state, data, key).compile()
        self.compile_s = time.perf_counter() - start
        memory = compiled.memory_analysis()
        self.temp_bytes = int(memory.temp_size_in_bytes) if memory is not None else None
        cost = compiled.cost_analysis()
        cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
        self.flops = float(cost.get("flops", 0.0)) or None
        self.state, self.data, self.key, self.compiled = state, data, key, compiled
        self.count = 0

        def call():
            self.count += 1
            # (state, metrics), or (state, metrics, posteriors) where the update hands back replay latents
            self.state, metrics, *_ = self.compiled(self.state, self.data, jax.random.fold_in(self.key, self.count))
            jax.block_until_ready(metrics["loss"])

        call()
        self.call = call

    def hlo_text(self) -> str | None:
        """The optimised HLO of the program ``call`` runs (None for a plan of a revision without ``programs.act``)."""
        if hasattr(self, "compiled"):
            return self.compiled.as_text()
        handle = self.handle
        programs = getattr(handle, "programs", None)
        if programs is None or not hasattr(programs, "act") or handle.plan_mean is None:
            return None
        obs = handle._obs(handle._put(self.single), 1)
        args = (handle.params, obs, handle.plan_mean, jax.numpy.zeros((1,), bool), jax.random.PRNGKey(0), None)
        return programs.act.lower(*args, eval_mode=False, use_policy=False).compile().as_text()


def main() -> None:
    works: dict[str, Work] = {}
    for line in sys.stdin:
        command = json.loads(line)
        if "setup" in command:
            work = works[command["setup"]] = Work(command["setup"], command.get("batch"), command.get("length"),
                                                  command.get("overrides"))
            reply = {"tree": worldloom.__file__, "params": work.params, "compile_s": work.compile_s,
                     "temp_bytes": work.temp_bytes, "flops": work.flops, "jax": jax.__version__}
        elif "peak" in command:
            from train_step import device_peaks  # beside this file

            peaks = device_peaks(jax.devices()[0], float(command["peak"]))
            reply = {"flops_per_s": peaks["matmul_flops_f32"], "flops_per_s_bf16": peaks["matmul_flops_bf16"]}
        elif "memory" in command:
            stats = jax.devices()[0].memory_stats() or {}
            reply = {"peak_bytes": stats.get("peak_bytes_in_use")}
        else:
            work = works[command["time"]]
            seconds = []
            for _ in range(int(command["repeats"])):
                start = time.perf_counter()
                work.call()
                seconds.append(time.perf_counter() - start)
            reply = {"seconds": seconds}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
