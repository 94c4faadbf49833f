"""worldloom_torch_compat: the nn.Module facade, gradients across the edge, conversion, imports."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import worldloom

torch = pytest.importorskip("torch")

from worldloom.core.errors import CheckpointError, ConfigError, DataError, ShapeError  # noqa: E402
from worldloom.models.base import flatten_params  # noqa: E402
from worldloom_torch_compat import LatentState, Trajectory, create_world_model, to_jax, to_torch  # noqa: E402

TINY = dict(deter=64, hidden=32, units=32, classes=4, stoch=4)


@pytest.fixture(scope="module")
def model():
    """One tiny vector model shared by the tests (compiling is the slow part); state restored after each."""
    return create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu", **TINY)


@pytest.fixture(autouse=True)
def _restore(request):
    if "model" not in request.fixturenames:
        yield
        return
    model = request.getfixturevalue("model")
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    yield
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    model.requires_grad_(True)
    model.train()


def make_batch(seed=0, batch=2, length=6):
    gen = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(batch, length, 4, generator=gen),
        "actions": torch.rand(batch, length, 2, generator=gen) * 2 - 1,
        "rewards": torch.randn(batch, length, generator=gen),
        "continues": torch.ones(batch, length),
    }


# ---------------------------------------------------------------- parameters


def test_parameters_mirror_the_jax_params(model):
    params = list(model.parameters())
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in params)
    assert sum(p.numel() for p in params) == model.num_parameters() == model.jax_model.num_parameters()
    names = [n for n, _ in flatten_params(model.jax_model.params)]
    assert [n for n, _ in model.named_parameters()] == names == list(model.state_dict())
    for name, value in flatten_params(model.jax_model.params):
        np.testing.assert_array_equal(model.get_parameter(name).detach().numpy(), np.asarray(value))


def test_state_dict_round_trip(model):
    batch = make_batch()
    model.eval()
    with torch.no_grad():
        before = model.compute_loss(batch)["loss"].item()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
        changed = model.compute_loss(batch)["loss"].item()
    assert changed != before
    model.load_state_dict(saved)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key])
    with torch.no_grad():
        assert model.compute_loss(batch)["loss"].item() == before


def test_load_state_dict_errors_name_what_is_wrong(model):
    state = dict(model.state_dict())
    key = "reward.Dense_0.Dense_0.bias"
    with pytest.raises(ShapeError, match=r"expected shape \[255\], got \[3\]"):
        model.load_state_dict({**state, key: torch.zeros(3)})
    del state[key]
    with pytest.raises(CheckpointError, match="missing keys"):
        model.load_state_dict(state)


def test_torch_parameters_are_the_source_of_truth(model):
    model.eval()
    state = model.encode(torch.zeros(2, 4))
    bias = model.get_parameter("continue.Dense_0.Dense_0.bias")
    with torch.no_grad():
        bias.fill_(50.0)  # a continue logit of ~50: probability 1
        probs = model.decode(state)["continue"]
    torch.testing.assert_close(probs, torch.ones(2, 1))
    np.testing.assert_array_equal(np.asarray(model.jax_model.params["continue"]["Dense_0"]["Dense_0"]["bias"]), [50.0])


def test_sync_from_jax_pulls_jax_side_changes(model):
    handle = model.jax_model
    handle.params = jax.tree_util.tree_map(lambda x: x + 1.0, handle.params)
    model.sync_from_jax()
    for name, value in flatten_params(handle.params):
        np.testing.assert_array_equal(model.get_parameter(name).detach().numpy(), np.asarray(value))


def test_train_eval_and_to_are_forwarded(model):
    assert model.eval() is model and model.jax_model.training is False and not model.training
    assert model.train() is model and model.jax_model.training is True
    assert model.to("cpu") is model and model.jax_model.device.platform == "cpu"
    assert model.device == torch.device("cpu")


def test_save_pretrained_writes_the_torch_weights(model, tmp_path):
    with torch.no_grad():
        model.get_parameter("reward.Dense_0.Dense_0.bias").fill_(0.25)
    model.save_pretrained(tmp_path / "saved")
    loaded = create_world_model(str(tmp_path / "saved"), device="cpu")
    assert isinstance(loaded, torch.nn.Module)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_deepcopy_and_pickle_give_independent_equal_models(model):
    import copy
    import pickle

    model.get_parameter("rssm.prior_out.Dense_0.bias").requires_grad_(False)
    model.eval()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.jax_model is not model.jax_model and clone.config == model.config and not clone.training
        assert not clone.get_parameter("rssm.prior_out.Dense_0.bias").requires_grad
        for key, value in model.state_dict().items():
            assert torch.equal(clone.state_dict()[key], value), key
        with torch.no_grad():
            next(iter(clone.parameters())).add_(1.0)
        assert not torch.equal(next(iter(clone.parameters())), next(iter(model.parameters())))


# ---------------------------------------------------------------- protocol methods


@pytest.mark.slow
def test_methods_take_and_return_torch_tensors(model):
    model.eval()  # the tests share eval-mode programs: fewer compilations
    obs = torch.randn(2, 4)
    with torch.no_grad():
        state = model.encode(obs)
        assert isinstance(state, LatentState) and state.features.shape == (2, 64 + 16)
        assert state.features.grad_fn is None and state.batch_shape == (2,)
        seq = model.observe_sequence(torch.randn(2, 6, 4), torch.zeros(2, 6, 2))
        assert seq.deterministic.shape == (2, 6, 64) and seq[:, -1].features.shape == (2, 80)
        nxt = model.predict(state, torch.zeros(2, 2))
        assert nxt.prior_logits.shape == (2, 4, 4) and nxt.posterior_logits is None
        step = model.observe(state, torch.zeros(2, 2), obs)
        assert step.posterior_logits.shape == step.prior_logits.shape == (2, 4, 4)
        traj = model.imagine(state, torch.zeros(3, 2, 2))
        assert isinstance(traj, Trajectory) and traj.rewards.shape == (3, 2) and traj.horizon == 3
        assert torch.isfinite(traj.rewards.mean()) and traj.continues.shape == (3, 2)
        assert traj.discounted_return(0.99).shape == (2,)
        heads = model.decode(state)
        assert heads["obs"].shape == (2, 4) and heads["reward"].shape == heads["continue"].shape == (2, 1)
        assert model.initial_state(2).features.shape == (2, 80)
        losses = model.compute_loss(make_batch())
    assert {"loss", "loss/rec", "loss/rew", "loss/con", "loss/dyn", "loss/rep"} <= set(losses)
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert all(p.grad is None for p in model.parameters())


def test_user_errors_raise_worldloom_types(model):
    with pytest.raises(ShapeError, match=r"obs: expected shape \[B, 4\], got \[3, 5\]"):
        model.encode(torch.zeros(3, 5))
    with pytest.raises(ShapeError, match="batch lacks 'rewards'"):
        model.compute_loss({"obs": torch.zeros(2, 3, 4), "actions": torch.zeros(2, 3, 2)})
    with pytest.raises(ShapeError, match="expected a dict"):
        model.compute_loss([torch.zeros(2, 3, 4)])
    with pytest.raises(ConfigError, match=r"channels first \(C, H, W\) such as \(3, 64, 64\)"):
        create_world_model("dreamerv3:size1m", obs_shape=(64, 64, 3), action_dim=2, device="cpu")
    # A failed differentiable call leaves the handle with concrete params.
    model.eval()
    with torch.no_grad():
        state = model.encode(torch.zeros(2, 4))
    with pytest.raises(ShapeError, match=r"actions: expected batch size 2 \(that of initial_state\), got 3"):
        model.imagine(state, torch.zeros(3, 3, 2, requires_grad=True))
    assert isinstance(model.jax_model.params["reward"]["Dense_0"]["Dense_0"]["bias"], jax.Array)



def test_inputs_that_require_grad_are_checked_as_the_others(model):
    """They reach the model as tracers of jax.vjp, whose values are read all the same."""
    model.eval()
    with pytest.raises(DataError, match="obs contains 8 NaN or inf values"):
        model.encode(torch.full((2, 4), float("nan"), requires_grad=True))
    batch = {"obs": torch.zeros(2, 3, 4), "actions": torch.zeros(2, 3, 2), "rewards": torch.zeros(2, 3),
             "continues": torch.full((2, 3), 5.0, requires_grad=True)}
    with pytest.raises(DataError, match=r"continues: expected values in \[0, 1\].*got values from 5 to 5"):
        model.compute_loss(batch)


@pytest.mark.slow
def test_image_observations_are_channels_first():
    model = create_world_model("dreamerv3:size1m", obs_shape=(3, 16, 16), action_dim=2, device="cpu",
                               cnn_mults=(2,), depth=4, **TINY)
    assert model.obs_shape == model.config.obs_shape == (3, 16, 16)  # channels first, as the original's
    assert model.config.to_jax() == model.jax_model.config and model.jax_model.config.obs_shape == (16, 16, 3)
    obs = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        state = model.encode(obs)
        recon = model.decode(state)["obs"]
        direct = model.jax_model.encode(np.asarray(obs.permute(0, 2, 3, 1)))
    assert recon.shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(state.deterministic.numpy(), np.asarray(direct.deterministic))
    with pytest.raises(ShapeError, match=r"expected shape \[B, 3, 16, 16\] \(channels first\), got \[2, 16, 16, 3\]"):
        model.encode(obs.permute(0, 2, 3, 1))


# ---------------------------------------------------------------- gradients


def directional_fd(fn, tensor, direction, eps=3e-3):
    """Central difference of ``fn()`` along ``direction`` in ``tensor``'s values."""
    orig = tensor.detach().clone()
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            tensor.copy_(orig + sign * eps * direction)
        values.append(fn().item())
    with torch.no_grad():
        tensor.copy_(orig)
    return (values[0] - values[1]) / (2 * eps)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reward.Dense_0.Dense_0.kernel", "decoder.NormAct_1.Dense_0.Dense_0.kernel"])
