"""Ghost BatchNorm: statistics per group of the papers' per-GPU size, its closed-form gradient, bf16."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_identity import models
from resnet_identity.models import kernels, layers
from resnet_identity.models.layers import GhostBatchNorm


def test_ghost_bn_with_whole_batch_equals_flax_batchnorm():
    """Flax's BatchNorm stores the biased batch variance; ours stores the unbiased one, as Torch
    and PyTorch do, so the running variances differ by n/(n-1), n = 8*4*4 values per channel."""
    x = jax.random.normal(jax.random.key(3), (8, 4, 4, 5)) * 3 + 1
    ghost = GhostBatchNorm(group_size=8)
    reference = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    vg = ghost.init(jax.random.key(0), x)
    vr = reference.init(jax.random.key(0), x)
    yg, sg = ghost.apply(vg, x, mutable=["batch_stats"])
    yr, sr = reference.apply(vr, x, mutable=["batch_stats"])
    np.testing.assert_allclose(yg, yr, atol=1e-5)
    np.testing.assert_allclose(sg["batch_stats"]["mean"], sr["batch_stats"]["mean"], atol=1e-6)
    n = 8 * 4 * 4
    flax_batch_var = (sr["batch_stats"]["var"] - 0.9) / 0.1
    np.testing.assert_allclose(sg["batch_stats"]["var"], 0.9 + 0.1 * flax_batch_var * n / (n - 1), rtol=1e-5)


@pytest.mark.parametrize("normalise", [layers.normalise, kernels.closed_form_normalise])
def test_ghost_bn_gradient_equals_autodiff_of_the_plain_formula(normalise):
    """JAX's autodiff BN and the closed-form gradient (`kernels.closed_form_normalise`) match
    autodiff of the textbook formula, statistics included."""
    x = jax.random.normal(jax.random.key(4), (8, 3, 3, 5)) * 2 + 30.0
    bn = GhostBatchNorm(group_size=4, normalise=normalise)
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
        n = 4 * 3 * 3  # values per channel in a group: the running variance is unbiased
        stats_var = 0.9 * 1.0 + 0.1 * var.mean((0, 1, 2, 3)) * n / (n - 1)
        return jnp.sum(y * weights) + jnp.sum(stats_mean) + jnp.sum(stats_var)

    np.testing.assert_allclose(ours(x, variables["params"]), reference(x, variables["params"]), rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(jax.grad(ours, argnums=(0, 1))(x, variables["params"])),
        jax.tree.leaves(jax.grad(reference, argnums=(0, 1))(x, variables["params"])),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bf16_ghost_bn_keeps_its_input_in_bf16_and_computes_in_f32():
    """Under mixed precision BN with the closed-form gradient keeps x (not a float32 copy) for
    the backward pass, and its results are float32 BN on the same bf16 values, rounded once."""
    x = (jax.random.normal(jax.random.key(6), (8, 4, 4, 16)) * 3 + 1).astype(jnp.bfloat16)
    closed_form = kernels.closed_form_normalise
    bn16 = GhostBatchNorm(group_size=4, dtype=jnp.bfloat16, normalise=closed_form)
    bn32 = GhostBatchNorm(group_size=4, normalise=closed_form)
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
    variables = {
        "params": {"scale": jnp.array([2.0, 1.0]), "bias": jnp.array([1.0, 0.0])},
        "batch_stats": {"mean": jnp.array([1.0, 3.0]), "var": jnp.array([4.0, 1.0])},
    }
    y = bn.apply(variables, x)
    np.testing.assert_allclose(y[0, 0, 0], [2.0 * 2.0 / np.sqrt(4.0 + 1e-5) + 1.0, 0.0], rtol=1e-5)


def test_ghost_bn_group_that_does_not_divide_batch_is_a_clear_error():
    model = models.create_model("cifar_resnet20", num_classes=10, depth=8, bn_group_size=3)
    with pytest.raises(ValueError, match="does not divide the batch of 4"):
        model.init(jax.random.key(0), jnp.ones((4, 32, 32, 3)), train=True)


def test_ghost_bn_running_variance_is_the_unbiased_mean_over_groups_by_hand():
    """Two groups of 2 examples of 1x2 pixels, one channel: n = 4 values per group. The
    running variance moves by 0.1 of the mean of the groups' unbiased variances (Torch's
    `BatchNormalization`, PyTorch), the output is normalised by the biased one."""
    x = jnp.array([1.0, 2.0, 4.0, 9.0, 10.0, 10.0, 12.0, 12.0]).reshape(4, 1, 2, 1)
    bn = GhostBatchNorm(group_size=2, epsilon=0.0)
    y, stats = bn.apply(bn.init(jax.random.key(0), x), x, mutable=["batch_stats"])
    # group 1: 1, 2, 4, 9 (mean 4, squared deviations 9+4+0+25 = 38); group 2: 10, 10, 12, 12 (mean 11, 4)
    unbiased = (38 / 3 + 4 / 3) / 2
    np.testing.assert_allclose(stats["batch_stats"]["mean"], [0.1 * (4 + 11) / 2], rtol=1e-6)
    np.testing.assert_allclose(stats["batch_stats"]["var"], [0.9 + 0.1 * unbiased], rtol=1e-6)
    np.testing.assert_allclose(y[2:].ravel(), [-1, -1, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(y[:2].ravel(), (np.array([1, 2, 4, 9]) - 4) / np.sqrt(38 / 4), rtol=1e-6)


@pytest.mark.parametrize("group_size", [None, 4])
def test_ghost_bn_variance_is_accurate_far_from_zero(group_size):
    """At mean = 1000 std the one-pass E[x^2] - E[x]^2 loses 11% to cancellation in float32;
    the shifted pass stays at float32 rounding against float64 (torch: ~1e-6)."""
    x = (1000.0 + np.random.default_rng(0).standard_normal((8, 6, 6, 16))).astype(np.float32)
    bn = GhostBatchNorm(group_size=group_size, momentum=0.0)
    y, stats = bn.apply(bn.init(jax.random.key(0), x), jnp.asarray(x), mutable=["batch_stats"])
    groups = x.astype(np.float64).reshape((-1, group_size or 8) + x.shape[1:])
    reference = groups.var((1, 2, 3), ddof=1).mean(0)
    np.testing.assert_allclose(stats["batch_stats"]["var"], reference, rtol=5e-6)
    normalised = (groups - groups.mean((1, 2, 3), keepdims=True)) / groups.std((1, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, normalised.reshape(x.shape), atol=1e-3)
