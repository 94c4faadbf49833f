"""TD-MPC2: sizes against the reference, pinned math, alignment/masking, training, acting, save/load."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from worldloom import ConfigError, LatentState, OptimizerSettings, ShapeError, create_world_model, get_model_info
from worldloom.models.tdmpc2 import PRESETS, TDMPC2Config, heuristic_discount
from worldloom.models.tdmpc2.losses import live_mask, make_chunks, policy_loss, rho_weights
from worldloom.models.tdmpc2.networks import shift_augment
from worldloom.models.tdmpc2.planner import estimate_value
from worldloom.models.tdmpc2.scale import running_scale
from worldloom.models.tdmpc2.update import model_optimizer, policy_optimizer
from worldloom.nn import simnorm, tdmpc_twohot

# One small state model shared by most tests (jitted programs are cached per config).
TINY = dict(enc_dim=64, mlp_dim=64, latent_dim=32, episode_length=200)
OBS_DIM, ACTION_DIM = 3, 1  # Pendulum-v1


def tiny_model(**overrides):
    return create_world_model("tdmpc2:1m", obs_shape=(OBS_DIM,), action_dim=ACTION_DIM, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# ---------------------------------------------------------------- sizes

# DESIGN.md's presets: enc_dim / mlp_dim / latent_dim / num_enc_layers / num_q.
REFERENCE_SIZES = {
    "1m": (256, 384, 128, 2, 2),
    "5m": (256, 512, 512, 2, 5),
    "19m": (1024, 1024, 768, 3, 5),
    "48m": (1792, 1792, 768, 4, 5),
    "317m": (4096, 4096, 1376, 5, 8),
}


def reference_count(obs, action, enc, mlp, latent, enc_layers, num_q, bins=101):
    """Parameters of the reference architecture, from its layer sizes.

    ``NormedLinear(i, o)`` = Linear (``i*o + o``) + LayerNorm (``2*o``); every
    MLP ends in a Linear, or a SimNorm ``NormedLinear`` for latents.
    """
    normed = lambda i, o: i * o + 3 * o
    linear = lambda i, o: i * o + o

    def mlp_count(inputs, hidden, out, latent_out):
        dims = [inputs, *hidden]
        return sum(normed(a, b) for a, b in zip(dims[:-1], dims[1:])) + (normed if latent_out else linear)(
            hidden[-1], out)

    encoder = mlp_count(obs, [enc] * max(enc_layers - 1, 1), latent, True)
    dynamics = mlp_count(latent + action, [mlp, mlp], latent, True)
    reward = mlp_count(latent + action, [mlp, mlp], bins, False)
    policy = mlp_count(latent, [mlp, mlp], 2 * action, False)
    q = mlp_count(latent + action, [mlp, mlp], bins, False)
    return encoder + dynamics + reward + policy + num_q * q


def test_presets_are_the_reference_sizes():
    names = ("enc_dim", "mlp_dim", "latent_dim", "num_enc_layers", "num_q")
    assert {k: tuple(v[n] for n in names) for k, v in PRESETS.items()} == REFERENCE_SIZES


@pytest.mark.parametrize("preset", list(REFERENCE_SIZES))
def test_parameter_count_matches_the_reference_architecture(preset):
    info = get_model_info(f"tdmpc2:{preset}")  # reference space: 24-dim state, 6-dim action
    assert info["space"] == {"obs_shape": [24], "action_dim": 6}
    assert info["num_parameters"] == reference_count(24, 6, *REFERENCE_SIZES[preset])


def test_5m_has_the_published_parameter_count():
    assert reference_count(24, 6, *REFERENCE_SIZES["5m"]) == 4_960_618
    count = get_model_info("tdmpc2:5m")["num_parameters"]
    assert abs(count - 4_960_618) <= 0.01 * 4_960_618
    pinned = {"1m": 1_214_651, "5m": 4_960_618, "19m": 18_062_442, "48m": 47_208_298, "317m": 312_595_417}
    assert {p: reference_count(24, 6, *s) for p, s in REFERENCE_SIZES.items()} == pinned


def test_aliases_and_default_preset():
    for alias, preset in [("tdmpc", "5m"), ("tdmpc2", "5m"), ("tdmpc-small", "5m"), ("tdmpc-medium", "48m"),
                          ("tdmpc-large", "317m")]:
        assert get_model_info(alias)["name"] == f"tdmpc2:{preset}"


# ---------------------------------------------------------------- pinned math


def test_twohot_simnorm_discount_and_rho_pins():
    weights = np.asarray(tdmpc_twohot(jnp.array(1.0)))
    assert np.nonzero(weights)[0].tolist() == [53, 54]
    np.testing.assert_allclose(weights[[53, 54]], [0.534264, 0.465736], atol=1e-6)
    np.testing.assert_allclose(simnorm(jnp.zeros((2, 16))), 0.125)
    assert heuristic_discount(500) == pytest.approx(0.99)
    assert heuristic_discount(100) == pytest.approx(0.95)
    assert heuristic_discount(1000) == pytest.approx(0.995)
    assert TDMPC2Config().gamma == pytest.approx(0.99)
    assert TDMPC2Config(discount=0.9).gamma == 0.9
    np.testing.assert_allclose(rho_weights(0.5, 4), [1.0, 0.5, 0.25, 0.125])
    assert TDMPC2Config(action_dim=6).mppi_iterations == 6
    assert TDMPC2Config(action_dim=21).mppi_iterations == 8


def test_running_scale_tracks_the_trimmed_spread():
    scale = running_scale(tau=0.01)
    state = scale.update(scale.init(), jnp.arange(100.0))
    assert float(state.value) == pytest.approx(1.0 + 0.01 * (94.05 - 4.95 - 1.0))
    assert float(scale.update(scale.init(), jnp.zeros(10)).value) == 1.0  # spread below 1 counts as 1


@pytest.mark.slow
def test_reward_and_q_predict_zero_at_initialisation(model):
    fns, params = model.functions, model.params
    z = model.encode(np.random.default_rng(0).normal(size=(5, OBS_DIM))).features
    action = jnp.linspace(-1, 1, 5)[:, None]
    assert not np.any(np.asarray(jax.jit(fns.reward_logits)(params, z, action)))
    assert not np.any(np.asarray(jax.jit(fns.q_logits)(params, z, action)))
    heads = model.decode(LatentState(z), action)
    np.testing.assert_allclose(heads["reward"], 0.0, atol=1e-5)
    np.testing.assert_allclose(heads["q"], 0.0, atol=1e-5)
    np.testing.assert_array_equal(heads["continue"], 1.0)
    assert "obs" not in heads


def test_q_ensemble_is_stacked_and_members_differ(model):
    qs = model.params["Qs"]["ensemble"]["mlp"]
    kernel = qs["hidden_0"]["linear"]["kernel"]
    assert kernel.shape == (2, 32 + ACTION_DIM, 64)
    assert not np.allclose(kernel[0], kernel[1])
    # With non-zero output weights, dropout (train) changes the logits and heads get their own masks.
    params = jax.tree_util.tree_map(lambda x: x, model.params)
    out = params["Qs"]["ensemble"]["mlp"]["out"]
    out["kernel"] = jax.random.normal(jax.random.PRNGKey(0), out["kernel"].shape)
    z, a = jnp.full((4, 32), 1 / 8), jnp.zeros((4, 1))
    fns = model.functions
    q_logits = jax.jit(lambda p, k: (fns.q_logits(p, z, a), fns.q_logits(p, z, a, dropout_key=k)))
    eval_logits, train_logits = q_logits(params, jax.random.PRNGKey(1))
    assert eval_logits.shape == (2, 4, 101)
    assert not np.allclose(eval_logits, train_logits)
    # Members with equal params agree without dropout and differ with it: each draws its own mask.
    same = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x[:1], x.shape), params["Qs"])
    eval_logits, train_logits = q_logits({**params, "Qs": same}, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(eval_logits[0], eval_logits[1])
    assert not np.allclose(train_logits[0], train_logits[1])


@pytest.mark.slow(reason="two full TD-MPC2 losses and their gradients compiled")
def test_two_q_heads_alone_give_the_ensembles_values_and_gradients():
    """``q_two`` evaluates only the two heads it picks; values and gradients are those of every head's.

    Also with dropout on (the policy loss in training): each chosen head draws
    the mask it draws among all five.
    """
    model = tiny_model(num_q=5, dropout=0.3)
    fns = model.functions
    params = jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(2), x.shape),
                                    model.params)
    z = jax.random.normal(jax.random.PRNGKey(3), (6, 32))
    a = jnp.tanh(jax.random.normal(jax.random.PRNGKey(4), (6, ACTION_DIM)))

    def two_heads(p, a, key, reduce, dropout_key):
        return fns.q_two(p, z, a, key, reduce, dropout_key=dropout_key).sum()

    def every_head(p, a, key, reduce, dropout_key):
        values = fns.q_all(p, z, a, dropout_key=dropout_key)[jax.random.permutation(key, 5)[:2]]
        return (jnp.min(values, 0) if reduce == "min" else jnp.mean(values, 0)).sum()

    def both_reductions(fn):  # one program for "min" and "avg"
        grad_fn = jax.value_and_grad(fn, (0, 1))
        return jax.jit(lambda p, a, key, dropout_key: [grad_fn(p, a, key, r, dropout_key) for r in ("min", "avg")])

    two_heads, every_head = both_reductions(two_heads), both_reductions(every_head)
    dropped = []
    for dropout_key in (None, jax.random.PRNGKey(7)):
        for seed in range(3):
            key = jax.random.PRNGKey(seed)
            for (got, grads), (expected, expected_grads) in zip(two_heads(params, a, key, dropout_key),
                                                                 every_head(params, a, key, dropout_key)):
                np.testing.assert_allclose(got, expected, rtol=1e-6)
                for g, e in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected_grads)):
                    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
                dropped.append(got)
    # Dropout changed the values (so the masks above were not all ones).
    assert not np.allclose(dropped[:6], dropped[6:])


# ---------------------------------------------------------------- rollouts


@pytest.mark.slow
def test_latent_rollout_scan_matches_python_loop(model):
    fns, params = model.functions, model.params
    rng = np.random.default_rng(1)
    z = model.encode(rng.normal(size=(4, OBS_DIM))).features
    actions = jnp.asarray(rng.uniform(-1, 1, (3, 4, ACTION_DIM)), jnp.float32)
    scanned = jax.jit(fns.rollout)(params, z, actions)

    @jax.jit
    def python_loop(params, z, actions):
        latents, rewards = [z], []
        for t in range(actions.shape[0]):
            rewards.append(fns.reward(params, latents[-1], actions[t]))
            latents.append(fns.next(params, latents[-1], actions[t]))
        return jnp.stack(latents), jnp.stack(rewards)

    looped, rewards = python_loop(params, z, actions)
    np.testing.assert_allclose(scanned, looped, rtol=1e-5, atol=1e-6)
    traj = model.imagine(LatentState(z), actions)
    np.testing.assert_allclose(traj.features, looped[1:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(traj.rewards, rewards, rtol=1e-5, atol=1e-6)
    assert traj.continues.shape == (3, 4)


@pytest.mark.slow
def test_planning_value_scan_matches_python_loop(model):
    fns, params = model.functions, model.params
    rng = np.random.default_rng(2)
    z = model.encode(rng.normal(size=(6, OBS_DIM))).features
    actions = jnp.asarray(rng.uniform(-1, 1, (3, 6, ACTION_DIM)), jnp.float32)
    key = jax.random.PRNGKey(3)

    @jax.jit
    def python_loop(params, z, actions, key):
        pi_key, head_key = jax.random.split(key)
        ret, discount, latent = 0.0, 1.0, z
        for t in range(actions.shape[0]):
            ret = ret + discount * fns.reward(params, latent, actions[t])
            latent = fns.next(params, latent, actions[t])
            discount *= model.config.gamma
        final, _ = fns.pi(params, latent, pi_key)
        return ret + discount * fns.q_two(params, latent, final, head_key, "avg")

    scanned = jax.jit(lambda *args: estimate_value(fns, *args))(params, z, actions, key)
    np.testing.assert_allclose(scanned, python_loop(params, z, actions, key), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- alignment and masking


@pytest.mark.slow
def test_windows_are_cut_into_horizon_chunks():
    batch_size, length = 2, 5
    rows = np.broadcast_to(np.arange(length, dtype=np.float32), (batch_size, length))
    batch = {"obs": jnp.asarray(rows[..., None] + 10 * np.arange(batch_size)[:, None, None]),
             "actions": jnp.asarray(rows[..., None]), "rewards": jnp.asarray(rows),
             "continues": jnp.ones((batch_size, length)),
             "is_first": jnp.zeros((batch_size, length), bool).at[1, 4].set(True)}
    chunks = make_chunks(batch, horizon=3)
    # rows 0..3 and 3..6 (rows 5, 6 padded) for each of the 2 windows: N = 4, window-major.
    assert chunks.obs.shape == (4, 4, 1) and chunks.actions.shape == (3, 4, 1)
    np.testing.assert_array_equal(chunks.obs[:, :, 0].T, [[0, 1, 2, 3], [3, 4, 0, 0], [10, 11, 12, 13],
                                                         [13, 14, 0, 0]])
    np.testing.assert_array_equal(chunks.rewards.T, [[0, 1, 2], [3, 4, 0], [0, 1, 2], [3, 4, 0]])
    np.testing.assert_array_equal(chunks.next_valid.T, [[1, 1, 1], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(live_mask(chunks.next_valid).T, [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1],
                                                                   [1, 0, 0, 0]])


def test_terminal_transitions_stop_the_rollout():
    batch = {"obs": jnp.zeros((1, 4, 1)), "actions": jnp.zeros((1, 4, 1)), "rewards": jnp.zeros((1, 4)),
             "continues": jnp.array([[1.0, 0.0, 1.0, 1.0]])}
    chunks = make_chunks(batch, horizon=3)
    np.testing.assert_array_equal(chunks.terminals[:, 0], [0, 1, 0])
    np.testing.assert_array_equal(chunks.next_valid[:, 0], [1, 0, 1])
    np.testing.assert_array_equal(live_mask(chunks.next_valid)[:, 0], [1, 1, 0, 0])


def _window_batch(rng, batch_size=16, length=4):
    return {"obs": rng.normal(size=(batch_size, length, OBS_DIM)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (batch_size, length, ACTION_DIM)).astype(np.float32),
            "rewards": rng.uniform(-2, 0, (batch_size, length)).astype(np.float32),
            "continues": np.ones((batch_size, length), np.float32),
            "is_first": np.zeros((batch_size, length), bool)}


def _losses(model, batch, params=None):
    """Every loss term in evaluation mode (no dropout), with a fixed key."""
    params = model.params if params is None else params
    out = model.programs.loss(params, model.prepare_batch(batch), jax.random.PRNGKey(0), train=False)
    return {k: float(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def trained_heads(model):
    """The tiny model's params with random reward/Q output weights (zero at init), so rewards matter."""
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    reward = dict(model.params["reward"])
    reward["out"] = {**reward["out"], "kernel": 0.1 * jax.random.normal(keys[0], reward["out"]["kernel"].shape)}
    q_mlp = dict(model.params["Qs"]["ensemble"]["mlp"])
    q_mlp["out"] = {**q_mlp["out"], "kernel": 0.1 * jax.random.normal(keys[1], q_mlp["out"]["kernel"].shape)}
    return {**model.params, "reward": reward, "Qs": {"ensemble": {"mlp": q_mlp}}}


