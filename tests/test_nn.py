"""The numbers DESIGN.md pins, and the layers' defining properties."""

import functools
import os

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldloom import nn as wnn
from worldloom.nn.optim import clip_by_agc, laprop_agc


def test_symlog_symexp():
    assert float(wnn.symlog(10.0)) == pytest.approx(2.3978953, rel=1e-6)
    assert float(wnn.symexp(2.0)) == pytest.approx(6.3890562, rel=1e-6)
    x = jnp.array([-1e3, -2.5, 0.0, 0.3, 7.0, 1e4])
    np.testing.assert_allclose(wnn.symexp(wnn.symlog(x)), x, rtol=1e-5)


def test_dreamer_bins():
    bins = wnn.dreamer_bins()
    assert bins.shape == (255,)
    assert float(bins[127]) == 0.0
    assert float(bins[128]) == pytest.approx(0.17055778, rel=1e-5)
    assert float(bins[254]) == pytest.approx(4.851652e8, rel=1e-6)
    np.testing.assert_array_equal(bins, -bins[::-1])


def test_dreamer_twohot_of_one():
    weights = np.asarray(wnn.twohot(jnp.array(1.0), wnn.dreamer_bins()))
    assert set(np.nonzero(weights)[0]) == {131, 132}
    assert weights[131] == pytest.approx(0.6173297, rel=1e-5)
    assert weights[132] == pytest.approx(0.3826703, rel=1e-5)
    assert weights.sum() == pytest.approx(1.0)


def test_twohot_decodes_back():
    bins = wnn.dreamer_bins()
    values = jnp.array([-123.4, -1.0, 0.0, 0.5, 1.0, 42.0])
    encoded = wnn.twohot(values, bins)
    np.testing.assert_allclose(encoded @ bins, values, rtol=1e-4, atol=1e-6)


def test_zero_logits_predict_zero_and_cost_log255():
    bins = wnn.dreamer_bins()
    assert float(wnn.twohot_mean(jnp.zeros(255), bins)) == 0.0
    assert float(wnn.twohot_loss(jnp.zeros(255), jnp.array(0.0), bins)) == pytest.approx(5.5412636, rel=1e-6)


def test_unimix():
    probs = wnn.unimix_probs(jnp.array([2.0, 0.0, -1.0, 0.5]))
    np.testing.assert_allclose(probs, [0.7054989, 0.0976406, 0.0375003, 0.1593603], rtol=1e-5)


def test_straight_through_sample_is_one_hot_with_gradient():
    probs = wnn.unimix_probs(jnp.array([[1.0, 2.0, 0.5]]))
    sample = wnn.straight_through_sample(jax.random.PRNGKey(0), probs)
    np.testing.assert_allclose(jnp.sum(jnp.round(sample), -1), 1.0)
    grad = jax.grad(lambda p: (wnn.straight_through_sample(jax.random.PRNGKey(0), p) * jnp.arange(3.0)).sum())(probs)
    np.testing.assert_allclose(grad, [[0.0, 1.0, 2.0]])


def test_straight_through_samples_follow_the_probabilities():
    """Frequencies of 200k draws (one key per example) match ``probs``, each class within 5 standard errors."""
    from worldloom.nn.functional import example_keys

    probs = jnp.stack([wnn.unimix_probs(jax.random.normal(jax.random.PRNGKey(1), (16,)) * 3),
                       jnp.full((16,), 1 / 16), jax.nn.one_hot(15, 16) * 0.99 + 0.01 / 16])
    draws = 200_000
    samples = jax.jit(wnn.straight_through_sample)(example_keys(jax.random.PRNGKey(0), draws),
                                                   jnp.broadcast_to(probs, (draws, *probs.shape)))
    np.testing.assert_array_equal(np.asarray(samples).sum(-1).round(5), 1.0)
    freq = np.asarray(jnp.round(samples).mean(0))
    p = np.asarray(probs)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / draws) + 1e-6), (freq, p)


def test_lambda_return_numbers():
    returns = wnn.lambda_return(jnp.array([0.0, 1, 1, 1]), jnp.full(4, 0.5), jnp.ones(4), 0.95)
    np.testing.assert_allclose(returns, [3.3525, 2.45, 1.5], rtol=1e-6)