def test_parameter_gradient_matches_finite_differences(model, name):
    # Training mode with a fixed key: the latents are sampled, but from the same
    # draws every call, so the loss is a function of the params; the backward
    # pass must reuse the forward's draws to match. These heads do not feed the
    # samples, so the loss is smooth in them. float32 central differences
    # (eps 3e-3) agree to about 0.1%; 1% is asserted.
    # The key is committed to the model's device like the handle's own keys, so
    # this test shares its compiled programs with the others.
    batch, key = make_batch(1), jax.device_put(jax.random.PRNGKey(7), model.jax_model.device)
    loss = lambda: model.compute_loss(batch, key=key)["loss"]
    param = model.get_parameter(name)
    loss().backward()
    direction = torch.randn(param.shape, generator=torch.Generator().manual_seed(2))
    analytic = (param.grad * direction).sum().item()
    numeric = directional_fd(loss, param.data, direction)
    assert abs(analytic) > 1e-2
    assert analytic == pytest.approx(numeric, rel=1e-2)


@pytest.mark.slow
def test_action_gradient_of_imagine(model):
    model.eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        state = model.encode(torch.randn(2, 4, generator=gen))
    actions = (torch.rand(3, 2, 2, generator=gen) * 2 - 1).requires_grad_(True)
    w_deter, w_logits = torch.randn(2, 64, generator=gen), torch.randn(2, 4, 4, generator=gen)

    def smooth_output(acts):
        # The first imagined step's deter and prior logits (states[1]; states[0] is the start)
        # are smooth in the first action (later steps pass through the straight-through sample).
        traj = model.imagine(state, acts)
        return (traj.states.deterministic[1] * w_deter).sum() + (traj.states.prior_logits[1] * w_logits).sum()

    smooth_output(actions).backward()
    direction = torch.randn(actions.shape, generator=gen)
    analytic = (actions.grad * direction).sum().item()
    numeric = directional_fd(lambda: smooth_output(actions), actions.data, direction)
    assert abs(analytic) > 1e-2
    assert analytic == pytest.approx(numeric, rel=1e-2)

    # Through the whole rollout (straight-through included) the gradient is JAX's own.
    actions.grad = None
    model.imagine(state, actions).rewards.sum().backward()
    handle = model.jax_model
    jax_state = worldloom.LatentState(*(jnp.asarray(getattr(state, f).numpy())
                                        for f in ("deterministic", "stochastic", "posterior_logits", "prior_logits")))
    expected = jax.grad(lambda a: handle.imagine(jax_state, a).rewards.sum())(jnp.asarray(actions.detach().numpy()))
    torch.testing.assert_close(actions.grad, torch.from_numpy(np.array(expected)), rtol=1e-5, atol=1e-5)


