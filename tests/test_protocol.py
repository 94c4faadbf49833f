"""The documented protocol on both faces: one-step observe, wrong arguments, and only worldloom errors escaping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worldloom import LatentState, ShapeError, WorldloomError, create_world_model

OBS, ACT, B, T = 4, 2, 3, 6
TINY = {"dreamerv3:size1m": dict(deter=64, hidden=32, units=32, classes=4, stoch=4, depth=2),
        "tdmpc2:1m": dict(enc_dim=32, mlp_dim=32, latent_dim=16)}


@pytest.fixture(scope="module", params=list(TINY))
def model(request):
    return create_world_model(request.param, obs_shape=(OBS,), action_dim=ACT, **TINY[request.param]).eval()


def sequence(seed: int = 0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(B, T, OBS)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(B, T, ACT)).astype(np.float32)
    return obs, actions


def assert_states_close(a: LatentState, b: LatentState) -> None:
    for name in ("deterministic", "stochastic", "posterior_logits", "prior_logits"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.slow(reason="one observe step per time step, each a call of the compiled step")
def test_one_step_observe_loop_equals_the_sequence_posterior(model):
    obs, actions = sequence()
    states = model.observe_sequence(obs, actions)
    state = model.encode(obs[:, 0])
    assert_states_close(state, states[:, 0])
    for t in range(1, T):
        state = model.observe(state, actions[:, t - 1], obs[:, t])
        assert_states_close(state, states[:, t])
    if model.family == "dreamerv3":
        assert state.posterior_logits.shape == state.prior_logits.shape == (B, 4, 4)
    else:  # TD-MPC2's latent is deterministic
        assert state.stochastic is None and state.features is state.deterministic


@pytest.mark.slow(reason="compiles the sequence posterior from a given state")
def test_sequence_posterior_from_a_state_continues_the_unbroken_sequence(model):
    obs, actions = sequence(1)
    whole = model.observe_sequence(obs, actions)
    kwargs = {"prev_action": actions[:, 2]} if model.family == "dreamerv3" else {}
    rest = model.observe_sequence(obs[:, 3:], actions[:, 3:], state=whole[:, 2], **kwargs)
    assert_states_close(rest, whole[:, 3:])
    # A sequence whose episode starts over at step 3 goes on from there as a new sequence does.
    is_first = np.zeros(obs.shape[:2], bool)
    is_first[:, 3] = True
    restarted = model.observe_sequence(obs, actions, is_first=is_first)
    assert_states_close(restarted[:, 3:], model.observe_sequence(obs[:, 3:], actions[:, 3:]))
    assert_states_close(restarted[:, :3], whole[:, :3])  # and the steps before it are the unbroken sequence's


@pytest.mark.slow(reason="compiles the prior step and a two-step imagination")
def test_predict_is_one_imagination_step(model):
    obs, actions = sequence(2)
    state = model.encode(obs[:, 0])
    nxt = model.predict(state, actions[:, 0])
    trajectory = model.imagine(state, np.swapaxes(actions, 0, 1)[:2])
    np.testing.assert_allclose(np.asarray(trajectory.states[0].deterministic), np.asarray(nxt.deterministic),
                               rtol=1e-5, atol=1e-5)
    assert len(trajectory.states) == 2 and [s.batch_shape for s in trajectory.states] == [(B,), (B,)]


def test_decode_has_the_documented_keys_and_shapes(model):
    heads = model.decode(model.encode(sequence()[0][:, 0]))
    assert heads["reward"].shape == heads["continue"].shape == (B, 1)
    assert ("obs" in heads) == (model.family == "dreamerv3")
    if "obs" in heads:
        assert heads["obs"].shape == (B, OBS)


@pytest.mark.parametrize("call, message", [
    (lambda m, s, o, a: m.encode(s), "obs: expected an array, got a LatentState"),
    (lambda m, s, o, a: m.predict(s, s), "action: expected an array, got a LatentState"),
    (lambda m, s, o, a: m.predict(o[:, 0], a[:, 0]), "state: expected a LatentState .* got ndarray"),
    (lambda m, s, o, a: m.observe(s, a[:, 0], s), "obs: expected an array, got a LatentState"),
    (lambda m, s, o, a: m.observe(o[:, 0], a[:, 0], o[:, 1]), "state: expected a LatentState"),
    (lambda m, s, o, a: m.decode(o[:, 0]), "state: expected a LatentState .* got ndarray"),
    (lambda m, s, o, a: m.imagine(None, np.swapaxes(a, 0, 1)), "initial_state: expected a LatentState .* NoneType"),
    (lambda m, s, o, a: m.imagine(o[:, 0], np.swapaxes(a, 0, 1)), "initial_state: expected a LatentState"),
    (lambda m, s, o, a: m.imagine(s, np.swapaxes(a, 0, 1)[:, :2]), r"actions: expected .*\b3\b.*, got"),
    (lambda m, s, o, a: m.predict(s, a[:2, 0]), r"action: expected .*\b3\b.*, got"),
    (lambda m, s, o, a: m.observe(s, a[:, 0], o[:2, 1]), r"obs: expected batch size 3 .* got 2"),
    (lambda m, s, o, a: m.observe_sequence(o, a, is_first=np.zeros(B, bool)), r"is_first: expected shape \[3, 6\]"),
    (lambda m, s, o, a: m.compute_loss({"obs": o[:0], "actions": a[:0], "rewards": np.zeros((0, T)),
                                        "continues": np.ones((0, T))}), "at least one window"),
    (lambda m, s, o, a: m.compute_loss([o, a]), "batch: expected a dict"),
    (lambda m, s, o, a: m.initial_state(0), "batch_size: expected a positive int"),
])
def test_wrong_kinds_of_argument_raise_shape_errors(model, call, message):
    obs, actions = sequence()
    state = model.encode(obs[:, 0])
    with pytest.raises(WorldloomError, match=message):
        call(model, state, obs, actions)


@pytest.mark.slow(reason="imports torch, compiles a DreamerV3 image model and steps its torch face one step at a time")
def test_torch_face_one_step_observe_and_channels_first_images():
    torch = pytest.importorskip("torch")
    import worldloom_torch_compat as face

    model = face.create_world_model("dreamerv3:size1m", obs_shape=(3, 16, 16), action_dim=ACT, device="cpu",
                                    **TINY["dreamerv3:size1m"]).eval()
    gen = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (B, T, 3, 16, 16), generator=gen, dtype=torch.uint8)
    actions = torch.rand(B, T, ACT, generator=gen) * 2 - 1
    with torch.no_grad():
        states = model.observe_sequence(obs, actions)
        state = model.encode(obs[:, 0])
        for t in range(1, T):
            state = model.observe(state, actions[:, t - 1], obs[:, t])
        decoded = model.decode(state)
    torch.testing.assert_close(state.deterministic, states.deterministic[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.features, states[:, -1].features, rtol=1e-5, atol=1e-5)
    assert decoded["obs"].shape == (B, 3, 16, 16) and decoded["reward"].shape == (B, 1)  # channels first out
    with pytest.raises(ShapeError, match="channels first"):
        model.encode(obs[:, 0].permute(0, 2, 3, 1))  # channels last in
    assert isinstance(model, face.DreamerV3WorldModel)


# ---------------------------------------------------------------- only worldloom errors escape

def _filled(shape, dtype, fill):
    with np.errstate(invalid="ignore", over="ignore"):
        return np.full(shape, fill).astype(dtype)


# Values that mean nothing to a model: indices out of range (5, -1), 0..255 pixels in a float, actions far
# outside the bounds (1e6), NaN and inf; and the ordinary ones, so valid inputs are drawn too.
ODD_VALUES = [0.0, 1.0, 0.5, -1.0, 5.0, -3.5, 255.0, 1e6, 1e30, np.nan, np.inf, -np.inf]
ODD_DTYPES = [np.float32, np.float64, np.int32, np.int64, np.uint8, np.uint16, np.bool_]


def odd_arrays():
    """Arrays of odd shapes, dtypes and values, and things that are not arrays at all."""
    shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)
    dtypes = st.sampled_from(ODD_DTYPES)
    arrays = st.builds(_filled, shapes, dtypes, st.sampled_from(ODD_VALUES))
    others = st.sampled_from([None, "x", 3, 2.5, True, [1, "a"], {"obs": 1}, object()])
    return st.one_of(arrays, others)


def _with_odd_value(shape, dtype, base, odd, where):
    values = np.full(shape, base, np.float64)
    if values.size:
        values.flat[where % values.size] = odd
    with np.errstate(invalid="ignore", over="ignore"):
        return values.astype(dtype)


def shaped_arrays(shape):
    """Arrays of the shape a call expects, with drawn dtypes and values (one odd value among ordinary ones),
    so the value checks, not the shape checks, are what answers."""
    odd = [value for value in ODD_VALUES if value != 1e30]  # finite, but beyond what a network's norms can square
    return st.builds(_with_odd_value, st.just(shape), st.sampled_from(ODD_DTYPES), st.sampled_from(ODD_VALUES[:4]),
                     st.sampled_from(odd), st.integers(0, 1000))


def finite(out) -> bool:
    """Whether an array or tensor output holds only finite values."""
    return bool(np.isfinite(np.asarray(out, np.float64)).all())


SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(obs=odd_arrays(), action=odd_arrays())
def test_observe_and_imagine_raise_only_worldloom_errors(model, obs, action):
    state = model.encode(np.zeros((B, OBS), np.float32))
    for call in (lambda: model.observe(state, action, obs), lambda: model.imagine(state, action),
                 lambda: model.imagine(obs, action), lambda: model.encode(obs), lambda: model.predict(state, action)):
        try:
            call()
        except WorldloomError:
            pass


@SETTINGS
@given(obs=odd_arrays(), actions=odd_arrays(), rewards=odd_arrays(), drop=st.sampled_from(["", "obs", "rewards"]))
def test_compute_loss_raises_only_worldloom_errors(model, obs, actions, rewards, drop):
    batch = {"obs": obs, "actions": actions, "rewards": rewards, "continues": np.ones((2, 3), np.float32)}
    batch.pop(drop, None)
    try:
        model.compute_loss(batch)
    except WorldloomError:
        pass


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(name=st.sampled_from(["dreamerv3:size1m", "tdmpc2:1m", "nope:1m", "", 3, None]),
       obs_shape=st.sampled_from([(4,), "4", (4.5,), (0,), (), None, 4, (True,), [4]]),
       action_dim=st.sampled_from([2, 2.5, True, 0, -1, "2", None]),
       extra=st.sampled_from([{}, {"deter": "big"}, {"totl_steps": 1}, {"seed": 1.5}, {"device": "quantum"}]))
def test_create_world_model_raises_only_worldloom_errors(name, obs_shape, action_dim, extra):
    overrides = dict(extra)
    if name and isinstance(name, str) and name.startswith("dreamerv3") and "deter" not in overrides:
        overrides.update(TINY["dreamerv3:size1m"])
    if name and isinstance(name, str) and name.startswith("tdmpc2"):
        overrides = {k: v for k, v in overrides.items() if k != "deter"}
        overrides.update(TINY["tdmpc2:1m"])
    try:
        create_world_model(name, obs_shape=obs_shape, action_dim=action_dim, **overrides)
    except WorldloomError:
        pass


# ---------------------------------------------------------------- odd values in well-shaped arrays


@pytest.fixture(scope="module", params=list(TINY))
def edge_models(request):
    """A discrete image model of each family, and its torch face (both share one set of programs)."""
    pytest.importorskip("torch")
    from worldloom_torch_compat.model import wrap

    shape = (16, 16, 3) if request.param.startswith("dreamerv3") else (64, 64, 3)  # TD-MPC2 encodes 64x64 frames
    extra = {"num_channels": 4} if request.param.startswith("tdmpc2") else {}
    handle = create_world_model(request.param, obs_shape=shape, action_dim=ACT, action_type="discrete",
                                **TINY[request.param], **extra).eval()
    return handle, wrap(handle)


def _calls(model, obs, actions, indices, to):
    """Each protocol call on one face with drawn inputs; ``to`` converts arrays for that face."""
    state = model.encode(to(np.zeros((B, *obs.shape[1:]), np.uint8)))
    loss_obs = np.stack([obs, obs], 1)
    batch = {"obs": to(loss_obs), "actions": to(np.stack([indices, indices], 1)),
             "rewards": to(np.zeros((B, 2), np.float32)), "continues": to(np.ones((B, 2), np.float32))}
    return [lambda: model.encode(to(obs)).features, lambda: model.observe(state, to(actions), to(obs)).features,
            lambda: model.observe(state, to(indices), to(obs)).features,
            lambda: model.imagine(state, to(actions[None])).rewards,
            lambda: model.imagine(state, to(indices[None])).rewards, lambda: model.compute_loss(batch)["loss"]]


@pytest.mark.slow(reason="compiles a discrete image model of each family (TD-MPC2 at 64x64) and runs both faces")
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), dtype=st.sampled_from(ODD_DTYPES), actions=shaped_arrays((B, ACT)),
       indices=shaped_arrays((B,)))
def test_odd_values_get_worldloom_errors_or_finite_results_on_both_faces(edge_models, data, dtype, actions, indices):
    import torch

    handle, torch_model = edge_models
    shape = (B, *handle.config.obs_shape)
    pixels = data.draw(st.sampled_from(["uint8 range", "unit floats", "odd"]))
    rng = np.random.default_rng(0)
    if pixels == "odd":
        obs = data.draw(shaped_arrays(shape))
    else:
        obs = rng.integers(0, 256, shape) if pixels == "uint8 range" else rng.uniform(0, 1, shape)
        obs = obs.astype(dtype)
    faces = [(handle, lambda x: x),
             (torch_model, lambda x: torch.from_numpy(np.ascontiguousarray(
                 np.moveaxis(x, -1, -3) if x.ndim >= 4 and x.shape[-1] == 3 else x)))]
    with torch.no_grad():
        for model, to in faces:
            for call in _calls(model, obs, actions, indices, to):
                try:
                    out = call()
                except WorldloomError:
                    continue
                assert finite(out)  # accepted input: no silent NaN


@pytest.fixture(scope="module")
def acting_agents():
    from worldloom.agents import DreamerAgent, TDMPC2Agent

    dreamer = create_world_model("dreamerv3:size1m", obs_shape=(OBS,), action_dim=ACT, action_type="discrete",
                                 **TINY["dreamerv3:size1m"])
    planner = create_world_model("tdmpc2:1m", obs_shape=(OBS,), action_dim=ACT, num_samples=16, num_elites=4,
                                 num_pi_trajs=2, iterations=1, **TINY["tdmpc2:1m"])
    return DreamerAgent(dreamer), TDMPC2Agent(planner)


@pytest.mark.slow(reason="compiles a Dreamer policy step and an MPPI plan for each observation dtype drawn")
@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(obs=shaped_arrays((B, OBS)), first=st.booleans())
def test_agents_act_raise_worldloom_errors_or_finite_actions(acting_agents, obs, first):
    for agent in acting_agents:
        agent.reset(B)
        try:
            actions = agent.act(obs, np.full(B, first))
        except WorldloomError:
            assert not np.isfinite(obs.astype(np.float64)).all()  # vector observations: refused only when not finite
            continue
        assert np.isfinite(actions).all() and actions.shape == (B, ACT)