def test_lambda_return_scan_matches_loop(rng):
    rewards, values = rng.normal(size=(2, 9, 3)).astype(np.float32)
    continues = (rng.random((9, 3)) > 0.2).astype(np.float32) * 0.99
    lam = 0.9
    expected = [values[-1]]
    for t in reversed(range(8)):
        expected.append(rewards[t + 1] + continues[t + 1] * ((1 - lam) * values[t + 1] + lam * expected[-1]))
    expected = np.stack(expected[::-1][:-1])
    np.testing.assert_allclose(wnn.lambda_return(rewards, values, continues, lam), expected, rtol=1e-5)


def test_tdmpc_twohot_of_one():
    weights = np.asarray(wnn.tdmpc_twohot(jnp.array(1.0)))
    assert set(np.nonzero(weights)[0]) == {53, 54}
    assert weights[53] == pytest.approx(0.534264, rel=1e-5)
    assert weights[54] == pytest.approx(0.465736, rel=1e-5)


def test_tdmpc_twohot_round_trip():
    values = jnp.array([-50.0, -1.0, 0.0, 2.0, 300.0])
    weights = wnn.tdmpc_twohot(values)
    decoded = wnn.symexp(weights @ wnn.tdmpc_bins())
    np.testing.assert_allclose(decoded, values, rtol=1e-4, atol=1e-5)
    assert float(wnn.tdmpc_twohot_mean(jnp.zeros(101))) == pytest.approx(0.0, abs=1e-6)


def test_simnorm():
    np.testing.assert_allclose(wnn.simnorm(jnp.zeros(16)), 0.125)
    out = wnn.simnorm(jax.random.normal(jax.random.PRNGKey(0), (3, 32)))
    np.testing.assert_allclose(out.reshape(3, 4, 8).sum(-1), 1.0, rtol=1e-6)


def test_rmsnorm():
    x = jnp.array([[3.0, -4.0]])
    out = wnn.RMSNorm().apply({"params": {"scale": jnp.ones(2)}}, x)
    np.testing.assert_allclose(out, x / np.sqrt(12.5 + 1e-4), rtol=1e-6)


def test_block_linear_equals_block_diagonal_dense():
    layer = wnn.BlockLinear(features=12, blocks=3)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 6))
    params = layer.init(jax.random.PRNGKey(0), x)["params"]
    kernel = np.asarray(params["kernel"])
    assert kernel.shape == (3, 2, 4)
    dense = np.zeros((6, 12), np.float32)
    for g in range(3):
        dense[2 * g:2 * g + 2, 4 * g:4 * g + 4] = kernel[g]
    np.testing.assert_allclose(layer.apply({"params": params}, x), np.asarray(x) @ dense, rtol=1e-5, atol=1e-6)


def test_block_linear_shared_input_and_grouped_layout_equal_the_broadcast_concat():
    """DreamerV3's GRU input: each block sees its slice and all of ``shared`` (the reference concatenates)."""
    layer = wnn.BlockLinear(features=12, blocks=3)
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    x, shared = jax.random.normal(keys[0], (5, 6)), jax.random.normal(keys[1], (5, 4))
    params = layer.init(keys[2], x, shared=shared)["params"]
    assert params["kernel"].shape == (3, 2 + 4, 4)
    params = {**params, "bias": jax.random.normal(keys[2], (12,))}
    concat = jnp.concatenate([x.reshape(5, 3, 2), jnp.broadcast_to(shared[:, None], (5, 3, 4))], -1)
    expected = jnp.einsum("ngi,gio->ngo", concat, params["kernel"]).reshape(5, 12) + params["bias"]
    out = layer.apply({"params": params}, x, shared=shared)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    grouped = layer.apply({"params": params}, jnp.moveaxis(x.reshape(5, 3, 2), 1, 0), shared=shared, grouped=True)
    np.testing.assert_allclose(jnp.moveaxis(grouped, 0, 1).reshape(5, 12), expected, rtol=1e-5, atol=1e-5)
    norm = wnn.RMSNorm()
    scale = {"params": {"scale": jax.random.normal(keys[0], (12,))}}
    np.testing.assert_allclose(jnp.moveaxis(norm.apply(scale, grouped, grouped=True), 0, 1).reshape(5, 12),
                               norm.apply(scale, expected), rtol=1e-5, atol=1e-6)


