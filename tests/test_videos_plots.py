"""Evaluation videos and the open-loop report in the run, and `worldloom plot` against the published curves."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from _agents import DREAMER_TINY
from test_metrics_logs import jsonl_values, read_events, read_jsonl

from worldloom.core.errors import CheckpointError, ConfigError, DataError
from worldloom.training.videos import (
    EpisodeRecorder,
    FrameRecorder,
    log_evaluation_video,
    open_loop_frames,
    open_loop_report,
    write_video,
)

GIF_MAGIC = (b"GIF87a", b"GIF89a")


def gif_frames(path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "GIF"
        return image.n_frames


def test_a_gif_plays_its_frames_and_a_bad_path_is_refused(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(6, 20, 30, 3), dtype=np.uint8)
    path = write_video(frames, tmp_path / "clip.gif", fps=10)
    assert gif_frames(path) == 6 and path.stat().st_mode & 0o044  # readable as an ordinary file
    assert [p.name for p in tmp_path.iterdir()] == ["clip.gif"]  # no temporary left behind
    with pytest.raises(ConfigError, match=r"expected a \.gif or \.mp4 file, got .*clip\.avi"):
        write_video(frames, tmp_path / "clip.avi")
    with pytest.raises(DataError, match=r"expected a non-empty \[T, H, W, 3\].*got shape \(20, 30, 3\)"):
        write_video(frames[0], tmp_path / "one.gif")


def test_a_cartpole_episode_of_500_steps_is_well_under_5_mb(tmp_path):
    import gymnasium as gym

    recorder = EpisodeRecorder()  # the settings every evaluation records with
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    recorder(env, obs)
    steps, done = 0, False
    while not done:  # a controller that balances the pole the whole 500 steps
        action = int(3 * obs[2] + obs[3] + 0.1 * obs[1] + 0.05 * obs[0] > 0)
        obs, reward, terminated, truncated, _ = env.step(action)
        recorder(env, obs, np.eye(2)[action], reward)
        steps, done = steps + 1, terminated or truncated
    env.close()
    frames = recorder.frames.array()
    assert steps == 500 and truncated
    assert frames.shape == (251, 107, 160, 3)  # every 2nd of 501 frames; 600x400 shrunk to 160 wide
    path = write_video(frames, tmp_path / "eval.gif", fps=recorder.fps)
    assert path.stat().st_size < 500_000 and recorder.fps == 25.0  # about 70 KB here
    assert recorder.episode() is None  # vector observations: nothing kept for an open-loop report


def test_an_environment_that_cannot_render_costs_the_videos_not_the_run(tmp_path):
    import gymnasium as gym

    from worldloom.agents import AgentRunConfig
    from worldloom.training.videos import evaluation_recorder

    class NoRender(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (2,))
        action_space = gym.spaces.Discrete(2)

    gym.register("worldloom-tests/NoRender-v0", entry_point=NoRender)
    try:
        with pytest.warns(RuntimeWarning, match="Evaluation videos are off: worldloom-tests/NoRender-v0 cannot"):
            assert evaluation_recorder(AgentRunConfig(env="worldloom-tests/NoRender-v0")) is None
        assert evaluation_recorder(AgentRunConfig(env="worldloom-tests/NoRender-v0")) is None  # warned once
    finally:
        gym.registry.pop("worldloom-tests/NoRender-v0")
    assert evaluation_recorder(AgentRunConfig(eval_video=False)) is None

    class Broken:  # an environment whose rendering fails mid-episode
        metadata = {}

        def render(self):
            raise RuntimeError("no OpenGL context")

    recorder = EpisodeRecorder()
    recorder(Broken(), np.zeros(2))
    with pytest.warns(RuntimeWarning, match="No eval/video at step 5: rendering failed: no OpenGL context"):
        assert log_evaluation_video(None, recorder, tmp_path, 5) == []
    assert not (tmp_path / "videos").exists()


def test_frame_recorder_keeps_a_long_episode_whole_at_a_lower_rate():
    recorder = FrameRecorder(max_width=16, every=2, max_frames=3)
    for value in range(12):
        recorder(np.full((8, 32, 3), value, np.uint8))
    # Every 2nd frame until a 4th would be kept (frame 6): then every 4th, from the start.
    assert recorder.every == 4 and [int(frame[0, 0, 0]) for frame in recorder.frames] == [0, 4, 8]
    recorder(np.full((8, 32, 3), 12, np.uint8))  # a 4th again: every 8th
    assert recorder.every == 8 and [int(frame[0, 0, 0]) for frame in recorder.frames] == [0, 8]
    assert recorder.array().shape == (2, 4, 16, 3)  # 32 wide shrunk to 16


def test_the_open_loop_frames_stack_real_model_and_difference():
    real = np.zeros((2, 4, 3, 5, 3), np.uint8)
    real[:, 2:] = 200
    recon = np.full((2, 2, 3, 5, 3), 10.0)  # the observed steps, reconstructed
    pred = np.full((2, 2, 3, 5, 3), 150.0)  # the imagined ones
    frames = open_loop_frames({"real_obs": real, "recon_obs": recon, "pred_obs": pred, "context": 2},
                              max_episodes=1)
    assert frames.shape == (4, 9, 5, 3)
    # Top to bottom: real, model, (model - real) / 2 around mid-grey, as the reference's report.
    assert (frames[2, :3] == 200).all() and (frames[2, 3:6] == 150).all() and (frames[2, 6:] == 102).all()
    assert (frames[0, :3] == 0).all() and (frames[0, 3:6] == 10).all() and (frames[0, 6:] == 132).all()
    assert open_loop_frames({"real_obs": real, "recon_obs": recon, "pred_obs": pred, "context": 2}).shape[2] == 10
    # Float frames are read in [0, 1]: shown on the same 0..255 scale as uint8 ones.
    same = open_loop_frames({"real_obs": real / 255.0, "recon_obs": recon / 255.0, "pred_obs": pred / 255.0,
                             "context": 2}, max_episodes=1)
    assert np.array_equal(same, frames)
    with pytest.raises(DataError, match="needs image observations"):
        open_loop_frames({"real_obs": np.zeros((1, 4, 3)), "pred_obs": np.zeros((1, 2, 3)), "context": 2})


@pytest.fixture(scope="module")
def image_model():
    """A tiny DreamerV3 world model on 16x16 RGB frames and 2 discrete actions."""
    from worldloom import create_world_model

    return create_world_model("dreamerv3:size1m", obs_shape=(16, 16, 3), action_dim=2, action_type="discrete",
                              depth=2, **DREAMER_TINY)


@pytest.mark.slow(reason="a tiny image DreamerV3 model observes, imagines and decodes (three programs compile)")
def test_an_image_model_gets_the_open_loop_report(image_model, tmp_path):
    model = image_model
    rng = np.random.default_rng(0)

    class Env:  # what evaluate hands the recorder: an environment that renders
        metadata = {"render_fps": 20}

        def render(self):
            return rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)

    recorder = EpisodeRecorder(every=1)
    recorder(Env(), rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8))
    for step in range(11):
        recorder(Env(), rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8), np.eye(2)[step % 2], 0.0)
    episode = recorder.episode()
    assert episode["obs"].shape == (11, 16, 16, 3) and episode["actions"].shape == (11, 2)
    frames = open_loop_report(model, episode)
    assert frames.shape == (11, 48, 16, 3) and frames.dtype == np.uint8  # 5 observed + 6 imagined steps

    class Writer:
        def __init__(self):
            self.videos = []

        def add_video(self, tag, frames, step, fps, file):
            self.videos.append((tag, frames.shape, step, file))

    writer = Writer()
    written = log_evaluation_video(writer, recorder, tmp_path, 7, model)
    assert [p.name for p in written] == ["eval_step_7.gif", "open_loop_step_7.gif"]
    assert writer.videos[1] == ("eval/open_loop", (11, 48, 16, 3), 7, "videos/open_loop_step_7.gif")
    assert gif_frames(tmp_path / "videos" / "open_loop_step_7.gif") == 11


@pytest.mark.slow(reason="the open-loop programs of the tiny image model (shared with the test above)")
def test_worldloom_imagine_run_video_writes_the_open_loop_report(image_model, tmp_path, capsys):
    from worldloom.cli import main
    from worldloom.training import ReplayBuffer

    run = tmp_path / "run"
    image_model.save_pretrained(run / "model")
    rng = np.random.default_rng(1)
    buffer = ReplayBuffer(11, (16, 16, 3), 2, obs_dtype=np.uint8)
    buffer.add_episode(rng.integers(0, 255, size=(11, 16, 16, 3), dtype=np.uint8), np.eye(2)[np.arange(11) % 2],
                       np.zeros(11), dones=np.arange(11) == 10)
    buffer.save(run / "test_buffer.npz")
    video = tmp_path / "open_loop.gif"
    assert main(["imagine", str(run), "--context", "5", "--horizon", "6", "--device", "cpu",
                 "--out", str(tmp_path / "imagination.png"), "--video", str(video)]) == 0
    assert f"Video written to {video}" in capsys.readouterr().out
    assert gif_frames(video) == 11
    assert main(["imagine", "--model", str(run / "model")]) == 2  # no buffer: one line, nothing written
    assert "expected a run directory (RUN) or both --model and --buffer, got --model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two seeds of a short DreamerV3 run on CartPole, each with one evaluation (and its video)."""
    from worldloom.agents import AgentRunConfig, run_agent

    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        config = AgentRunConfig(env="CartPole-v1", algo="dreamerv3", total_steps=40, seed_steps=30, train_ratio=8,
                                batch_size=2, sequence_length=8, eval_every=20, eval_episodes=1,
                                checkpoint_every=0, log_every=1, out_dir=str(root / f"seed{seed}"), seed=seed)
        run_agent(config, progress=False, **DREAMER_TINY)
    return [root / "seed0", root / "seed1"]