def test_gradients_reach_float_observations(model):
    model.eval()
    obs = torch.randn(2, 4, requires_grad=True)
    model.encode(obs).features.sum().backward()
    assert obs.grad is not None and obs.grad.shape == (2, 4) and torch.any(obs.grad != 0)


def test_no_grad_builds_no_graph(model):
    model.eval()
    actions = torch.zeros(3, 2, 2, requires_grad=True)
    with torch.no_grad():
        traj = model.imagine(model.encode(torch.zeros(2, 4)), actions)
    assert traj.rewards.grad_fn is None and not traj.rewards.requires_grad


@pytest.mark.slow
def test_in_place_edit_before_backward_is_rejected(model):
    # JAX's residuals may be zero-copy views of the inputs, so, as in torch,
    # editing a Parameter or an input between forward and backward is an error.
    loss = model.compute_loss(make_batch())["loss"]
    with torch.no_grad():
        next(iter(model.parameters())).add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    batch = make_batch()
    loss = model.compute_loss(batch)["loss"]
    batch["obs"].add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.slow
def test_torch_adam_loop_lowers_the_loss(model):
    batch = make_batch(4)
    model.eval()
    with torch.no_grad():
        before = model.compute_loss(batch)["loss"].item()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        optimizer.zero_grad()
        loss = model.compute_loss(batch)["loss"]
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model.compute_loss(batch)["loss"].item()
    assert np.isfinite(after) and after < 0.8 * before, (before, after)
    # The JAX handle computes with the trained weights.
    name, value = flatten_params(model.jax_model.params)[0]
    np.testing.assert_array_equal(np.asarray(value), model.get_parameter(name).detach().numpy())