def test_dreamer_init_scale():
    weights = wnn.dreamer_init()(jax.random.PRNGKey(0), (1024, 512))
    assert float(jnp.std(weights)) == pytest.approx(1 / np.sqrt(1024), rel=0.02)
    assert float(jnp.max(jnp.abs(weights))) <= 2 / 0.87962566 / np.sqrt(1024) + 1e-6
    assert not jnp.any(wnn.dreamer_init(0.0)(jax.random.PRNGKey(0), (4, 4)))


@pytest.mark.slow
@pytest.mark.parametrize("preset, sizes", [
    ("dreamerv3:size1m", dict(deter=64, hidden=32, units=32, classes=4, stoch=4, depth=4, cnn_mults=(2,),
                              obs_shape=(8, 8, 3))),
    ("tdmpc2:1m", dict(enc_dim=32, mlp_dim=32, latent_dim=16, num_q=2, obs_shape=(4,))),
])
def test_fast_compiled_initialisers_give_the_same_params(preset, sizes, monkeypatch):
    """``jit_init`` (LLVM level 1 on the CPU) draws exactly the params the default compilation draws.

    The default is XLA's level 3, named here. A level named in ``XLA_FLAGS``
    is kept: the tests compile at level 0 (tests/conftest.py).
    """
    from worldloom import create_world_model

    model = create_world_model(preset, action_dim=2, device="cpu", **sizes)
    key = jax.random.PRNGKey(3)
    assert "--xla_backend_optimization_level=0" in os.environ["XLA_FLAGS"]
    assert hasattr(wnn.jit_init(model.functions.init), "lower")  # the flags' level: a plain jax.jit
    monkeypatch.setenv("XLA_FLAGS", "")  # as in a user's process: no level named
    init = wnn.jit_init(model.functions.init)
    assert not hasattr(init, "lower")  # level 1 for top-level calls, tracing inside others
    shapes = jax.eval_shape(init, key)
    fast = init(key)
    assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), shapes) == \
        jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), fast)
    default = jax.jit(model.functions.init).lower(key).compile(
        compiler_options={"xla_backend_optimization_level": 3})(key)
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(default), strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.tree_util.tree_structure(fast) == jax.tree_util.tree_structure(model.params)


def test_agc_clips_relative_to_param_norm():
    params = {"w": jnp.full((4,), 0.5)}  # norm 1
    updates = {"w": jnp.full((4,), 5.0)}  # norm 10
    clipped, _ = clip_by_agc(0.3).update(updates, clip_by_agc(0.3).init(params), params)
    assert float(jnp.linalg.norm(clipped["w"])) == pytest.approx(0.3, rel=1e-5)
    small = {"w": jnp.full((4,), 0.01)}
    kept, _ = clip_by_agc(0.3).update(small, None, params)
    np.testing.assert_allclose(kept["w"], small["w"])


def test_laprop_first_step_is_lr_times_sign():
    tx = laprop_agc(1e-2, agc=1e9)
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    updates, _ = tx.update({"w": jnp.array([0.5, -0.1, 2.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-1e-2, 1e-2, -1e-2], rtol=1e-5)


def test_laprop_weight_decay_decays_the_kernels_alone():
    """The reference's ``wdregex: /kernel$``: biases and norm scales keep their values."""
    tx = laprop_agc(1.0, weight_decay=0.1)
    params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "norm": {"scale": jnp.ones(3)}}
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1)
    assert not np.any(updates["dense"]["bias"]) and not np.any(updates["norm"]["scale"])


def test_per_example_keys_draw_an_examples_sample_wherever_it_sits():
    """A batch shard with its offset draws exactly what the whole batch draws for those examples."""
    from worldloom.nn.functional import example_keys, split_key, straight_through_sample

    key = jax.random.PRNGKey(3)
    probs = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (6, 3, 5)))
    whole = straight_through_sample(example_keys(key, 6), probs)
    shard = straight_through_sample(example_keys(key, 3, offset=3), probs[3:])
    np.testing.assert_array_equal(whole[3:], shard)
    same = straight_through_sample(example_keys(key, 6), jnp.broadcast_to(probs[:1], probs.shape))
    assert len({np.asarray(row).tobytes() for row in same}) > 1  # each example its own draw
    steps = split_key(example_keys(key, 6), 4)
    assert steps.shape == (4, 6, 2)
    np.testing.assert_array_equal(steps[:, 3:], split_key(example_keys(key, 3, offset=3), 4))
    assert split_key(key, 4).shape == (4, 2)