@pytest.mark.slow
def test_initial_loss_has_the_reference_reduction(model):
    losses = _losses(model, _window_batch(np.random.default_rng(0)))
    # Zero logits cost ln(101) per entry; steps weighted 1, 0.5, 0.25 and divided by the horizon.
    expected = np.log(101) * (1 + 0.5 + 0.25) / 3
    assert losses["loss/reward"] == pytest.approx(expected, rel=1e-5)
    assert losses["loss/value"] == pytest.approx(expected, rel=1e-5)
    for name in ("loss", "loss/consistency", "loss/reward", "loss/value", "loss/policy"):
        assert np.isfinite(losses[name])
    assert losses["loss"] == pytest.approx(20 * losses["loss/consistency"] + 0.1 * expected * 2, rel=1e-5)


@pytest.mark.slow
def test_new_episode_masks_the_rest_of_the_chunk(model, trained_heads):
    rng = np.random.default_rng(1)
    batch = _window_batch(rng)
    batch["is_first"][:, 2] = True  # rows 2, 3 belong to the next episode
    base = _losses(model, batch, trained_heads)
    changed = {k: v.copy() for k, v in batch.items()}
    changed["obs"][:, 2:] += 5.0
    changed["actions"][:, 2:] *= -1
    changed["rewards"][:, 2:] -= 3.0
    assert _losses(model, changed, trained_heads) == base
    # Transition 1's next observation is not in the data, but its reward is still trained ...
    reward_changed = {k: v.copy() for k, v in batch.items()}
    reward_changed["rewards"][:, 1] -= 3.0
    after = _losses(model, reward_changed, trained_heads)
    assert after["loss/reward"] != base["loss/reward"]
    # ... while its value (no bootstrap) and consistency are not.
    assert after["loss/value"] == base["loss/value"]
    assert after["loss/consistency"] == base["loss/consistency"]


