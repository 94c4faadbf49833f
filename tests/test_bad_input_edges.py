"""Bad input at the edges: seeds, frame rates, video writers, env options, stored generator states, saved records,
save paths, plot targets and files that are not the package's are each refused with the package's own error,
before any work, and nothing half-written or foreign is left changed on disk."""

import json
import os
import shutil
import sys
import zipfile

import numpy as np
import pytest
from _agents import dreamer_model

from worldloom.core import persist
from worldloom.core.archives import write_npz
from worldloom.core.errors import CheckpointError, ConfigError
from worldloom.models import checkpoint as model_checkpoint
from worldloom.training import ReplayBuffer, _buffer_io

PNG = b"\x89PNG\r\n\x1a\n"


def small_buffer() -> ReplayBuffer:
    buffer = ReplayBuffer(50, (4,), 2, seed=1)
    for length in (6, 8):
        buffer.add_episode(np.arange(length * 4, dtype=np.float32).reshape(length, 4), np.arange(length) % 2,
                           np.ones(length), np.arange(length) == length - 1)
    return buffer


def leftovers(directory) -> list[str]:
    """Hidden entries (temporary names) in ``directory``."""
    return sorted(name for name in os.listdir(directory) if name.startswith("."))


# ------------------------------------------------------------ 1. seeds


@pytest.mark.parametrize("seed", [-5, 1.5, "3", True])
def test_evaluate_loss_refuses_a_seed_that_is_not_a_non_negative_integer(seed):
    from worldloom.training.evaluation import evaluate_loss

    with pytest.raises(ConfigError, match=r"seed: expected an integer >= 0"):
        evaluate_loss(None, small_buffer(), batch_size=2, seq_len=4, num_batches=1, seed=seed)


def test_agent_run_config_refuses_a_negative_seed(tmp_path, capsys):
    from worldloom.agents import AgentRunConfig
    from worldloom.cli import main

    with pytest.raises(ConfigError, match=r"seed must be a non-negative integer.*got -1"):
        AgentRunConfig(seed=-1)
    assert AgentRunConfig(seed=0).seed == 0
    out = tmp_path / "run"
    assert main(["agent", "--seed", "-1", "--steps", "10", "--out", str(out), "--no-progress"]) == 2
    assert "seed must be a non-negative integer" in capsys.readouterr().err
    assert not out.exists()


def test_play_refuses_a_negative_seed_before_loading_anything(tmp_path):
    from worldloom.agents.play import play

    with pytest.raises(ConfigError, match=r"seed: expected an integer >= 0, got -1"):
        play(tmp_path / "no-run", seed=-1)


# ------------------------------------------------------------ 2. frame rates


@pytest.mark.parametrize("fps", [0, -5, float("nan"), float("inf"), "30"])
def test_a_video_frame_rate_must_be_a_positive_number(tmp_path, fps):
    from worldloom.agents.play import play
    from worldloom.training.videos import encode_gif, write_video

    frames = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ConfigError, match=r"fps: expected a finite number > 0"):
        write_video(frames, tmp_path / "v.gif", fps)
    with pytest.raises(ConfigError, match=r"fps: expected a finite number > 0"):
        encode_gif(frames, fps)
    with pytest.raises(ConfigError, match=r"fps: expected a finite number > 0"):
        play(tmp_path / "no-run", video=tmp_path / "v.gif", fps=fps)
    assert os.listdir(tmp_path) == []
    assert write_video(frames, tmp_path / "ok.gif", 0.5).read_bytes()[:3] == b"GIF"
    assert encode_gif(frames, 1e-4)[:3] == b"GIF"  # slower than a GIF's longest delay: its longest, not an overflow


# ------------------------------------------------------------ 3. an .mp4 writer, found before the work