def test_mish_values_and_derivative_match_float64():
    """``mish`` (``x tanh(softplus(x))``) and its derivative against float64, on f32 inputs."""
    from worldloom.nn.functional import mish

    xs = np.concatenate([np.linspace(-60, 60, 120_001), [-1e30, 1e30, 0.0]]).astype(np.float32)
    x64 = xs.astype(np.float64)
    squashed = np.tanh(np.logaddexp(0.0, x64))
    truth = x64 * squashed
    slope = squashed + x64 * 0.5 * (1.0 + np.tanh(x64 / 2)) * (1.0 - squashed**2)  # sigmoid without overflow
    values = np.asarray(jax.jit(mish)(xs))
    grads = np.asarray(jax.jit(jax.vmap(jax.grad(mish)))(xs))
    assert values.dtype == np.float32 and np.all(np.isfinite(values)) and np.all(np.isfinite(grads))
    np.testing.assert_allclose(values, truth, rtol=4e-7, atol=1e-20)
    # A few ulps: autodiff of jax.nn.mish is off by 3.4e-6 near x = 8, of n / (n + 2) by 5.8e-6 near x = 20.
    np.testing.assert_allclose(grads, slope, rtol=0, atol=5e-7)
    # Far out: mish(x) -> x with slope 1 above, -> 0 with slope 0 below.
    np.testing.assert_array_equal(grads[-3:], np.float32([0.0, 1.0, 0.6]))


