"""Evaluating a trained world model: losses on a buffer and open-loop imagination against real data.

Open-loop prediction (what ``worldloom imagine`` plots): the model observes
the first ``context`` steps of an episode, then imagines forward with the
episode's real actions. With the buffer convention (row ``t`` holds
``obs_t, action_t, reward_t``), imagined step ``h`` is the outcome of
``action[context - 1 + h]``: it predicts ``obs[context + h]`` and
``reward[context - 1 + h]``.

Example:
    >>> result = open_loop_prediction(model, buffer, context=5, horizon=15)
    >>> result["obs_mse"], result["obs_mse_baseline"]
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from worldloom.core.errors import DataError
from worldloom.training._buffer import ReplayBuffer
from worldloom.training._episode import integer
from worldloom.training.plots import check_figure_path, save_figure


def evaluate_loss(model, buffer: ReplayBuffer, batch_size: int = 16, seq_len: int = 50, num_batches: int = 8,
                  seed: int = 0) -> dict[str, float]:
    """Mean of ``model.compute_loss`` over ``num_batches`` seeded windows of ``buffer``.

    Returns:
        ``{"loss": ..., "loss/<term>": ..., ...}`` as Python floats.

    Raises:
        ConfigError: ``seed`` not an integer >= 0, ``num_batches`` not an integer >= 1.
    """
    seed = integer("seed", seed, minimum=0)
    num_batches = integer("num_batches", num_batches)
    rng = np.random.default_rng(seed)
    totals: dict[str, float] = {}
    for index in range(num_batches):
        batch = buffer.gather(buffer.window_rows(rng, batch_size, seq_len))
        metrics = jax.device_get(model.compute_loss(batch, key=jax.random.PRNGKey(seed + index)))
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return {name: total / num_batches for name, total in totals.items()}


def _episodes(buffer: ReplayBuffer, context: int, horizon: int, max_episodes: int) -> tuple[list[dict], int]:
    """The newest episodes long enough for ``context + horizon`` steps (horizon shortened if none is)."""
    if buffer.num_episodes == 0:
        raise DataError("The buffer holds no episodes to imagine.")
    episodes = [buffer.episode(-1 - i) for i in range(buffer.num_episodes)]
    longest = max(len(e["rewards"]) for e in episodes)
    if longest < context + 1:
        raise DataError(f"No episode is longer than context={context} steps (the longest has {longest}).")
    horizon = min(horizon, longest - context)
    chosen = [e for e in episodes if len(e["rewards"]) >= context + horizon][:max_episodes]
    return chosen, horizon


def open_loop_prediction(model, buffer: ReplayBuffer, context: int = 5, horizon: int = 15,
                         max_episodes: int = 16, baseline_reward: float | None = None) -> dict[str, Any]:
    """Observe ``context`` steps of held episodes, imagine ``horizon`` more with their real actions.

    Uses the newest ``max_episodes`` episodes with at least ``context +
    horizon`` steps (the horizon shrinks to the longest episode if needed),
    batched into one observe and one imagine call, in eval mode.

    Returns:
        ``real_obs [N, C+H, *obs]``, ``pred_obs [N, H, *obs]`` and
        ``recon_obs [N, C, *obs]`` (the observed steps decoded from their
        posteriors; both None when the model has no observation decoder),
        ``real_rewards [N, C+H]``,
        ``pred_rewards [N, H]`` (aligned with ``real_rewards[:, C-1:C-1+H]``),
        ``context``, ``horizon``, and errors: ``obs_mse`` against the
        persistence baseline ``obs_mse_baseline`` (repeat the last observed
        observation), ``reward_mae`` against ``reward_mae_baseline`` (predict
        ``baseline_reward`` at every step: pass the training data's mean
        reward for an out-of-sample baseline; by default the mean reward of
        the chosen episodes themselves, and ``reward_baseline_in_sample`` is
        True), and ``rewards_constant`` (every target reward is
        ``constant_reward``, so a constant predictor can be exact).
    """
    context, horizon = integer("context", context), integer("horizon", horizon)
    episodes, horizon = _episodes(buffer, context, horizon, integer("max_episodes", max_episodes))
    length = context + horizon
    obs = np.stack([e["obs"][:length] for e in episodes])
    actions = np.stack([e["actions"][:length] for e in episodes])
    rewards = np.stack([e["rewards"][:length] for e in episodes])
    was_training = model.training
    model.eval()
    try:
        posterior = model.observe_sequence(obs[:, :context], actions[:, :context])
        start = posterior[:, -1]
        future = np.swapaxes(actions[:, context - 1:length - 1], 0, 1)  # [H, N, A]
        trajectory = model.imagine(start, future)
        pred_rewards = np.asarray(trajectory.rewards).T
        try:
            decoded = model.decode(trajectory.states)
            pred_obs = decoded.get("obs") if isinstance(decoded, dict) else None
            recon_obs = model.decode(posterior).get("obs") if pred_obs is not None else None
        except (NotImplementedError, TypeError):
            pred_obs = recon_obs = None
    finally:
        model.train(was_training)
    target_rewards = rewards[:, context - 1:length - 1]
    mean_reward = (float(np.mean(np.concatenate([e["rewards"] for e in episodes]))) if baseline_reward is None
                   else float(baseline_reward))
    result = {
        "context": context, "horizon": horizon, "num_episodes": len(episodes),
        "real_obs": obs, "real_rewards": rewards, "pred_rewards": pred_rewards,
        "reward_mae": float(np.mean(np.abs(pred_rewards - target_rewards))),
        "reward_mae_baseline": float(np.mean(np.abs(mean_reward - target_rewards))),
        "reward_baseline": mean_reward, "reward_baseline_in_sample": baseline_reward is None,
        "rewards_constant": bool(np.all(target_rewards == target_rewards.flat[0])),
        "constant_reward": float(target_rewards.flat[0]),
        "pred_obs": None, "recon_obs": None,
    }
    if pred_obs is not None:
        pred_obs = np.swapaxes(np.asarray(pred_obs, np.float32), 0, 1)  # [N, H, *obs]
        real_future = obs[:, context:length].astype(np.float32)
        scale = 255.0 if obs.dtype == np.uint8 else 1.0
        result["pred_obs"] = pred_obs * scale
        result["recon_obs"] = np.asarray(recon_obs, np.float32) * scale
        last = obs[:, context - 1:context].astype(np.float32)
        result["obs_mse"] = float(np.mean((pred_obs * scale - real_future) ** 2))
        result["obs_mse_baseline"] = float(np.mean((last - real_future) ** 2))
    return result


def display_pixels(frames, stored) -> np.ndarray:
    """``frames`` as float32 pixels in 0..255 for a picture: observations stored as ``uint8`` (``stored``, their
    dtype) are pixels already; float ones are read in [0, 1], so they are scaled by 255. Clipped to 0..255."""
    scale = 1.0 if np.dtype(stored) == np.uint8 else 255.0
    return np.clip(np.asarray(frames, np.float32) * scale, 0, 255)


def plot_open_loop(result: dict[str, Any], path: str | os.PathLike, episode: int = 0, title: str | None = None):
    """Write a plot of imagined versus real observations and rewards for one episode; returns ``path`` (a str).

    The image is written in the format ``path``'s suffix names (``.png``,
    ``.pdf``, ``.svg``, ...; PNG without a suffix), under a unique temporary
    name in its directory, then renamed into place (removed if the write fails).

    Vector observations get one panel per dimension plus one for the reward;
    images get a strip of real and imagined frames plus the reward panel.
    The shaded region is the observed prefix. A reward is drawn at the step
    it arrives with (the reward of the action at step ``t`` at ``t + 1``, as
    the model predicts it from the state it reaches), so imagined rewards and
    observations both start at the first imagined step.

    Raises:
        ConfigError: ``path`` is a directory, its directory does not exist, or
            its suffix names a format matplotlib does not write (said before drawing).
        CheckpointError: the write failed (naming ``path`` and the cause).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = check_figure_path(path)
    context, horizon = result["context"], result["horizon"]
    real_obs, pred_obs = result["real_obs"][episode], result["pred_obs"]
    steps = np.arange(context + horizon)
    future = steps[context:]
    is_image = real_obs.ndim == 4
    dims = 0 if is_image or pred_obs is None else int(np.prod(real_obs.shape[1:]))
    rows = dims + 1 + (2 if is_image and pred_obs is not None else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(8, 1.8 * rows + 0.6), squeeze=False)
    axes = axes[:, 0]
    flat_real = real_obs.reshape(len(steps), -1)
    for dim in range(dims):
        ax = axes[dim]
        ax.plot(steps, flat_real[:, dim], "k-", label="real")
        ax.plot(future, pred_obs[episode].reshape(horizon, -1)[:, dim], "C1--", label="imagined")
        ax.axvspan(-0.5, context - 0.5, color="0.9")
        ax.set_ylabel(f"obs[{dim}]")
    reward_ax = axes[dims]
    real_rewards = result["real_rewards"][episode][:len(steps) - 1]
    reward_ax.plot(steps[1:], real_rewards, "k-", label="real")
    reward_ax.plot(future, result["pred_rewards"][episode], "C1--", label="imagined")
    reward_ax.axvspan(-0.5, context - 0.5, color="0.9")
    shown = np.concatenate([real_rewards, result["pred_rewards"][episode]])
    middle, half = (shown.max() + shown.min()) / 2, max((shown.max() - shown.min()) / 2 * 1.1, 0.5)
    reward_ax.set_ylim(middle - half, middle + half)  # a constant reward is not blown up to noise
    reward_ax.set_ylabel("reward")
    if len(real_rewards) and np.all(real_rewards == real_rewards[0]):
        reward_ax.set_title(f"every real reward of this episode is {float(real_rewards[0]):g}", fontsize="small")
    for ax in axes[:dims + 1]:  # the line panels share the step axis
        ax.set_xlim(-0.5, len(steps) - 0.5)
    axes[0].legend(loc="best", fontsize="small")
    if is_image and pred_obs is not None:
        picks = np.linspace(0, horizon - 1, min(horizon, 8)).astype(int)
        real_strip = display_pixels(np.concatenate([real_obs[context + p] for p in picks], 1), real_obs.dtype)
        pred_strip = display_pixels(np.concatenate([pred_obs[episode][p] for p in picks], 1), real_obs.dtype)
        for ax, strip, name in ((axes[-2], real_strip, "real"), (axes[-1], pred_strip, "imagined")):
            ax.imshow(strip.astype(np.uint8) if strip.shape[-1] == 3 else strip[..., 0], cmap="gray")
            ax.set_ylabel(name)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[-1].set_xlabel("step (shaded: observed; then imagined with the real actions)")
    fig.suptitle(title or f"Open-loop imagination: {context} observed steps, {horizon} imagined")
    fig.tight_layout()
    try:
        save_figure(fig, path, "imagination plot")
    finally:
        plt.close(fig)
    return os.fspath(path)


__all__ = ["display_pixels", "evaluate_loss", "open_loop_prediction", "plot_open_loop"]