# ---------------------------------------------------------------- conversion


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.uint8, torch.bool, torch.bfloat16,
                                   torch.float16, torch.int8])
def test_round_trip_is_bit_exact_and_zero_copy(dtype):
    gen = torch.Generator().manual_seed(0)
    source = (torch.randn(5, 7, generator=gen) * 100).to(dtype)
    if dtype == torch.float32:
        source[0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])
    array = to_jax(source)
    assert array.shape == (5, 7) and str(array.dtype) == str(source.dtype).removeprefix("torch.")
    assert array.unsafe_buffer_pointer() == source.data_ptr()  # zero-copy
    back = to_torch(array)
    assert back.dtype == dtype and back.device == source.device
    assert torch.equal(back.view(torch.uint8), source.view(torch.uint8))  # bit for bit


def test_copy_fallbacks_keep_values():
    source = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    for view in (source.transpose(1, 2), source[:, ::2], torch.arange(4.0).expand(3, 4)):
        np.testing.assert_array_equal(np.asarray(to_jax(view)), view.numpy())
    with_grad = torch.ones(3, requires_grad=True)
    np.testing.assert_array_equal(np.asarray(to_jax(with_grad)), np.ones(3, np.float32))


@pytest.mark.skipif(jax.config.jax_enable_x64, reason="checks the x64-off narrowing")
def test_64_bit_dtypes_narrow_while_x64_is_off():
    # JAX without x64 has no 64-bit types: float64 -> float32, int64 -> int32 (values kept when they fit).
    ints = torch.tensor([-(2**31), 0, 2**31 - 1], dtype=torch.int64)
    assert to_jax(ints).dtype == jnp.int32
    assert torch.equal(to_torch(to_jax(ints)).long(), ints)
    assert to_jax(torch.ones(2, dtype=torch.float64)).dtype == jnp.float32
    with pytest.raises(DataError, match="outside the int32 range"):
        to_jax(torch.tensor([2**40]))


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **env}, timeout=120)