@pytest.mark.slow(reason="two short DreamerV3 runs (40 steps each, the shared tiny program)")
def test_an_agent_run_writes_metrics_jsonl_with_the_tensorboard_tags(runs):
    rows = read_jsonl(runs[0] / "metrics.jsonl")
    events = read_events(runs[0] / "logs")
    values = jsonl_values(rows)
    assert set(values) == set(events)
    assert {"train/loss", "episode/return", "eval/return", "eval/return_std", "eval/video"} <= set(values)
    # docs/agents.md names every train/* metric a DreamerV3 run logs, and no other
    docs = (Path(__file__).parents[1] / "docs" / "agents.md").read_text()
    documented = {f"train/{name}" for agent, names in re.findall(r"^\| (both|DreamerV3) \| (.+?) \|", docs, re.M)
                  for name in re.findall(r"`([^`]+)`", names)}
    assert documented == {tag for tag in values if tag.startswith("train/")}
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert [count for _, count in values["train/updates"]] == list(range(1, summary["updates"] + 1))  # log_every=1
    settings = yaml.safe_load((runs[0] / "config.yaml").read_text())
    warmup, peak = settings["warmup_steps"], settings["learning_rate"]
    assert warmup > summary["updates"]  # inside the warm-up: update n runs at peak * (n - 1) / warmup
    assert [lr for _, lr in values["train/lr"]] == pytest.approx(
        [peak * (n - 1) / warmup for n in range(1, summary["updates"] + 1)], rel=1e-5)
    for tag, logged in events.items():  # every value at its step, in both (a video: its file in metrics.jsonl)
        assert [step for step, _ in values[tag]] == [step for step, _ in logged], tag
        if tag != "eval/video":
            assert [v for _, v in values[tag]] == pytest.approx([v for _, v in logged], rel=1e-6), tag
    steps = [row["step"] for row in rows]
    assert steps == sorted(steps)


