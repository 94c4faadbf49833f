"""Watching a trained agent: evaluate a run's saved agent and record a video of it.

``play(run_dir, episodes=5, seed=0, video="cartpole.gif")`` loads
``run_dir/agent`` and the environment id from ``run_dir/config.yaml`` (what
``run_agent`` and ``worldloom agent`` write), plays ``episodes`` episodes one
after another (episode ``i`` from ``reset(seed=seed + i)``) and returns their
returns. With ``video``, the first episode is rendered (``rgb_array``) and
written by :func:`worldloom.training.videos.write_video`: a ``.gif`` with
Pillow, an ``.mp4`` with imageio or moviepy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from worldloom.agents.collect import env_action
from worldloom.training._episode import integer
from worldloom.training.videos import check_fps, check_video_path, write_video


def load_run_agent(run_dir, device=None):
    """``(agent, env_id, env_options)`` of a run directory written by :func:`run_agent`."""
    from worldloom.agents._run_io import read_agent_meta
    from worldloom.agents.dreamer import DreamerAgent
    from worldloom.agents.tdmpc2 import TDMPC2Agent
    from worldloom.training.plots import read_agent_run

    run_dir = Path(run_dir)
    config = read_agent_run(run_dir)
    algo = read_agent_meta(run_dir / "agent", config.get("algo", "")).get("algo")
    agent_type = {"dreamerv3": DreamerAgent, "tdmpc2": TDMPC2Agent}[algo]
    return agent_type.load(run_dir / "agent", device=device), config["env"], config.get("env_options") or {}


def play(run_dir, episodes: int = 5, seed: int = 0, video=None, fps: int = 30, device=None) -> dict:
    """Play a run's saved agent; returns ``{"returns", "lengths", "video"}``.

    Args:
        run_dir: A directory written by ``worldloom agent`` / :func:`run_agent`.
        episodes: Episodes to play (TD-MPC2 plans without exploration noise;
            DreamerV3 samples its policy, as the reference evaluates).
        seed: Episode ``i`` starts from ``reset(seed=seed + i)``.
        video: Path of a ``.gif`` or ``.mp4`` of the first episode, or None.
        fps: Frames per second of the video.

    Raises:
        CheckpointError: ``run_dir`` holds no saved agent or config.
        ConfigError: ``episodes`` not an integer >= 1, ``seed`` not an integer >= 0, a video suffix other than
            .gif/.mp4, an .mp4 without a writer installed, or ``fps`` not a number > 0 (all said before
            anything is loaded or played).
    """
    from worldloom.envs import make_env

    episodes = integer("episodes", episodes)
    seed = integer("seed", seed, minimum=0)
    if video is not None:
        video = check_video_path(video)
        fps = check_fps(fps)
    agent, env_id, env_options = load_run_agent(run_dir, device=device)
    if video is not None and not os.environ.get("DISPLAY"):  # render off-screen; no window system to talk to
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    returns, lengths = [], []
    for episode in range(episodes):
        record = video is not None and episode == 0
        options = {**env_options, "render_mode": "rgb_array"} if record else env_options
        env = make_env(env_id, agent=agent.algo, **options)
        frames = []
        try:
            total, length = _episode(agent, env, seed + episode, frames if record else None)
        finally:
            env.close()
        returns.append(total)
        lengths.append(length)
        if record:
            write_video(np.stack(frames), video, fps)
    return {"returns": returns, "lengths": lengths, "video": None if video is None else str(video)}


def _episode(agent, env, seed: int, frames: list | None) -> tuple[float, int]:
    import gymnasium as gym

    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    obs, _ = env.reset(seed=seed)
    agent.reset(1)
    first, total, length, done = True, 0.0, 0, False
    if frames is not None:
        frames.append(env.render())
    while not done:
        action = agent.act(np.asarray(obs)[None], np.array([first]), greedy=agent.algo == "tdmpc2")[0]
        obs, reward, terminated, truncated, _ = env.step(env_action(action, env, discrete))
        first, done = False, terminated or truncated
        total, length = total + float(reward), length + 1
        if frames is not None:
            frames.append(env.render())
    return total, length