def test_an_mp4_without_a_usable_writer_is_refused_before_playing(tmp_path, monkeypatch):
    from worldloom.agents.play import play
    from worldloom.training.videos import check_video_path, write_video

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # imageio without its ffmpeg plugin
    monkeypatch.setitem(sys.modules, "moviepy", None)
    with pytest.raises(ConfigError, match=r"\.mp4 video needs .*imageio\[ffmpeg\]"):
        check_video_path(tmp_path / "v.mp4")
    with pytest.raises(ConfigError, match=r"\.mp4 video needs .*imageio\[ffmpeg\]"):
        play(tmp_path / "no-run", video=tmp_path / "v.mp4")  # said before the run is even read
    with pytest.raises(ConfigError, match=r"\.mp4 video needs .*imageio\[ffmpeg\]"):
        write_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "v.mp4", 10)
    assert os.listdir(tmp_path) == []
    assert check_video_path(tmp_path / "v.gif").name == "v.gif"  # a GIF needs nothing more
    with pytest.raises(ConfigError, match=r"expected a \.gif or \.mp4"):
        check_video_path(tmp_path / "v.avi")


# ------------------------------------------------------------ 4. env_options' render_mode


def test_a_render_mode_that_is_not_a_string_is_a_config_error():
    from worldloom.agents import AgentRunConfig
    from worldloom.envs import make_env

    with pytest.raises(ConfigError, match=r"env_options\['render_mode'\]: expected a string .*got 5 \(int\)"):
        AgentRunConfig(env_options={"render_mode": 5})
    with pytest.raises(ConfigError, match=r"render_mode: expected a string .*got 5 \(int\)"):
        make_env("CartPole-v1", render_mode=5)
    with pytest.raises(ConfigError, match=r"render_mode: expected a string"):
        make_env("dmc:cartpole-balance", render_mode=["rgb_array"])
    assert AgentRunConfig(env_options={"render_mode": None}).env_options == {"render_mode": None}
    make_env("CartPole-v1", render_mode="rgb_array").close()


# ------------------------------------------------------------ 5. a buffer's stored generator state


@pytest.mark.parametrize("state", [-5, 2 ** 130, "x", None])
def test_a_buffer_file_with_an_invalid_generator_state_is_a_checkpoint_error(tmp_path, state):
    arrays = small_buffer().state_dict()
    rng = json.loads(str(arrays["rng"]))
    rng["state"]["state"] = state
    arrays["rng"] = np.array(json.dumps(rng))
    path = tmp_path / "buffer.npz"
    write_npz(path, arrays, format=_buffer_io.FORMAT, version=_buffer_io.VERSION, what="replay buffer")
    with pytest.raises(CheckpointError, match=r"rng: expected the state of the buffer's PCG64 generator"):
        ReplayBuffer.load(path)
    assert ReplayBuffer.load(path, seed=3).num_episodes == 2  # a seed given: the stored state is not read


# ------------------------------------------------------------ 6 and 7. saved models


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = dreamer_model(seed=2)
    path = tmp_path_factory.mktemp("model") / "model"
    model.save_pretrained(path)
    return model, path


def _edited_record(source, tmp_path, **fields):
    path = tmp_path / "model"
    shutil.copytree(source, path)
    record = json.loads((path / "worldloom.json").read_text())
    (path / "worldloom.json").write_text(json.dumps({**record, **fields}))
    persist.write_manifest(path, model_checkpoint.FORMAT, model_checkpoint.VERSION)  # as if written so
    return path


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("seed", "abc", "an integer"), ("seed", 1.5, "an integer"), ("seed", True, "an integer"),
    ("preset", [1], "a preset name"), ("preset", 3, "a preset name"),
    ("family", ["dreamerv3"], "a model family name"), ("weights_sha256", 5, "a SHA-256"),
    ("num_parameters", "many", "an integer"), ("version", True, "an integer format version"),
])
def test_a_saved_record_with_a_field_of_the_wrong_type_is_a_checkpoint_error(saved_model, tmp_path, field, value,
                                                                             expected):
    from worldloom import create_world_model

    path = _edited_record(saved_model[1], tmp_path, **{field: value})
    with pytest.raises(CheckpointError, match=rf"worldloom.json: {field}: expected {expected}.*got "):
        create_world_model(str(path))