def test_terminal_transition_trains_reward_and_value_not_consistency(model, trained_heads):
    rng = np.random.default_rng(2)
    batch = _window_batch(rng)
    batch["continues"][:, 1] = 0.0  # transition 1 ends the episode
    batch["is_first"][:, 2] = True
    base = _losses(model, batch, trained_heads)
    changed = {k: v.copy() for k, v in batch.items()}
    changed["rewards"][:, 1] -= 3.0
    after = _losses(model, changed, trained_heads)
    assert after["loss/reward"] != base["loss/reward"]
    assert after["loss/value"] != base["loss/value"]  # target = reward (no bootstrap)
    next_obs = {k: v.copy() for k, v in batch.items()}
    next_obs["obs"][:, 2] += 5.0
    assert _losses(model, next_obs, trained_heads)["loss/consistency"] == base["loss/consistency"]


# ---------------------------------------------------------------- training on Pendulum


@pytest.fixture(scope="module")
def pendulum_episodes():
    """Four 200-step Pendulum-v1 episodes under random actions (actions scaled to [-1, 1])."""
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    episodes = []
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        rows = {"obs": [], "actions": [], "rewards": []}
        done = False
        while not done:
            action = rng.uniform(-1, 1, (ACTION_DIM,)).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(2.0 * action)
            rows["obs"].append(obs)
            rows["actions"].append(action)
            rows["rewards"].append(reward)
            obs, done = next_obs, terminated or truncated
        episodes.append({k: np.asarray(v, np.float32) for k, v in rows.items()})
    env.close()
    return {k: np.stack([e[k] for e in episodes]) for k in episodes[0]}


