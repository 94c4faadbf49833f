"""Checkpoints and plots of the online loop."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from worldloom.models.checkpoint import atomic_directory, restore_pytree, save_pytree


@dataclasses.dataclass
class LoopState:
    """Counters and histories of an online run (saved as JSON in checkpoints)."""

    env_step: int = 0
    updates: int = 0
    updates_owed: float = 0.0
    pretrained: bool = False
    wall_time: float = 0.0
    train_returns: list = dataclasses.field(default_factory=list)
    eval_returns: list = dataclasses.field(default_factory=list)
    processes: int = 1


def write_agent(path: Path, algo: str, world_model, meta: dict, fill=None) -> None:
    """Write a saved agent atomically: ``world_model/``, ``agent.json`` and what ``fill(tmp)`` adds."""

    def write(tmp: Path) -> None:
        world_model.save_pretrained(tmp / "world_model")
        if fill is not None:
            fill(tmp)
        (tmp / "agent.json").write_text(json.dumps({"format": "worldloom-agent", "algo": algo, **meta}, indent=2))

    atomic_directory(Path(path), write)


def read_agent_meta(path: Path, algo: str) -> dict:
    """``agent.json`` of a saved agent, checked to be of ``algo``."""
    from worldloom.core.errors import CheckpointError

    path = Path(path)
    try:
        meta = json.loads((path / "agent.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"No readable agent at {str(path)!r}: {err}") from err
    if meta.get("algo") != algo:
        raise CheckpointError(f"{path} holds a {meta.get('algo')!r} agent, expected {algo!r}.")
    return meta


def save_checkpoint(directory: Path, train_state, collector, loop: LoopState, agent) -> None:
    """Train state (orbax; ``None``: left out), the collector's replay (npz) and counters (JSON), atomically."""

    def fill(tmp: Path) -> None:
        if train_state is not None:
            save_pytree(train_state, tmp / "train_state")
        collector.save(tmp)
        (tmp / "loop.json").write_text(json.dumps(dataclasses.asdict(loop)))
        (tmp / "algo.txt").write_text(agent.algo)

    atomic_directory(Path(directory), fill)


def load_checkpoint(directory: Path, like_state, agent, collector):
    """Restore a :func:`save_checkpoint`: returns ``(train_state, loop)``; fills ``collector``'s replay.

    ``like_state=None`` leaves the train state out (it returns ``None`` for it).
    """
    from worldloom.core.errors import CheckpointError

    directory = Path(directory)
    algo = (directory / "algo.txt").read_text().strip() if (directory / "algo.txt").exists() else None
    if algo != agent.algo:
        raise CheckpointError(f"{directory} holds a {algo!r} run, expected {agent.algo!r}.")
    state = None if like_state is None else restore_pytree(directory / "train_state", like_state)
    collector.load(directory)
    loop = LoopState(**json.loads((directory / "loop.json").read_text()))
    return state, loop


def plot_curves(loop: LoopState, path: Path, title: str) -> Path:
    """PNG of training-episode and evaluation returns against environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    if loop.train_returns:
        steps, returns = np.asarray(loop.train_returns, float).T
        ax.plot(steps, returns, ".", alpha=0.3, color="tab:blue", label="training episodes")
    if loop.eval_returns:
        steps, mean, std = np.asarray(loop.eval_returns, float).T
        ax.plot(steps, mean, "-o", color="tab:orange", label="evaluation (mean)")
        ax.fill_between(steps, mean - std, mean + std, color="tab:orange", alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if loop.train_returns or loop.eval_returns:
        ax.legend(loc="best")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
