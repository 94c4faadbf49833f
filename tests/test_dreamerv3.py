"""DreamerV3: reference sizes, the scanned posterior, losses and imagination.

Its learning check (a phase pattern learned, its rewards imagined) is benchmarks/learning_checks.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldloom import ConfigError, ShapeError, create_world_model, get_model_info
from worldloom.models.dreamerv3 import losses
from worldloom.models.dreamerv3.config import PRESETS, DreamerV3Config
from worldloom.models.dreamerv3.losses import DreamerV3Functions

TINY = dict(deter=64, hidden=32, units=32, classes=4, stoch=4, depth=2)

# Reference world-model parameter counts for a 64x64x3 image and 18 discrete
# actions: the reference totals less a 3-layer policy and a 3-layer critic.
REFERENCE_COUNTS = {
    "dreamerv3:size1m": 688_004 - 116_817,
    "dreamerv3:size12m": 10_498_772 - 792_594 - 853_503,
    "dreamerv3:size50m": 41_659_284 - 6_437_649,
    "dreamerv3:size200m": 165_967_124 - 25_457_937,
}


@pytest.mark.parametrize("name,expected", sorted(REFERENCE_COUNTS.items()))
def test_parameter_counts_match_reference(name, expected):
    assert expected in (571_187, 8_852_675, 35_221_635, 140_509_187)
    count = get_model_info(name)["num_parameters"]
    assert abs(count - expected) / expected < 0.01, (count, expected)


def test_size12m_parts_match_reference_split():
    cfg = DreamerV3Config(**PRESETS["size12m"], obs_shape=(64, 64, 3), action_dim=18, action_type="discrete")
    shapes = jax.eval_shape(lambda: DreamerV3Functions(cfg).init(jax.random.PRNGKey(0)))
    parts = {k: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(v)) for k, v in shapes.items()}
    assert parts == {"rssm": 5_982_720, "decoder": 1_272_003, "reward": 721_407,
                     "continue": 656_129, "encoder": 220_416}


@pytest.mark.slow
def test_scanned_observe_equals_python_loop(rng):
    cfg = DreamerV3Config(**TINY, obs_shape=(5,), action_dim=3)
    fns = DreamerV3Functions(cfg)
    params = jax.jit(fns.init)(jax.random.PRNGKey(0))
    batch, length = 2, 6
    obs = jnp.asarray(rng.normal(size=(batch, length, 5)), jnp.float32)
    prev_actions = jnp.asarray(rng.uniform(-1, 1, size=(batch, length, 3)), jnp.float32)
    is_first = jnp.asarray([[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0]], bool)
    key = jax.random.PRNGKey(3)

    @jax.jit
    def scanned_and_looped(params):  # the scan, and one obs_step per step unrolled, from the same inputs
        tokens = fns.encode(params, obs)
        start = fns.initial(params, batch)
        scanned = fns.observe_scan(params, tokens, prev_actions, is_first, start, key)
        first = fns.first_deter(params, 3)
        carry, outs = (start.deterministic, start.stochastic), []
        keys = jax.random.split(key, length)
        for t in range(length):
            carry, out = fns.obs_step(params, carry, (tokens[:, t], prev_actions[:, t], is_first[:, t], keys[t]),
                                      first)
            outs.append(out)
        return scanned, first, [jnp.stack(x, 1) for x in zip(*outs)]

    (post, cont), first, (deter, stoch, logits, cont_loop) = scanned_and_looped(params)
    np.testing.assert_allclose(post.deterministic, deter, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(post.stochastic, stoch, atol=1e-6)
    np.testing.assert_allclose(post.posterior_logits, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cont, cont_loop, rtol=1e-5, atol=1e-5)
    # Every reset lands on the same deter, whatever came before.
    np.testing.assert_allclose(post.deterministic[0, 2], post.deterministic[1, 4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(post.deterministic[0, 2], first[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow(reason="the full loss gradient compiled twice per dtype")
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_loss_gradients_equal_those_of_the_plain_posterior_scan(monkeypatch, rng, dtype, tolerance):
    """The posterior scan's weight gradients, summed after the loop, equal the plain scan's sums in the loop.

    In bfloat16 the plain scan rounds each step's weight gradient to bfloat16; the hoisted sums do not.
    """
    cfg = DreamerV3Config(**TINY, obs_shape=(5,), action_dim=3, compute_dtype=dtype)
    fns = DreamerV3Functions(cfg)
    params = fns.init(jax.random.PRNGKey(0))
    batch = {"obs": jnp.asarray(rng.normal(size=(3, 6, 5)), jnp.float32),
             "actions": jnp.asarray(rng.uniform(-1, 1, size=(3, 6, 3)), jnp.float32),
             "rewards": jnp.asarray(rng.normal(size=(3, 6)), jnp.float32),
             "continues": jnp.ones((3, 6)), "is_first": jnp.zeros((3, 6), bool).at[1, 2].set(True)}
    grad = jax.jit(jax.grad(lambda p: fns.loss(p, batch, jax.random.PRNGKey(1))[0]))
    hoisted = grad(params)
    monkeypatch.setattr(losses, "scan_hoisted", functools.partial(losses.scan_hoisted, hoist=False))
    plain = jax.jit(jax.grad(lambda p: fns.loss(p, batch, jax.random.PRNGKey(1))[0]))(params)
    assert np.abs(plain["rssm"]["dyn_gru"]["kernel"]).max() > 0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=10 * tolerance, atol=tolerance * np.abs(b).max()),
                 hoisted, plain)


@pytest.mark.slow
def test_loss_terms_and_shapes(rng):
    model = create_world_model("dreamerv3:size1m", obs_shape=(3, 2), action_dim=2,
                               action_type="discrete", **TINY)
    batch = dict(obs=rng.normal(size=(2, 5, 3, 2)), actions=rng.integers(0, 2, size=(2, 5)),
                 rewards=rng.normal(size=(2, 5)), continues=np.ones((2, 5)))
    losses = model.compute_loss(batch)
    assert set(losses) >= {"loss", "loss/rec", "loss/rew", "loss/con", "loss/dyn", "loss/rep"}
    assert all(np.isfinite(float(v)) for v in losses.values())
    # Free bits: the KL terms never go below 1 nat.
    assert float(losses["loss/dyn"]) >= 1.0 and float(losses["loss/rep"]) >= 1.0
    # Zero-initialised reward head: exactly zero predictions at initialisation.
    state = model.encode(batch["obs"][:, 0])
    assert float(jnp.abs(model.decode(state)["reward"]).max()) == 0.0
    assert model.decode(state)["obs"].shape == (2, 3, 2)


@pytest.mark.slow
def test_image_observations_uint8_and_float(rng):
    model = create_world_model("dreamerv3:size1m", obs_shape=(16, 16, 3), action_dim=2, **TINY)
    images = rng.integers(0, 255, size=(2, 3, 16, 16, 3), dtype=np.uint8)
    batch = dict(obs=images, actions=rng.uniform(-1, 1, (2, 3, 2)), rewards=np.zeros((2, 3)),
                 continues=np.ones((2, 3)))
    as_uint8 = model.eval().compute_loss(batch)
    as_float = model.compute_loss(dict(batch, obs=images.astype(np.float32) / 255.0))
    np.testing.assert_allclose(float(as_uint8["loss/rec"]), float(as_float["loss/rec"]), rtol=1e-4)
    recon = model.decode(model.encode(images[:, 0]))["obs"]
    assert recon.shape == (2, 16, 16, 3) and float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0


@pytest.mark.slow
def test_bad_shapes_raise_clear_errors():
    model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, **TINY)
    with pytest.raises(ShapeError, match=r"obs: expected shape \[B, 4\], got \[3, 5\]"):
        model.encode(np.zeros((3, 5)))
    state = model.encode(np.zeros((3, 4)))
    with pytest.raises(ShapeError, match="actions: expected shape"):
        model.imagine(state, np.zeros((15, 3, 5)))
    with pytest.raises(ShapeError, match="batch lacks 'rewards'"):
        model.compute_loss(dict(obs=np.zeros((2, 3, 4)), actions=np.zeros((2, 3, 2))))


def test_eval_mode_is_deterministic(rng):
    model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, **TINY).eval()
    obs = rng.normal(size=(2, 4))
    a = model.imagine(model.encode(obs), np.zeros((5, 2, 2)))
    b = model.imagine(model.encode(obs), np.zeros((5, 2, 2)))
    np.testing.assert_array_equal(a.rewards, b.rewards)
    np.testing.assert_array_equal(a.states.features, b.states.features)


@pytest.mark.slow
def test_gru_core_is_the_reference_block_gru():
    """The group-major core equals the reference's formula: x broadcast to every block, concat, two block
    linears, gates split per block as (reset, cand, update)."""
    wm = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, **TINY)
    cfg = wm.config
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    deter = jax.random.normal(keys[0], (5, cfg.deter))
    stoch = jax.random.normal(keys[1], (5, cfg.stoch_size))
    action = 3 * jax.random.normal(keys[2], (5, 2))
    params = jax.jit(lambda params: jax.tree_util.tree_map(lambda p: p + 0.1 * jax.random.normal(keys[3], p.shape),
                                                           params))(wm.params["rssm"])

    def norm_act(p, x):
        x = x @ p["Dense_0"]["Dense_0"]["kernel"] + p["Dense_0"]["Dense_0"]["bias"]
        x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-4) * p["RMSNorm_0"]["scale"]
        return jax.nn.silu(x)

    def block(p, x, g):
        out = jnp.einsum("ngi,gio->ngo", x.reshape(x.shape[0], g, -1), p["kernel"])
        return out.reshape(x.shape[0], -1) + p["bias"]

    @jax.jit
    def reference(params):
        g = cfg.blocks
        a = action / jnp.maximum(1.0, jnp.abs(action))
        x = jnp.concatenate([norm_act(params[f"dyn_in_{i}"], v) for i, v in enumerate((deter, stoch, a))], -1)
        x = jnp.concatenate([deter.reshape(5, g, -1), jnp.broadcast_to(x[:, None], (5, g, x.shape[-1]))], -1)
        x = block(params["dyn_hidden"], x.reshape(5, -1), g)
        x = jax.nn.silu(x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-4)
                        * params["dyn_hidden_norm"]["scale"])
        x = block(params["dyn_gru"], x, g).reshape(5, g, 3, -1)
        reset, cand, update = (x[:, :, i].reshape(5, -1) for i in range(3))
        reset, update = jax.nn.sigmoid(reset), jax.nn.sigmoid(update - 1.0)
        return update * jnp.tanh(reset * cand) + (1.0 - update) * deter

    expected = reference(params)
    got = jax.jit(wm.functions.core)({**wm.params, "rssm": params}, deter, stoch, action)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_half_resolution_convs_equal_the_full_resolution_ones(kernel):
    """The encoder's conv + 2x2 max pool and the decoder's upsample + conv, computed at half resolution,
    give the reference's full-resolution values and gradients."""
    from worldloom.models.dreamerv3.networks import ConvPool, UpConv

    def full_conv(params, x):
        p = params["params"]["Conv_0"]
        return jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]

    def conv_then_pool(params, x):
        y = full_conv(params, x)
        n, h, w, c = y.shape
        return y.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))

    def upsample_then_conv(params, x):
        return full_conv(params, x.repeat(2, 1).repeat(2, 2))

    keys = jax.random.split(jax.random.PRNGKey(kernel), 3)
    x = jax.random.normal(keys[0], (2, 12, 8, 3))
    for module, reference, inputs in [(ConvPool(5, kernel), conv_then_pool, x),
                                      (UpConv(4, kernel), upsample_then_conv, x[:, ::2])]:

        @jax.jit
        def values_and_gradients(inputs, module=module, reference=reference):  # both, in one program
            params = module.init(keys[1], inputs)
            params = jax.tree_util.tree_map(lambda p: p + 0.1 * jax.random.normal(keys[2], p.shape), params)
            got, grad = jax.vjp(module.apply, params, inputs)
            expected, expected_grad = jax.vjp(reference, params, inputs)
            cotangent = jax.random.normal(keys[2], got.shape)
            return got, expected, grad(cotangent), expected_grad(cotangent)

        got, expected, grads, expected_grads = values_and_gradients(inputs)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        leaves = jax.tree_util.tree_leaves
        for g, e in zip(leaves(grads), leaves(expected_grads), strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.slow(reason="the image model's loss and gradients compiled with and without remat, f32 and bf16")
def test_image_remat_keeps_the_losses_and_gradients_and_bf16_stays_close(rng, monkeypatch):
    """``remat="cnn"`` (chunks of frames, recomputed in the backward pass) gives the losses and gradients of
    keeping every activation; bf16 convs stay within 2% of f32 on every loss term."""
    from worldloom.models.dreamerv3 import losses

    monkeypatch.setattr(losses, "REMAT_FRAMES", 6)  # chunks of 3 sequences x 2 steps: two chunks
    images = rng.integers(0, 255, size=(3, 4, 8, 8, 3), dtype=np.uint8)
    small = dict(TINY, cnn_mults=(4,), obs_shape=(8, 8, 3), action_dim=2)
    batch = dict(obs=images, actions=rng.uniform(-1, 1, (3, 4, 2)), rewards=rng.normal(size=(3, 4)),
                 continues=np.ones((3, 4)))
    key = jax.random.PRNGKey(0)
    results = {}
    for remat, dtype in (("none", "float32"), ("cnn", "float32"), ("cnn", "bfloat16")):
        wm = create_world_model("dreamerv3:size1m", remat=remat, compute_dtype=dtype, **small)
        grad, metrics = jax.jit(jax.grad(wm.functions.loss, has_aux=True))(wm.params, batch, key)
        results[remat, dtype] = grad, metrics
    (grad_full, full), (grad_remat, remat) = results["none", "float32"], results["cnn", "float32"]
    for name in full:
        np.testing.assert_allclose(remat[name], full[name], rtol=1e-5, err_msg=name)
    for a, b in zip(jax.tree_util.tree_leaves(grad_remat), jax.tree_util.tree_leaves(grad_full)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))  # summation order
    half = results["cnn", "bfloat16"][1]
    terms = [name for name in full if name == "loss" or name.startswith("loss/")]
    for name in terms:
        assert float(half[name]) == pytest.approx(float(full[name]), rel=0.02), name
    assert float(half["loss"]) != float(full["loss"])
    with pytest.raises(ConfigError, match="remat must be 'none' or 'cnn', got 'all'"):
        create_world_model("dreamerv3:size1m", remat="all", **small)