def sample_windows(data, rng, batch_size, length):
    episode = rng.integers(0, data["obs"].shape[0], batch_size)[:, None]
    start = rng.integers(0, data["obs"].shape[1] - length + 1, batch_size)[:, None]
    rows = start + np.arange(length)
    return {"obs": data["obs"][episode, rows], "actions": data["actions"][episode, rows],
            "rewards": data["rewards"][episode, rows], "continues": np.ones((batch_size, length), np.float32),
            "is_first": np.zeros((batch_size, length), bool)}


@pytest.mark.slow
def test_training_on_pendulum_lowers_the_model_losses(pendulum_episodes, model):
    """Consistency, reward, value and their total fall within 100 updates.

    The policy loss ``-(Q/S + ...)`` rises here by design: the critic learns
    Pendulum's negative returns. The policy update is checked against a fixed
    critic in :func:`test_policy_update_climbs_a_fixed_critic`.
    """
    update = model.make_update(OptimizerSettings(learning_rate=3e-4, grad_clip=20.0))
    state = update.init(model.params)
    assert "target_q" in state and set(state["params"]) == set(model.params)  # targets live outside params
    rng = np.random.default_rng(0)
    batch = model.prepare_batch(sample_windows(pendulum_episodes, rng, 32, 4))
    # Backend optimisations off: this test is about learning, and the program compiles twice as fast.
    step = jax.jit(update.step).lower(state, batch, jax.random.PRNGKey(0)).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    history = []
    for i in range(100):
        batch = model.prepare_batch(sample_windows(pendulum_episodes, rng, 32, 4))
        state, metrics = step(state, batch, jax.random.PRNGKey(i))
        history.append({k: float(v) for k, v in metrics.items()})
    for name in ("loss", "loss/consistency", "loss/reward", "loss/value"):
        first = np.mean([h[name] for h in history[:10]])
        last = np.mean([h[name] for h in history[-10:]])
        assert np.isfinite(last) and last < 0.8 * first, (name, first, last)

    # Target Q networks follow the online ones by Polyak averaging with tau.
    batch = model.prepare_batch(sample_windows(pendulum_episodes, rng, 32, 4))
    new_state, _ = step(state, batch, jax.random.PRNGKey(1000))
    tau = model.config.tau
    expected = jax.tree_util.tree_map(lambda t, q: t + tau * (q - t), state["target_q"], new_state["params"]["Qs"])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           new_state["target_q"], expected)


