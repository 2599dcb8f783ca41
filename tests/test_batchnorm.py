"""Ghost BatchNorm: statistics per group of the papers' per-GPU size, its closed-form gradient, bf16."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_identity import models
from resnet_identity.models.layers import GhostBatchNorm


def test_ghost_bn_with_whole_batch_equals_flax_batchnorm():
    x = jax.random.normal(jax.random.key(3), (8, 4, 4, 5)) * 3 + 1
    ghost = GhostBatchNorm(group_size=8)
    reference = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    vg = ghost.init(jax.random.key(0), x)
    vr = reference.init(jax.random.key(0), x)
    yg, sg = ghost.apply(vg, x, mutable=["batch_stats"])
    yr, sr = reference.apply(vr, x, mutable=["batch_stats"])
    np.testing.assert_allclose(yg, yr, atol=1e-5)
    np.testing.assert_allclose(sg["batch_stats"]["mean"], sr["batch_stats"]["mean"], atol=1e-6)
    np.testing.assert_allclose(sg["batch_stats"]["var"], sr["batch_stats"]["var"], rtol=1e-5)


def test_ghost_bn_gradient_equals_autodiff_of_the_plain_formula():
    """The closed-form BN gradient (layers._batch_norm_bwd) matches autodiff, statistics included."""
    x = jax.random.normal(jax.random.key(4), (8, 3, 3, 5)) * 2 + 0.5
    bn = GhostBatchNorm(group_size=4)
    variables = bn.init(jax.random.key(0), x)
    weights = jax.random.normal(jax.random.key(5), x.shape)

    def ours(x, params):
        y, stats = bn.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(y * weights) + jnp.sum(stats["batch_stats"]["mean"]) + jnp.sum(stats["batch_stats"]["var"])

    def reference(x, params):
        g = x.reshape((2, 4) + x.shape[1:])
        mean = g.mean((1, 2, 3), keepdims=True)
        var = jnp.square(g - mean).mean((1, 2, 3), keepdims=True)
        y = ((g - mean) / jnp.sqrt(var + 1e-5) * params["scale"] + params["bias"]).reshape(x.shape)
        stats_mean = 0.9 * 0.0 + 0.1 * mean.mean((0, 1, 2, 3))
        stats_var = 0.9 * 1.0 + 0.1 * var.mean((0, 1, 2, 3))
        return jnp.sum(y * weights) + jnp.sum(stats_mean) + jnp.sum(stats_var)

    np.testing.assert_allclose(ours(x, variables["params"]), reference(x, variables["params"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.grad(ours, argnums=(0, 1))(x, variables["params"])),
                    jax.tree.leaves(jax.grad(reference, argnums=(0, 1))(x, variables["params"]))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bf16_ghost_bn_keeps_its_input_in_bf16_and_computes_in_f32():
    """Under mixed precision BN keeps x (not a float32 copy) for the backward pass, and its
    results are float32 BN on the same bf16 values, rounded once to bf16."""
    x = (jax.random.normal(jax.random.key(6), (8, 4, 4, 16)) * 3 + 1).astype(jnp.bfloat16)
    bn16, bn32 = GhostBatchNorm(group_size=4, dtype=jnp.bfloat16), GhostBatchNorm(group_size=4)
    variables = bn32.init(jax.random.key(0), x.astype(jnp.float32))
    weights = jax.random.normal(jax.random.key(7), x.shape)

    def forward(bn, x):
        return bn.apply(variables, x, mutable=["batch_stats"])[0]

    y16, vjp16 = jax.vjp(functools.partial(forward, bn16), x)
    kept = [a for a in jax.tree.leaves(vjp16) if a.size == x.size]
    assert kept and all(a.dtype == jnp.bfloat16 for a in kept), [a.dtype for a in kept]
    (dx16,) = vjp16(weights.astype(jnp.bfloat16))
    y32, vjp32 = jax.vjp(functools.partial(forward, bn32), x.astype(jnp.float32))
    (dx32,) = vjp32(weights.astype(jnp.bfloat16).astype(jnp.float32))
    assert y16.dtype == dx16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y16, y32.astype(jnp.bfloat16))
    np.testing.assert_allclose(dx16.astype(jnp.float32), dx32, rtol=1e-2, atol=1e-2 * float(jnp.abs(dx32).max()))


def test_ghost_bn_normalises_each_group_by_its_own_statistics():
    a = jax.random.normal(jax.random.key(1), (4, 3, 3, 2))
    b = 10 + 5 * jax.random.normal(jax.random.key(2), (4, 3, 3, 2))
    bn = GhostBatchNorm(group_size=4)
    variables = bn.init(jax.random.key(0), a)
    y, _ = bn.apply(variables, jnp.concatenate([a, b]), mutable=["batch_stats"])
    ya, _ = bn.apply(variables, a, mutable=["batch_stats"])
    yb, _ = bn.apply(variables, b, mutable=["batch_stats"])
    np.testing.assert_allclose(y, jnp.concatenate([ya, yb]), atol=1e-5)
    np.testing.assert_allclose(y[4:].mean((0, 1, 2)), 0.0, atol=1e-5)


def test_ghost_bn_eval_uses_running_averages():
    bn = GhostBatchNorm(use_running_average=True)
    x = jnp.full((2, 1, 1, 2), 3.0)
    variables = {"params": {"scale": jnp.array([2.0, 1.0]), "bias": jnp.array([1.0, 0.0])},
                 "batch_stats": {"mean": jnp.array([1.0, 3.0]), "var": jnp.array([4.0, 1.0])}}
    y = bn.apply(variables, x)
    np.testing.assert_allclose(y[0, 0, 0], [2.0 * 2.0 / np.sqrt(4.0 + 1e-5) + 1.0, 0.0], rtol=1e-5)


def test_ghost_bn_group_that_does_not_divide_batch_is_a_clear_error():
    model = models.create_model("cifar_resnet20", num_classes=10, depth=8, bn_group_size=3)
    with pytest.raises(ValueError, match="does not divide the batch of 4"):
        model.init(jax.random.key(0), jnp.ones((4, 32, 32, 3)), train=True)