@pytest.mark.slow(reason="two short DreamerV3 runs (40 steps each, the shared tiny program)")
def test_each_evaluation_leaves_a_video_file_and_a_video_summary(runs):
    run = runs[0]
    assert sorted(p.name for p in (run / "videos").iterdir()) == ["eval_step_20.gif", "eval_step_40.gif"]
    for name in ("eval_step_20.gif", "eval_step_40.gif"):
        assert gif_frames(run / "videos" / name) >= 2
    summaries = read_events(run / "logs")["eval/video"]
    assert [step for step, _ in summaries] == [20, 40]
    assert all(image[:6] in GIF_MAGIC for _, image in summaries)  # what TensorBoard plays in its Images tab
    rows = [row for row in read_jsonl(run / "metrics.jsonl") if "eval/video" in row]
    assert [(row["step"], row["eval/video"]) for row in rows] == [(20, "videos/eval_step_20.gif"),
                                                                  (40, "videos/eval_step_40.gif")]


@pytest.mark.slow(reason="two short DreamerV3 runs (40 steps each, the shared tiny program)")
def test_worldloom_plot_draws_two_runs_into_a_png(runs, tmp_path, capsys):
    from worldloom.cli import main

    out = tmp_path / "curves.png"
    assert main(["plot", *map(str, runs), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Curves of 2 runs written to {out}" in capsys.readouterr().out
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (800, 420)  # one panel: both runs are on environment steps
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "none.png")]) == 1  # not a run: one line, status 1
    assert "Expected a run directory of `worldloom agent`" in capsys.readouterr().err
    train_run = tmp_path / "train-run"  # a `worldloom train` run is named as one, by plot and by play
    train_run.mkdir()
    (train_run / "config.yaml").write_text("env: CartPole-v1\nmodel: dreamerv3:size12m\ntraining: {}\n")
    for command in (["plot", str(train_run), "--out", str(tmp_path / "none.png")], ["play", str(train_run)]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert "whose config.yaml has no algo (a run of `worldloom train`" in err and "Traceback" not in err, err


def test_the_x_axis_and_the_published_curve_are_the_references():
    from worldloom.training.plots import published_points, seed_curve, x_axis

    pixels = {"env": "dmc:cartpole-balance:pixels", "algo": "dreamerv3", "env_options": {"repeat": 2}}
    assert x_axis(pixels) == (2, "frames (agent steps x action repeat)")
    assert x_axis({"env": "atari:pong", "algo": "dreamerv3", "env_options": {}})[0] == 4
    assert x_axis({"env": "CartPole-v1", "algo": "dreamerv3", "env_options": {}}) == (1, "environment steps")
    points, label = published_points("dmc:cartpole-balance:pixels", "dreamerv3")
    assert points[0] == (100_000, 947.8) and "vision" in label
    assert published_points("dmc:walker-walk", "dreamerv3")[0][-1] == (500_000, 881.0)  # proprio
    assert published_points("atari:pong", "dreamerv3")[0] == [(400_000, -5.0)]
    assert published_points("dmc:cartpole-balance:pixels", "tdmpc2") is None
    assert published_points("CartPole-v1", "dreamerv3") is None
    # Seeds: the mean and range of each seed's last evaluation at or before each x.
    xs, mean, low, high = seed_curve([[(10, 1.0), (20, 3.0)], [(10, 3.0), (30, 5.0)]])
    assert xs == [10, 20, 30] and mean == [2.0, 3.0, 4.0] and low == [1.0, 3.0, 3.0] and high == [3.0, 3.0, 5.0]


def test_a_run_without_a_summary_is_read_from_its_metrics(tmp_path):
    from worldloom.training.plots import read_run

    (tmp_path / "config.yaml").write_text("env: CartPole-v1\nalgo: dreamerv3\nseed: 0\n")
    with pytest.raises(CheckpointError, match="found none: the run has not evaluated yet"):
        read_run(tmp_path)
    lines = [{"step": 10, "train/loss": 1.0}, {"step": 20, "eval/return": 9.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in lines) + '{"step": 3')
    assert read_run(tmp_path)["eval"] == [(20, 9.5)]  # a last line cut short by a killed run is skipped