@pytest.mark.slow
def test_policy_update_climbs_a_fixed_critic(model, trained_heads):
    fns, scale = model.functions, running_scale(0.01)
    zs = model.encode(np.random.default_rng(8).normal(size=(64, OBS_DIM))).features.reshape(4, 16, 32)
    live = jnp.ones((4, 16))
    tx = policy_optimizer(OptimizerSettings(learning_rate=1e-3, grad_clip=20.0), eps=1e-5)

    def loss(pi, key):
        params = {**trained_heads, "pi": pi}
        return policy_loss(fns, scale, params, scale.init(), zs, live, None, key, train=False)[0]

    @jax.jit
    def train(pi, key):
        def body(carry, step_key):
            pi, opt_state = carry
            updates, opt_state = tx.update(jax.grad(loss)(pi, step_key), opt_state, pi)
            return (optax.apply_updates(pi, updates), opt_state), None

        (pi, _), _ = jax.lax.scan(body, (pi, tx.init(pi)), jax.random.split(key, 50))
        return pi

    trained_pi = train(trained_heads["pi"], jax.random.PRNGKey(0))
    evaluate = jax.jit(loss)
    before = float(evaluate(trained_heads["pi"], jax.random.PRNGKey(1)))
    after = float(evaluate(trained_pi, jax.random.PRNGKey(1)))
    assert after < before - 0.05, (before, after)