@pytest.mark.slow
def test_64_bit_round_trips_with_x64_enabled():
    result = run_python("""
        import torch
        from worldloom_torch_compat import to_jax, to_torch
        for dtype in (torch.float64, torch.int64):
            source = (torch.randn(4, 3, dtype=torch.float64) * 1e12).to(dtype)
            array = to_jax(source)
            assert str(array.dtype) == str(dtype).removeprefix("torch."), array.dtype
            assert array.unsafe_buffer_pointer() == source.data_ptr()
            back = to_torch(array)
            assert back.dtype == dtype and torch.equal(back, source)
        print("ok")
    """, JAX_ENABLE_X64="1")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_worldloom_imports_without_torch_and_the_facade_says_how_to_get_it():
    result = run_python("""
        import sys
        sys.modules["torch"] = None  # import torch now raises ImportError
        import worldloom
        import worldloom.models, worldloom.nn, worldloom.training
        assert "dreamerv3:size1m" in worldloom.list_models()
        try:
            import worldloom_torch_compat
        except ImportError as err:
            print(err)
        else:
            raise SystemExit("imported without torch")
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'pip install "worldloom[torch]"' in result.stdout


@pytest.mark.slow
def test_tdmpc2_through_the_same_facade():
    model = create_world_model("tdmpc2:1m", obs_shape=(5,), action_dim=2, device="cpu",
                               enc_dim=16, mlp_dim=16, latent_dim=16)
    assert sum(p.numel() for p in model.parameters()) == model.jax_model.num_parameters()
    state = model.encode(torch.randn(3, 5))
    assert state.stochastic is None and state.features.shape == (3, 16)  # z is deterministic
    actions = torch.zeros(4, 3, 2, requires_grad=True)
    model.imagine(state, actions).rewards.sum().backward()
    assert actions.grad.shape == (4, 3, 2)
    assert any(p.grad is not None and torch.any(p.grad != 0) for p in model.parameters())
    with torch.no_grad():
        assert model.predict_q(state, torch.zeros(3, 2)).shape == (model.config.num_q, 3)  # the ensemble
        assert model.predict_reward(state, torch.zeros(3, 2)).shape == (3,)  # a family method, forwarded
    with pytest.raises(AttributeError):
        model.no_such_method  # noqa: B018


# ---------------------------------------------------------------- replay buffer


def test_replay_buffer_takes_and_gives_torch_tensors(tmp_path):
    from worldloom_torch_compat.training import ReplayBuffer

    buffer = ReplayBuffer(capacity=100, obs_shape=(4,), action_dim=2)
    steps = torch.arange(30, dtype=torch.float32)
    buffer.add_episode(obs=steps[:, None].repeat(1, 4), actions=torch.zeros(30, 2), rewards=steps,
                       dones=steps == 29)
    assert (len(buffer), buffer.num_episodes, buffer.obs_shape) == (30, 1, (4,))
    batch = buffer.sample(batch_size=3, seq_len=5, device="cpu")
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in batch.values())
    assert batch["obs"].shape == (3, 5, 4) and batch["obs"].dtype == torch.float32
    assert batch["is_first"].dtype == torch.bool and batch["continues"].shape == (3, 5)
    # Windows are consecutive rows: reward t follows obs t.
    torch.testing.assert_close(batch["rewards"], batch["obs"][..., 0])
    assert torch.all(batch["obs"][:, 1:, 0] - batch["obs"][:, :-1, 0] == 1)
    buffer.save(tmp_path / "buffer.npz")
    loaded = ReplayBuffer.load(tmp_path / "buffer.npz")
    assert isinstance(loaded, ReplayBuffer) and len(loaded) == 30


def test_image_replay_buffer_is_channels_first():
    from worldloom_torch_compat.training import ReplayBuffer

    buffer = ReplayBuffer(capacity=50, obs_shape=(3, 8, 8), action_dim=2)
    frames = torch.randint(0, 255, (20, 3, 8, 8), dtype=torch.uint8)
    frames[:, 0] = torch.arange(20, dtype=torch.uint8)[:, None, None]  # channel 0 holds the row index
    buffer.add_episode(obs=frames, actions=torch.zeros(20, 2), rewards=torch.zeros(20), dones=torch.arange(20) == 19)
    assert buffer.obs_shape == (3, 8, 8) and buffer.jax_buffer.obs_shape == (8, 8, 3)
    obs = buffer.sample(batch_size=2, seq_len=4)["obs"]
    assert obs.shape == (2, 4, 3, 8, 8) and obs.dtype == torch.uint8 and obs.is_contiguous()
    for window in obs:
        first = int(window[0, 0, 0, 0])
        assert torch.equal(window, frames[first:first + 4])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a torch without CUDA")
def test_sampling_to_a_device_torch_lacks_is_a_device_error():
    from worldloom.core.errors import DeviceError
    from worldloom_torch_compat.training.data import create_random_buffer

    buffer = create_random_buffer(capacity=500, obs_shape=(4,), action_dim=2, num_episodes=5, episode_length=50)
    with pytest.raises(DeviceError, match="not available to torch"):
        buffer.sample(batch_size=2, seq_len=5, device="cuda")


def test_state_dict_errors_are_runtime_errors_as_in_torch():
    model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu", **TINY)
    missing = model.state_dict()
    missing.pop(next(iter(missing)))
    with pytest.raises(RuntimeError, match="missing keys") as caught:
        model.load_state_dict(missing)
    assert isinstance(caught.value, CheckpointError)
    wrong = {key: torch.zeros(3) if i == 0 else value for i, (key, value) in enumerate(model.state_dict().items())}
    with pytest.raises(RuntimeError, match="expected shape") as caught:
        model.load_state_dict(wrong)
    assert isinstance(caught.value, ShapeError)


@pytest.mark.slow
@pytest.mark.parametrize("convert", [lambda m: m.half(), lambda m: m.double(), lambda m: m.to(torch.float64)])
def test_dtype_conversions_are_refused_and_leave_the_model_intact(convert):
    model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu", **TINY).eval()
    before = model.encode(torch.ones(2, 4)).deterministic
    with pytest.raises(ConfigError, match="compute_dtype='bfloat16'"):
        convert(model)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    torch.testing.assert_close(model.encode(torch.ones(2, 4)).deterministic, before)
    model.to("cpu")  # moving devices still works


@pytest.mark.slow
def test_torch_compile_runs_the_model():
    model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu", **TINY).eval()
    compiled = torch.compile(model)
    obs, actions = torch.randn(2, 3, 4), torch.eye(2)[torch.randint(0, 2, (2, 3))]
    torch.testing.assert_close(compiled(obs, actions).deterministic, model(obs, actions).deterministic)


def test_package_namespace_lists_the_api_only():
    import worldloom_torch_compat as wl

    names = dir(wl)
    assert {"create_world_model", "training", "models", "core"} <= set(names)
    assert not {"torch", "info", "model", "types"} & set(names)
    assert wl.training.Trainer is not None