def test_a_saved_record_with_valid_fields_still_loads(saved_model, tmp_path):
    from worldloom import create_world_model

    path = _edited_record(saved_model[1], tmp_path, preset=None, seed=7)
    model = create_world_model(str(path))
    assert model.seed == 7 and model.preset is None


@pytest.mark.parametrize("path", [None, 5, "", b"model"])
def test_a_model_path_that_is_not_a_path_is_a_config_error(saved_model, path):
    from worldloom.models.checkpoint import load_model, save_model

    model = saved_model[0]
    with pytest.raises(ConfigError, match=r"path: expected a non-empty str or os.PathLike directory name"):
        model.save_pretrained(path)
    with pytest.raises(ConfigError, match=r"path: expected a non-empty str or os.PathLike directory name"):
        save_model(model, path)
    with pytest.raises(ConfigError, match=r"path: expected a non-empty str or os.PathLike directory name"):
        load_model(path)


def test_a_world_model_seed_must_be_an_integer():
    from worldloom.models.dreamerv3 import DreamerV3WorldModel

    config = dreamer_model().config
    with pytest.raises(ConfigError, match=r"seed: expected an integer, got 'abc' \(str\)"):
        DreamerV3WorldModel(config, seed="abc")


# ------------------------------------------------------------ 8. plot targets


def open_loop_result() -> dict:
    rng = np.random.default_rng(0)
    context, horizon = 3, 4
    return {"context": context, "horizon": horizon, "real_obs": rng.normal(size=(1, context + horizon, 2)),
            "pred_obs": rng.normal(size=(1, horizon, 2)), "real_rewards": np.ones((1, context + horizon)),
            "pred_rewards": rng.normal(size=(1, horizon))}


def test_the_imagination_plot_refuses_a_directory_or_a_missing_parent_and_leaves_nothing(tmp_path):
    from worldloom.training.evaluation import plot_open_loop

    target = tmp_path / "outdir"
    target.mkdir()
    with pytest.raises(ConfigError, match=r"is a directory: expected the name of an image file"):
        plot_open_loop(open_loop_result(), target)
    assert sorted(os.listdir(tmp_path)) == ["outdir"] and os.listdir(target) == []
    with pytest.raises(ConfigError, match=r"expected an existing directory to write it in, got no .*nodir"):
        plot_open_loop(open_loop_result(), tmp_path / "nodir" / "sub" / "plot.png")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"expected an existing directory to write it in, got a file"):
        plot_open_loop(open_loop_result(), tmp_path / "file" / "plot.png")
    assert sorted(os.listdir(tmp_path)) == ["file", "outdir"]


def test_the_imagination_plot_writes_the_format_its_suffix_names(tmp_path):
    from worldloom.training.evaluation import plot_open_loop

    plot_open_loop(open_loop_result(), tmp_path / "plot.pdf")
    assert (tmp_path / "plot.pdf").read_bytes()[:5] == b"%PDF-"
    plot_open_loop(open_loop_result(), tmp_path / "plot.svg")
    assert b"<svg" in (tmp_path / "plot.svg").read_bytes()[:1000]
    plot_open_loop(open_loop_result(), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == PNG
    with pytest.raises(ConfigError, match=r"expected a suffix matplotlib writes \(.*\.png.*\), got '\.txt'"):
        plot_open_loop(open_loop_result(), tmp_path / "plot.txt")
    assert sorted(os.listdir(tmp_path)) == ["plot.pdf", "plot.png", "plot.svg"]


def test_a_failed_plot_write_leaves_no_temporary_file_and_the_old_plot(tmp_path, monkeypatch):
    import matplotlib.figure

    from worldloom.training.evaluation import plot_open_loop

    target = tmp_path / "plot.png"
    target.write_bytes(b"old plot")

    def fail(self, name, **kwargs):
        with open(name, "wb") as handle:
            handle.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail)
    with pytest.raises(CheckpointError, match=r"No space left on device"):
        plot_open_loop(open_loop_result(), target)
    assert os.listdir(tmp_path) == ["plot.png"] and target.read_bytes() == b"old plot"