def test_encoder_learns_at_a_scaled_rate(model):
    params = {k: v for k, v in model.params.items() if k != "pi"}
    tx = model_optimizer(OptimizerSettings(learning_rate=1e-3, grad_clip=0.0), enc_lr_scale=0.3)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    encoder = jax.tree_util.tree_leaves(updates["encoder"])[0]
    dynamics = jax.tree_util.tree_leaves(updates["dynamics"])[0]
    np.testing.assert_allclose(np.unique(np.asarray(encoder)), [-0.3e-3], rtol=1e-4)
    np.testing.assert_allclose(np.unique(np.asarray(dynamics)), [-1e-3], rtol=1e-4)


# ---------------------------------------------------------------- acting


@pytest.mark.slow
def test_act_plans_with_warm_start_and_policy(model):
    obs = np.array([1.0, 0.0, 0.0], np.float32)
    action = model.act(obs, t0=True)
    assert action.shape == (ACTION_DIM,) and np.all(np.abs(np.asarray(action)) <= 1.0)
    plan = model.plan_mean
    assert plan.shape == (1, 3, ACTION_DIM)
    compiled = model.programs.act._cache_size()
    model.act(obs)  # warm-started from the kept plan
    assert not np.array_equal(model.plan_mean, plan)
    assert model.programs.act._cache_size() == compiled, "a warm-started plan must reuse the compiled program"
    model.act(obs, eval_mode=True)  # an evaluation's plan (no exploration noise) runs the same program
    assert model.programs.act._cache_size() == compiled, "evaluation must plan with the acting program"
    model.reset_plan()
    assert model.plan_mean is None
    policy_action = model.act(obs, eval_mode=True, use_policy=True)
    assert policy_action.shape == (ACTION_DIM,) and np.all(np.abs(np.asarray(policy_action)) <= 1.0)
    with pytest.raises(ShapeError, match="prev_plan"):
        model.act(obs, prev_plan=np.zeros((2, 3, ACTION_DIM)))
    key = jax.random.PRNGKey(7)
    seeded = [np.asarray(model.act(obs, t0=True, key=key)) for _ in range(2)]
    np.testing.assert_array_equal(seeded[0], seeded[1])
    greedy = [np.asarray(model.act(obs, t0=True, key=key, eval_mode=True)) for _ in range(2)]
    np.testing.assert_array_equal(greedy[0], greedy[1])
    assert not np.array_equal(greedy[0], seeded[0])  # the same plan and elite, without the noise


