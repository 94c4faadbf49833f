"""The benchmark tools' own arithmetic: what they count is what the compiled program computes."""

import jax
import jax.numpy as jnp


def test_dot_ceiling_finds_every_dot_with_its_shapes_and_flops():
    from benchmarks.dot_ceiling import _alone_seconds, dots_by_op

    def f(x, w, blocks, v):
        y = jnp.tanh(x @ w)  # [8, 16] @ [16, 32]: may be fused with the tanh
        z = jnp.einsum("gbi,gio->gbo", blocks, v)  # 4 batched [5, 6] @ [6, 7]
        return y.sum() + z.sum()

    args = (jnp.ones((8, 16)), jnp.ones((16, 32)), jnp.ones((4, 5, 6)), jnp.ones((4, 6, 7)))
    dots = [dot for found in dots_by_op(jax.jit(f).lower(*args).compile().as_text()).values() for dot in found]
    assert sorted(dot["flops"] for dot in dots) == sorted([2 * 8 * 32 * 16, 2 * 4 * 5 * 7 * 6])
    batched = next(dot for dot in dots if dot["dims"]["lhs_batch_dims"])
    assert batched["lhs"] == (4, 5, 6) and batched["rhs"] == (4, 6, 7) and batched["dtype"] == "f32"
    assert 0 < _alone_seconds(batched, repeats=1) < 1.0