def _run_dir(path):
    path.mkdir()
    (path / "config.yaml").write_text("env: CartPole-v1\nalgo: dreamerv3\nseed: 0\n")
    (path / "summary.json").write_text(json.dumps({"eval": [[10, 5.0], [20, 9.0]]}))
    return path


def test_the_learning_curve_plot_checks_its_target_the_same_way(tmp_path):
    from worldloom.cli import main
    from worldloom.training.plots import plot_runs

    run = _run_dir(tmp_path / "run")
    target = tmp_path / "outdir"
    target.mkdir()
    with pytest.raises(ConfigError, match=r"is a directory: expected the name of an image file"):
        plot_runs([run], target)
    assert main(["plot", str(run), "--out", str(target)]) == 2
    with pytest.raises(ConfigError, match=r"expected a suffix matplotlib writes"):
        plot_runs([run], tmp_path / "curves.txt")
    assert plot_runs([run], tmp_path / "curves.pdf").read_bytes()[:5] == b"%PDF-"
    assert plot_runs([run], tmp_path / "new" / "curves.png").read_bytes()[:8] == PNG  # its parent is made
    assert sorted(os.listdir(tmp_path)) == ["curves.pdf", "new", "outdir", "run"]
    assert os.listdir(target) == [] and os.listdir(tmp_path / "new") == ["curves.png"]


# ------------------------------------------------------------ 9. files that are not the package's


def test_a_buffer_save_refuses_to_replace_a_file_that_is_not_a_worldloom_archive(tmp_path):
    buffer = small_buffer()
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(CheckpointError, match=r"notes.txt.*not a replay buffer file worldloom wrote.*overwrite=True"):
        buffer.save(notes)
    assert notes.read_text() == "my notes" and leftovers(tmp_path) == []
    foreign = tmp_path / "theirs.npz"
    np.savez(foreign, x=np.zeros(3))  # a zip of arrays, but not one worldloom signed
    before = foreign.read_bytes()
    with pytest.raises(CheckpointError, match=r"theirs.npz.*not a replay buffer file worldloom wrote"):
        buffer.save(foreign)
    assert foreign.read_bytes() == before
    # An earlier save (or another worldloom archive) is replaced; overwrite=True replaces anything.
    path = tmp_path / "buffer.npz"
    buffer.save(path)
    small_buffer().save(path)
    assert ReplayBuffer.load(path).num_episodes == 2
    earlier = tmp_path / "earlier.npz"  # as an earlier worldloom saved buffers: np.savez, no signature
    np.savez(earlier, **{key: value for key, value in buffer.state_dict().items() if key != "rng"})
    buffer.save(earlier)
    assert ReplayBuffer.load(earlier).num_episodes == 2
    buffer.save(notes, overwrite=True)
    assert ReplayBuffer.load(notes).num_episodes == 2
    from worldloom.core.archives import write_npz

    other = tmp_path / "other.npz"  # signed by worldloom, but not a buffer: refused as well
    write_npz(other, {"x": np.zeros(3)}, format="worldloom-stream-replay", version=1)
    with pytest.raises(CheckpointError, match=r"other.npz.*not a replay buffer file worldloom wrote"):
        buffer.save(other)
    empty = tmp_path / "empty.npz"  # an empty file (tempfile.mkstemp's): nothing to lose, replaced
    empty.touch()
    buffer.save(empty)
    assert ReplayBuffer.load(empty).num_episodes == 2
    assert zipfile.is_zipfile(notes) and leftovers(tmp_path) == []


def test_collect_refuses_to_replace_a_users_file(tmp_path, capsys):
    from worldloom.cli import main

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert main(["collect", "--env", "CartPole-v1", "--episodes", "1", "--out", str(notes)]) == 1
    assert "not a replay buffer file worldloom wrote" in capsys.readouterr().err
    assert notes.read_text() == "my notes"