# ---------------------------------------------------------------- variants


@pytest.fixture(scope="module")
def variant():
    """One small model with every option on: termination head, 3 tasks, 2 discrete actions."""
    return create_world_model("tdmpc2:1m", obs_shape=(OBS_DIM,), action_dim=2, episodic=True, num_tasks=3,
                              task_dim=4, action_type="discrete", enc_dim=32, mlp_dim=32, latent_dim=16)


@pytest.mark.slow
def test_episodic_multitask_discrete_model_trains(variant):
    assert variant.params["task_emb"]["embedding"].shape == (3, 4) and "termination" in variant.params
    batch = _window_batch(np.random.default_rng(3), batch_size=4)
    batch["actions"] = np.array([[0, 1, 1, 0]] * 4)
    batch["continues"][:, 2] = 0.0
    batch["task"] = np.array([0, 1, 2, 1])
    prepared = variant.prepare_batch(batch)
    np.testing.assert_array_equal(prepared["actions"][0], [[1, 0], [0, 1], [0, 1], [1, 0]])  # one-hot
    losses = variant.compute_loss(batch)
    assert {"loss/termination", "loss/consistency", "loss/reward", "loss/value", "loss/policy"} <= set(losses)
    assert all(np.isfinite(float(v)) for v in losses.values())
    with pytest.raises(ShapeError, match="task ids"):
        variant.prepare_batch({k: v for k, v in batch.items() if k != "task"})


@pytest.mark.slow
def test_episodic_multitask_heads(variant):
    obs = np.ones((2, OBS_DIM), np.float32)
    state = variant.encode(obs, task=[0, 0])
    assert not np.allclose(state.features, variant.encode(obs, task=[1, 2]).features)
    continues = np.asarray(variant.decode(state, task=[0, 0])["continue"])
    assert np.all((continues > 0) & (continues < 1))
    with pytest.raises(ShapeError, match="task ids"):
        variant.encode(obs)
    with pytest.raises(ShapeError, match=r"\[0, 3\)"):
        variant.encode(obs, task=[0, 3])