def test_twohot_loss_of_several_targets_is_the_sum_of_their_scaled_losses():
    bins = wnn.dreamer_bins()
    logits = jax.random.normal(jax.random.PRNGKey(0), (6, 255))
    first, second = jnp.linspace(-30, 30, 6), jnp.linspace(2, -1, 6)

    def together(x):
        return wnn.twohot_loss(x, (first, second), bins, (1.0, 0.3)).sum()

    def apart(x):
        return (wnn.twohot_loss(x, first, bins) + 0.3 * wnn.twohot_loss(x, second, bins)).sum()

    np.testing.assert_allclose(together(logits), apart(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(together)(logits), jax.grad(apart)(logits), rtol=1e-5, atol=1e-7)


class _TappedCell(flax.linen.Module):
    """A recurrent cell with every kind of tapped layer, and a norm scale that is not tapped."""

    @flax.linen.compact
    def __call__(self, h, x):
        a = wnn.RMSNorm()(wnn.Dense(8)(jnp.concatenate([h, x], -1)))
        grouped = jnp.moveaxis(h.reshape(h.shape[0], 2, 4), 1, 0)
        b = wnn.BlockLinear(8, 2)(grouped, shared=a, grouped=True)
        b = jnp.moveaxis(b, 0, 1).reshape(h.shape[0], 8)
        c = wnn.BlockLinear(8, 2)(jnp.tanh(b), shared=x)
        d = wnn.Dense(8, use_bias=False)(wnn.BlockLinear(8, 4)(c))
        return jnp.tanh(d + h)


def _tapped_step(params, consts, h, inputs, taps):
    x, first = inputs
    h = jnp.where(first[:, None], consts, h)
    h, layer_inputs, taps = wnn.apply_tapped(_TappedCell(), params, taps, h, x)
    return h, 2.0 * h, layer_inputs, taps


def _scans(jaxpr):
    """Every ``scan`` equation of a jaxpr, nested ones included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple) else (value,):
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    yield from _scans(getattr(sub, "jaxpr", sub))


@pytest.mark.slow
def test_scan_hoisted_equals_the_plain_scan_and_sums_weight_gradients_after_the_loop():
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    steps, rows = 7, 3
    xs = (jax.random.normal(keys[0], (steps, rows, 3)), jnp.zeros((steps, rows), bool).at[4, 1].set(True))
    h0, reset = jax.random.normal(keys[1], (rows, 8)), jax.random.normal(keys[2], (1, 8))
    params = _TappedCell().init(keys[3], h0, xs[0][0])["params"]
    weights = jax.random.normal(keys[4], (steps, rows, 8))
    plain = functools.partial(wnn.scan_hoisted, hoist=False)

    def loss(scan, params, reset, h0, x):
        carry, ys = scan(_tapped_step, params, reset, h0, (x, xs[1]))
        return (ys * weights).sum() + jnp.sin(carry).sum()

    args = (params, reset, h0, xs[0])
    value, grads = jax.jit(jax.value_and_grad(lambda *a: loss(wnn.scan_hoisted, *a), argnums=(0, 1, 2, 3)))(*args)
    expected_value, expected = jax.jit(jax.value_and_grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2, 3)))(*args)
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, expected)

    # The backward loop of the plain scan carries a running sum of every kernel's gradient; the
    # hoisted one carries none (the kernels' gradients are products after the loop).
    kernels = {p.shape for p in jax.tree.leaves(params) if p.ndim >= 2}

    def carried_shapes(scan):
        jaxpr = jax.make_jaxpr(jax.grad(lambda *a: loss(scan, *a)))(*args).jaxpr
        return {v.aval.shape for eqn in _scans(jaxpr)
                for v in eqn.invars[eqn.params["num_consts"]:eqn.params["num_consts"] + eqn.params["num_carry"]]}

    assert kernels <= carried_shapes(plain)
    assert not kernels & carried_shapes(wnn.scan_hoisted)


def test_a_tapped_layer_may_run_once_per_step():
    layer = wnn.Dense(4)
    x = jnp.ones((2, 4))
    params = layer.init(jax.random.PRNGKey(0), x)["params"]
    twice = lambda module, x: module(module(x))
    with pytest.raises(ValueError, match="ran twice"):
        flax.linen.apply(twice, layer, mutable=[wnn.TAP_INPUTS])({"params": params}, x)


def test_sigmoid_and_silu_match_float64():
    x = np.linspace(-30.0, 30.0, 20001, dtype=np.float32)
    exact = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(wnn.sigmoid(jnp.asarray(x)), exact, atol=2e-7, rtol=0)
    np.testing.assert_allclose(wnn.silu(jnp.asarray(x)), x * exact, atol=3e-6, rtol=1e-6)
    slope = jax.vmap(jax.grad(wnn.sigmoid))(jnp.asarray(x))
    np.testing.assert_allclose(slope, exact * (1.0 - exact), atol=2e-7, rtol=0)


def test_twohot_at_bin_centres_and_beyond_the_ends():
    bins = wnn.dreamer_bins()
    at = wnn.twohot(bins[jnp.array([0, 5, 127, 200, 254])], bins)
    np.testing.assert_array_equal(at, jax.nn.one_hot(jnp.array([0, 5, 127, 200, 254]), 255))
    beyond = wnn.twohot(jnp.array([-1e10, 1e10]), bins)
    np.testing.assert_array_equal(beyond, jax.nn.one_hot(jnp.array([0, 254]), 255))
    between = wnn.twohot(0.5 * (bins[10] + bins[11])[None], bins)[0]
    assert set(np.nonzero(np.asarray(between))[0]) == {10, 11}
    np.testing.assert_allclose(between[10], 0.5, rtol=1e-5)
    assert np.isnan(np.asarray(wnn.twohot(jnp.array([jnp.nan]), bins))).all()


@pytest.mark.parametrize("p", [0.99, 0.3])
def test_bernoulli16_frequency_and_keys(p):
    shape = (5, 3, 40001)  # an odd number of entries: the last word is half used
    mask = wnn.bernoulli16(jax.random.PRNGKey(0), p, shape)
    assert mask.shape == shape and mask.dtype == jnp.bool_
    exact = round(p * 65536) / 65536
    assert abs(exact - p) <= 2.0**-17
    standard_error = np.sqrt(exact * (1 - exact) / mask.size)
    assert abs(float(mask.mean()) - exact) < 5 * standard_error
    flat = np.asarray(mask).reshape(-1)[:-1].reshape(-1, 2)  # the two entries drawn from one word
    both = float((flat[:, 0] & flat[:, 1]).mean())
    assert abs(both - exact**2) < 5 * np.sqrt(exact**2 * (1 - exact**2) / len(flat))
    other = wnn.bernoulli16(jax.random.PRNGKey(1), p, shape)
    assert float((mask != other).mean()) > p * (1 - p)


def test_global_norm_is_the_l2_norm_of_every_leaf_together():
    from worldloom.nn.optim import global_norm

    tree = {"a": jnp.full((2, 3), 2.0), "b": [jnp.array([3.0, -4.0]), jnp.ones((1,), jnp.bfloat16)]}
    assert float(global_norm(tree)) == pytest.approx((6 * 4.0 + 9.0 + 16.0 + 1.0) ** 0.5)
    assert float(global_norm({})) == 0.0
