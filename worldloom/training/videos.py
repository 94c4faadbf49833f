"""Videos of a run: evaluation episodes and the open-loop report of image models, as files and summaries.

- :class:`FrameRecorder` keeps an episode's rendered frames small as they come
  (downscaled to ``max_width`` pixels, every ``every``-th frame, the rate
  halved whenever more than ``max_frames`` would be kept), so a 500-step
  CartPole episode holds a few MB, not 360, and its GIF is about 70 KB.
- :func:`write_video` writes ``[T, H, W, 3]`` uint8 frames as an animated GIF
  (Pillow, always present) or an MP4 (``imageio`` or ``moviepy`` when
  installed), to a temporary name renamed into place.
- :func:`encode_gif` gives the GIF's bytes: TensorBoard plays an animated GIF
  in an image summary, which is what tensorboardX's ``add_video`` writes
  (there through moviepy; here through Pillow, so no extra package is needed).
- :func:`open_loop_frames` turns :func:`~worldloom.training.evaluation.open_loop_prediction`'s
  result for image observations into the reference's open-loop video: the real
  frames, the model's (observed steps reconstructed, then imagined ones), and
  their difference, stacked top to bottom, episodes side by side.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from worldloom.core.archives import as_path
from worldloom.core.errors import ConfigError, DataError

VIDEO_SUFFIXES = (".gif", ".mp4")


def _as_frames(frames) -> np.ndarray:
    """``frames`` as a ``[T, H, W, 3]`` uint8 array (one channel repeated to three)."""
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[0] == 0 or array.shape[-1] not in (1, 3):
        raise DataError(f"Video frames: expected a non-empty [T, H, W, 3] or [T, H, W, 1] array, got shape "
                        f"{array.shape}.")
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def downscale(frame, max_width: int) -> np.ndarray:
    """``frame`` ``[H, W, C]`` shrunk (Pillow, area filter) so its width is at most ``max_width``."""
    frame = np.asarray(frame)
    if frame.shape[1] <= max_width:
        return frame.astype(np.uint8, copy=False)
    from PIL import Image

    height = max(1, round(frame.shape[0] * max_width / frame.shape[1]))
    image = Image.fromarray(frame.astype(np.uint8, copy=False).squeeze(-1) if frame.shape[-1] == 1 else
                            frame.astype(np.uint8, copy=False))
    small = np.asarray(image.resize((max_width, height), Image.BOX))
    return small[..., None] if small.ndim == 2 else small


class FrameRecorder:
    """Collects one episode's frames, small: call it with each rendered ``[H, W, 3]`` frame.

    Args:
        max_width: Frames wider than this are downscaled to it (aspect kept).
        every: Keep every ``every``-th frame (the video's frame rate is the
            environment's divided by it).
        max_frames: Frames kept at most: past it, every second kept frame is
            dropped and ``every`` doubles, so a long episode is kept whole at
            a lower frame rate (a 1,000-step DMC episode: 250 frames).
    """

    def __init__(self, max_width: int = 160, every: int = 2, max_frames: int = 300):
        if max_width < 8 or every < 1 or max_frames < 1:
            raise ConfigError(f"FrameRecorder: expected max_width >= 8, every >= 1, max_frames >= 1, got "
                              f"{max_width}, {every}, {max_frames}.")
        self.max_width, self.every, self.max_frames = int(max_width), int(every), int(max_frames)
        self.frames: list[np.ndarray] = []
        self.seen = 0

    def __call__(self, frame) -> None:
        if frame is not None and self.seen % self.every == 0:
            self.frames.append(downscale(frame, self.max_width))
            if len(self.frames) > self.max_frames:  # kept frames sit at multiples of every: keep those of 2 every
                self.frames, self.every = self.frames[::2], self.every * 2
        self.seen += 1

    def array(self) -> np.ndarray:
        """The kept frames, ``[T, H, W, 3]`` uint8."""
        return _as_frames(np.stack(self.frames))


def check_fps(fps, name: str = "fps") -> float:
    """``fps`` as a float if it is a finite number > 0 (not a bool); ConfigError otherwise."""
    if isinstance(fps, (bool, np.bool_)) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise ConfigError(f"{name}: expected a finite number > 0 of frames per second, got {fps!r} "
                          f"({type(fps).__name__}).")
    return float(fps)


def encode_gif(frames, fps: float) -> bytes:
    """An animated GIF of ``frames`` (``[T, H, W, 3]`` or ``[T, H, W, 1]``) that loops, as bytes.

    Raises:
        ConfigError: ``fps`` not a finite number > 0. DataError: frames not shaped ``[T, H, W, 3 or 1]``.
    """
    from PIL import Image

    fps = check_fps(fps)
    array = _as_frames(frames)
    images = [Image.fromarray(frame) for frame in array]
    buffer = io.BytesIO()
    # A GIF frame's delay is at most 65,535 hundredths of a second, and Pillow shows a run of identical frames as
    # one frame of their summed delay: the delay is capped so that the longest such run fits (only rates below
    # about 1/655 fps, or a still held longer than 655 s, are shortened).
    same = np.all(array[1:] == array[:-1], axis=(1, 2, 3)) if len(array) > 1 else np.zeros(0, bool)
    run, longest = 1, 1
    for repeated in same:
        run = run + 1 if repeated else 1
        longest = max(longest, run)
    duration = min(max(20, round(1000 / fps)), 655_350 // longest)
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return buffer.getvalue()


_MP4_PACKAGES = ("An .mp4 video needs ffmpeg through imageio (pip install 'imageio[ffmpeg]') or moviepy "
                 "(pip install 'worldloom[video]'); a .gif needs nothing more.")


def _imageio_ffmpeg() -> str | None:
    """None when imageio can write MP4s here (imageio with its ffmpeg plugin and binary); else what is missing."""
    try:
        import imageio.v2  # noqa: F401 - only whether it is there
    except ImportError:
        return "imageio is not installed"
    try:
        import imageio_ffmpeg
    except ImportError:
        return "imageio is installed without its ffmpeg plugin (the imageio-ffmpeg package)"
    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except (RuntimeError, OSError) as err:
        return f"imageio-ffmpeg finds no ffmpeg program ({err})"
    return None


def _mp4_writer():
    """A function ``(frames, path, fps)`` writing an MP4, or None when neither imageio (with its ffmpeg plugin)
    nor moviepy is installed (see :func:`mp4_writer_problem`)."""
    if _imageio_ffmpeg() is None:
        import imageio.v2 as imageio

        def write(frames, path, fps):
            imageio.mimwrite(path, list(frames), fps=fps, format="FFMPEG", macro_block_size=1)

        return write
    try:
        try:
            from moviepy import ImageSequenceClip
        except ImportError:
            from moviepy.video.io.ImageSequenceClip import ImageSequenceClip

        def write(frames, path, fps):
            ImageSequenceClip(list(frames), fps=fps).write_videofile(path, logger=None, audio=False)

        return write
    except ImportError:
        return None


def mp4_writer_problem() -> str | None:
    """None when an .mp4 can be written here; else the message saying what is missing and what to install."""
    if _mp4_writer() is not None:
        return None
    return f"{_MP4_PACKAGES} Found: {_imageio_ffmpeg()}, and moviepy is not installed."


def check_video_path(path, name: str = "video") -> Path:
    """``path`` as a ``Path`` if :func:`write_video` can write it here: a ``.gif``, or an ``.mp4`` with a writer
    installed, and not a directory. Call it before the work whose frames go there.

    Raises:
        ConfigError: another type or suffix, a directory, or an ``.mp4`` without a usable writer
            (naming the packages to install).
    """
    path = as_path(path, name, "the path of a .gif or .mp4 file")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"{name}: expected a .gif or .mp4 file, got {str(path)!r}.")
    if path.is_dir():
        raise ConfigError(f"{name}: {str(path)!r} is a directory: expected the name of a .gif or .mp4 file.")
    if path.suffix.lower() == ".mp4":
        problem = mp4_writer_problem()
        if problem is not None:
            raise ConfigError(f"{name}: {str(path)!r}: {problem}")
    return path


def write_video(frames, path: str | os.PathLike, fps: float = 25.0) -> Path:
    """Write ``frames`` ``[T, H, W, 3]`` (uint8) to ``path``: ``.gif`` (Pillow) or ``.mp4`` (imageio or moviepy).

    The file is written under a temporary name in the same directory and
    renamed, so ``path`` is either whole or absent.

    Raises:
        ConfigError: another suffix, a directory, ``.mp4`` without a usable writer (imageio with its ffmpeg
            plugin, or moviepy; see :func:`check_video_path`), or ``fps`` not a finite number > 0.
        DataError: frames not shaped ``[T, H, W, 3]``.
    """
    path = check_video_path(path, "Video path")
    suffix = path.suffix.lower()
    fps = check_fps(fps)
    array = _as_frames(frames)
    writer = _mp4_writer() if suffix == ".mp4" else None
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file (mkstemp makes it private)
    try:
        if suffix == ".gif":
            Path(tmp).write_bytes(encode_gif(array, fps))
        else:
            writer(array, tmp, fps)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def open_loop_frames(result: dict, max_episodes: int = 6) -> np.ndarray:
    """The reference's open-loop report as video frames, from ``open_loop_prediction``'s result.

    As DreamerV3's report: each frame stacks, top to bottom, the real frame,
    the model's frame (the observed steps reconstructed from their
    posteriors, then the steps imagined from them with the real actions) and
    their difference ``(model - real) / 2`` around mid-grey (grey: equal;
    lighter: the model is brighter); up to ``max_episodes`` episodes side by
    side (the reference shows 6).

    Args:
        result: ``open_loop_prediction``'s result for image observations
            (``real_obs [N, C+H, h, w, c]``, ``recon_obs [N, C, h, w, c]``,
            ``pred_obs [N, H, h, w, c]``, in 0-255).

    Returns:
        ``[C + H, 3 h, n w, 3]`` uint8 frames (``n = min(N, max_episodes)``).

    Raises:
        DataError: vector observations or a model without an observation decoder.
    """
    real, pred = np.asarray(result["real_obs"]), result.get("pred_obs")
    if real.ndim != 5 or pred is None:
        got = (f"observations of shape {real.shape[1:]} per episode (vectors)" if real.ndim != 5
               else "no decoded observations (a model without an observation decoder)")
        raise DataError(f"An open-loop video needs image observations [N, T, H, W, C] and a model that decodes "
                        f"them; got {got}.")
    from worldloom.training.evaluation import display_pixels

    context, count, stored = int(result["context"]), min(int(max_episodes), real.shape[0]), real.dtype
    real = display_pixels(real[:count], stored)
    recon = result.get("recon_obs")
    observed = real[:, :context] if recon is None else display_pixels(recon[:count], stored)
    model = np.concatenate([observed, display_pixels(pred[:count], stored)], axis=1)
    difference = (model - real) / 2 + 127.5
    rows = np.concatenate([real, model, difference], axis=2)  # [n, T, 3h, w, c]
    grid = np.concatenate(list(rows), axis=2)  # [T, 3h, n w, c]
    return _as_frames(np.round(grid))


def write_open_loop_video(result: dict, path: str | os.PathLike, fps: float = 10.0) -> Path | None:
    """:func:`open_loop_frames` of ``result`` written to ``path``; None (nothing written) without image frames.

    Raises:
        ConfigError: a suffix other than .gif/.mp4.
    """
    if np.asarray(result["real_obs"]).ndim != 5 or result.get("pred_obs") is None:
        return None
    return write_video(open_loop_frames(result), path, fps)


class EpisodeRecorder:
    """What an evaluation keeps of its first episode: small rendered frames and, for images, the steps.

    :func:`~worldloom.agents.loop.evaluate` makes that episode's environment
    with ``render_mode="rgb_array"`` and calls ``recorder(env, obs, action,
    reward)`` after its reset (``action`` and ``reward`` None) and after each
    of its steps. Image observations ``[H, W, C]`` are kept with the agent's
    actions and the rewards (row ``t``: ``obs_t, action_t, reward_t``), for the
    open-loop report.

    Args:
        max_width, every, max_frames: The rendered frames' :class:`FrameRecorder` settings.
        keep_steps: Keep image observations, actions and rewards (up to ``max_frames`` steps).
    """

    def __init__(self, max_width: int = 160, every: int = 2, max_frames: int = 300, keep_steps: bool = True):
        if not os.environ.get("DISPLAY"):  # render off-screen; no window system to talk to
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
            os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        self.frames = FrameRecorder(max_width, every, max_frames)
        self.keep_steps, self.max_steps = bool(keep_steps), int(max_frames)
        self.obs: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.render_fps = 50.0
        self.failed: Exception | None = None

    @property
    def fps(self) -> float:
        """The video's frame rate: the environment's ``render_fps`` over the frames kept (every n-th)."""
        return self.render_fps / self.frames.every

    def __call__(self, env, obs, action=None, reward=None) -> None:
        if self.frames.seen == 0:
            self.render_fps = float((getattr(env, "metadata", None) or {}).get("render_fps") or 50)
        frame = None
        if self.failed is None:
            try:
                frame = env.render()
            except Exception as err:  # a video is not worth an evaluation: no more frames of this episode
                self.failed = err
        self.frames(frame)
        obs = np.asarray(obs)
        if self.keep_steps and obs.ndim == 3 and len(self.obs) <= self.max_steps:
            if action is not None:
                self.actions.append(np.array(action, np.float32))
                self.rewards.append(float(reward))
            self.obs.append(obs.copy())

    def episode(self) -> dict | None:
        """``{"obs" [T, H, W, C], "actions" [T, A], "rewards" [T]}`` of the kept steps, or None (no image steps)."""
        steps = min(len(self.actions), len(self.obs))
        if steps == 0:
            return None
        return {"obs": np.stack(self.obs[:steps]), "actions": np.stack(self.actions[:steps]),
                "rewards": np.asarray(self.rewards[:steps], np.float32)}


_RENDERS: dict = {}  # (env, algo, options) -> None (renders rgb_array frames) or the error making it raised


def evaluation_recorder(config) -> EpisodeRecorder | None:
    """An :class:`EpisodeRecorder` for one evaluation of an online run, or None: no video.

    None when ``config.eval_video`` is off, or when the run's environment
    cannot be made with ``render_mode="rgb_array"`` (found once per process by
    making one, and warned once): an environment that cannot render costs the
    run its videos, not the run.

    Args:
        config: The run's :class:`~worldloom.agents.AgentRunConfig`.
    """
    if not config.eval_video:
        return None
    key = (config.env, config.algo, json.dumps(config.env_options, sort_keys=True, default=str))
    if key not in _RENDERS:
        recorder = EpisodeRecorder()  # off-screen rendering set up before the environment is made
        try:
            config.make_env(render_mode="rgb_array").close()
            _RENDERS[key] = None
        except Exception as err:  # noqa: BLE001 - whatever the environment raises, the run goes on without videos
            _RENDERS[key] = err
            warnings.warn(f"Evaluation videos are off: {config.env} cannot be made with render_mode='rgb_array' "
                          f"({type(err).__name__}: {err}). Training goes on.", RuntimeWarning, stacklevel=2)
        return recorder if _RENDERS[key] is None else None
    return EpisodeRecorder() if _RENDERS[key] is None else None


OPEN_LOOP_CONTEXT = 5
"""Observed steps before the open-loop report imagines (the reference's report observes the first few)."""


def open_loop_report(model, episode: dict, context: int = OPEN_LOOP_CONTEXT, horizon: int = 45) -> np.ndarray:
    """The open-loop video frames of ``episode`` (:meth:`EpisodeRecorder.episode`) under ``model``.

    Returns:
        ``[context + horizon, 3 H, W, 3]`` uint8 (real, imagined, difference; see :func:`open_loop_frames`).

    Raises:
        DataError: the episode is not longer than ``context`` steps, or the model decodes no images.
    """
    from worldloom.training._buffer import ReplayBuffer
    from worldloom.training.evaluation import open_loop_prediction

    obs = episode["obs"]
    buffer = ReplayBuffer(len(obs), obs.shape[1:], episode["actions"].shape[-1], obs_dtype=obs.dtype)
    dones = np.zeros(len(obs), bool)
    dones[-1] = True  # the recorded steps are one episode (the report does not look past its end)
    buffer.add_episode(obs, episode["actions"], episode["rewards"], dones=dones)
    result = open_loop_prediction(model, buffer, context=context, horizon=horizon, max_episodes=1)
    return open_loop_frames(result, max_episodes=1)


def log_evaluation_video(writer, recorder: EpisodeRecorder, run_dir: str | os.PathLike, step: int,
                         model=None) -> list[Path]:
    """Write an evaluation's first episode as ``run_dir/videos/eval_step_<step>.gif`` and to ``writer``.

    With ``model`` (a DreamerV3 world model, or an agent holding one as
    ``world_model``) and image observations, the open-loop report of that
    episode goes to ``videos/open_loop_step_<step>.gif`` and the
    ``eval/open_loop`` video too. A video that cannot be written warns and the
    run goes on.

    Returns:
        The files written.
    """
    run_dir, written = Path(run_dir), []
    if not recorder.frames.frames:
        reason = f"rendering failed: {recorder.failed}" if recorder.failed is not None else "no frames were rendered"
        warnings.warn(f"No eval/video at step {step}: {reason}.", RuntimeWarning, stacklevel=2)
        return written
    model = getattr(model, "world_model", model)
    if getattr(model, "family", None) != "dreamerv3":  # TD-MPC2 decodes no observations
        model = None
    videos = [("eval/video", f"eval_step_{int(step)}.gif", lambda: recorder.frames.array(), recorder.fps)]
    episode = recorder.episode() if model is not None else None
    if episode is not None and len(episode["obs"]) > OPEN_LOOP_CONTEXT:
        videos.append(("eval/open_loop", f"open_loop_step_{int(step)}.gif",
                       lambda: open_loop_report(model, episode), 10.0))
    for tag, name, frames_of, fps in videos:
        try:
            frames = frames_of()
            path = write_video(frames, run_dir / "videos" / name, fps)
        except (OSError, DataError) as err:
            warnings.warn(f"The {tag} video of step {step} was not written: {err}", RuntimeWarning, stacklevel=2)
            continue
        writer.add_video(tag, frames, step, fps=fps, file=str(path.relative_to(run_dir)))
        written.append(path)
    return written


__all__ = ["OPEN_LOOP_CONTEXT", "VIDEO_SUFFIXES", "EpisodeRecorder", "FrameRecorder", "check_fps", "check_video_path",
           "downscale", "encode_gif", "evaluation_recorder", "log_evaluation_video", "mp4_writer_problem",
           "open_loop_frames", "open_loop_report", "write_open_loop_video", "write_video"]