@pytest.mark.slow
def test_pixel_encoder_and_shift_augmentation():
    config = dict(obs_shape=(64, 64, 3), num_channels=8, latent_dim=128, mlp_dim=32)
    pixels = create_world_model("tdmpc2:1m", action_dim=2, **config)
    assert set(pixels.params["encoder"]) == {"conv_0", "conv_1", "conv_2", "conv_3"}  # 4x4x8 = latent, no projection
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    z = pixels.encode(images).features
    assert z.shape == (2, 128)
    np.testing.assert_allclose(np.asarray(z).reshape(2, 16, 8).sum(-1), 1.0, rtol=1e-5)

    shifted = np.asarray(shift_augment(jax.random.PRNGKey(0), jnp.asarray(images[:1].repeat(8, 0)), pad=3))
    padded = np.pad(images[0], ((3, 3), (3, 3), (0, 0)), mode="edge")
    offsets = set()
    for image in shifted:
        matches = [(i, j) for i in range(7) for j in range(7) if np.array_equal(padded[i:i + 64, j:j + 64], image)]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1
    with pytest.raises(ConfigError, match="64x64"):
        TDMPC2Config(obs_shape=(32, 32, 3))


# ---------------------------------------------------------------- save/load and errors


def test_save_load_round_trip_is_bit_exact(tmp_path, model):
    trained = {**model.params, "reward": jax.tree_util.tree_map(lambda x: x + 0.125, model.params["reward"])}
    source = tiny_model().load_params(trained)
    source.save_pretrained(tmp_path / "tdmpc2")
    loaded = create_world_model(str(tmp_path / "tdmpc2"))
    assert type(loaded).__name__ == "TDMPC2WorldModel" and loaded.config == source.config
    assert loaded.preset == "1m"
    flat_a, tree_a = jax.tree_util.tree_flatten(source.params)
    flat_b, tree_b = jax.tree_util.tree_flatten(loaded.params)
    assert tree_a == tree_b
    for a, b in zip(flat_a, flat_b):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    obs = np.random.default_rng(5).normal(size=(3, OBS_DIM))
    np.testing.assert_array_equal(source.encode(obs).features, loaded.encode(obs).features)


def test_bad_shapes_raise_shape_errors(model):
    with pytest.raises(ShapeError, match=r"expected shape \[B, 3\], got \[2, 4\]"):
        model.encode(np.zeros((2, 4)))
    with pytest.raises(ShapeError, match=r"action: expected shape \[B=2, 1\], got \[2, 3\]"):
        model.predict(model.encode(np.zeros((2, OBS_DIM))), np.zeros((2, 3)))
    with pytest.raises(ShapeError, match=r"actions: expected shape \[H=5, B=2, 1\]"):
        model.imagine(model.encode(np.zeros((2, OBS_DIM))), np.zeros((5, 3, 1)))
    batch = _window_batch(np.random.default_rng(6), batch_size=2)
    with pytest.raises(ShapeError, match=r"rewards: expected shape \[2, 4\], got \[2, 3\]"):
        model.prepare_batch({**batch, "rewards": batch["rewards"][:, :3]})
    with pytest.raises(ShapeError, match="T >= 2"):
        model.prepare_batch({k: v[:, :1] for k, v in batch.items()})
    with pytest.raises(ShapeError, match="lacks 'continues'"):
        model.prepare_batch({k: v for k, v in batch.items() if k != "continues"})
    with pytest.raises(ShapeError, match="state: expected a LatentState .* got ndarray"):
        model.decode(np.zeros((2, 7)))
    with pytest.raises(ShapeError, match=r"expected a TD-MPC2 state with deterministic \[\.\.\., \d+\]"):
        model.decode(LatentState(np.zeros((2, 7), np.float32)))
    with pytest.raises(ConfigError, match="num_q"):
        tiny_model(num_q=1)
