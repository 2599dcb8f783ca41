"""Residual units: each variant computes what its row of v1 and v2 (Tables 1-2, Fig. 4) says."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_identity import models
from resnet_identity.models import ablations
from resnet_identity.models.layers import make_norm
from resnet_identity.models.shortcuts import Shortcut


def _unit(cls, x, *, zero_last_conv=False, train=False, rng=0, **fields):
    norm = make_norm(train=train, group_size=None, dtype=jnp.float32)
    unit = cls(norm=norm, train=train, **fields)
    variables = unit.init({"params": jax.random.key(rng), "dropout": jax.random.key(1)}, x)
    if zero_last_conv:
        params = jax.tree_util.tree_map_with_path(
            lambda path, leaf: jnp.zeros_like(leaf) if _is_last_conv(path, fields) else leaf,
            variables["params"],
        )
        variables = {**variables, "params": params}
    out = unit.apply(variables, x, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])[0]
    return out, variables


def _is_last_conv(path, fields):
    last = "conv3" if fields.get("bottleneck") else "conv2"
    return path[0].key == last


X = jax.random.normal(jax.random.key(7), (4, 8, 8, 16))


@pytest.mark.parametrize("bottleneck", [False, True])
def test_preact_unit_is_identity_when_last_conv_is_zero(bottleneck):
    out, _ = _unit(models.PreActivation, X, zero_last_conv=True, features=16, bottleneck=bottleneck)
    np.testing.assert_array_equal(out, X)  # exactly: f and h are identities (v2 Eq. 3).


@pytest.mark.parametrize("bottleneck", [False, True])
def test_postact_unit_is_relu_of_input_when_last_conv_is_zero(bottleneck):
    # With the last conv zeroed, BN in eval mode returns beta = 0, so y = relu(x + 0).
    out, _ = _unit(models.PostActivation, X, zero_last_conv=True, features=16, bottleneck=bottleneck)
    np.testing.assert_allclose(out, nn.relu(X), atol=1e-6)


def test_preact_both_mode_feeds_preactivated_tensor_to_projection():
    # 'both': shortcut(x) = conv1x1(relu(bn(x))); with the branch zeroed the unit returns exactly that.
    out, variables = _unit(models.PreActivation, X, zero_last_conv=True, features=32, strides=2, preact="both")
    kernel = variables["params"]["shortcut"]["conv"]["kernel"]
    expected = jnp.einsum("nhwc,cd->nhwd", nn.relu(X)[:, ::2, ::2, :], kernel[0, 0])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_preact_none_mode_has_no_leading_bn():
    _, variables = _unit(models.PreActivation, X, features=16, preact="none")
    assert "bn1" not in variables["params"] and "bn2" in variables["params"]
    _, variables = _unit(models.PreActivation, X, features=16, preact="residual")
    assert "bn1" in variables["params"]


def test_v2_projection_is_bare_conv_and_v1_has_bn():
    _, v2 = _unit(models.PreActivation, X, features=32, strides=2, preact="both")
    _, v1 = _unit(models.PostActivation, X, features=32, strides=2)
    assert set(v2["params"]["shortcut"]) == {"conv"}
    assert set(v1["params"]["shortcut"]) == {"conv", "bn"}


def test_option_a_new_channels_are_exactly_zero_and_subsampled():
    out = Shortcut(32, 2, "A", norm=None).apply({}, X)
    assert out.shape == (4, 4, 4, 32)
    np.testing.assert_array_equal(out[..., :16], X[:, ::2, ::2, :])
    np.testing.assert_array_equal(out[..., 16:], 0.0)


def test_option_b_projects_only_when_shape_changes_and_c_always():
    same = Shortcut(16, 1, "B", norm=None)
    assert same.init(jax.random.key(0), X) == {}
    np.testing.assert_array_equal(same.apply({}, X), X)
    assert "conv" in Shortcut(32, 2, "B", norm=None).init(jax.random.key(0), X)["params"]
    assert "conv" in Shortcut(16, 1, "C", norm=None).init(jax.random.key(0), X)["params"]


@pytest.mark.parametrize("stride_on,expected_first,expected_middle", [("1x1", 2, 1), ("3x3", 1, 2)])
def test_stride_placement(stride_on, expected_first, expected_middle):
    unit = models.PreActivation(features=64, strides=2, bottleneck=True, stride_on=stride_on)
    specs = unit.branch_specs()
    assert [s[2] for s in specs] == [expected_first, expected_middle, 1]
    assert [s[0] for s in specs] == [1, 3, 1] and specs[0][1] == 16


def test_constant_scaling_halves():
    # Zeroed branch: y = relu(0.5 * x) exactly.
    out, _ = _unit(ablations.ConstantScaling, X, zero_last_conv=True, features=16)
    np.testing.assert_allclose(out, nn.relu(0.5 * X), atol=1e-6)


def test_constant_scaling_scales_branch_too():
    full, _ = _unit(models.PostActivation, X, features=16, train=False)
    # branch_scale 0.5, shortcut_scale 0.5 => y = relu(0.5 * (x + F)), i.e. half of the original pre-ReLU.
    half, _ = _unit(ablations.ConstantScaling, X, features=16, shortcut_scale=0.5, branch_scale=0.5)
    np.testing.assert_allclose(half, 0.5 * full, rtol=1e-5, atol=1e-6)


def test_exclusive_gating_starts_near_identity_with_negative_bias():
    # b_g = -6: g ~ sigmoid(-6) = 0.0025 with a zero gate kernel; y = relu((1-g) x + g F).
    out, variables = _unit(ablations.ExclusiveGating, X, features=16, gate_bias_init=-6.0)
    assert float(variables["params"]["gate"]["Conv_0"]["bias"][0]) == -6.0
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.zeros_like(a) if p[0].key == "gate" and p[-1].key == "kernel" else a,
        variables["params"],
    )
    unit = ablations.ExclusiveGating(
        features=16, norm=make_norm(train=False, group_size=None, dtype=jnp.float32), gate_bias_init=-6.0
    )
    branch_free = unit.apply({**variables, "params": params}, X)
    g = jax.nn.sigmoid(-6.0)
    full, _ = _unit(models.PostActivation, X, features=16)
    # F of the gating unit equals the original unit's F (same init key); recover it from `full`.
    f_branch = jnp.where(full > 0, full - X, 0.0)
    np.testing.assert_allclose(
        jnp.where(full > 0, branch_free, 0.0), jnp.where(full > 0, nn.relu((1 - g) * X + g * f_branch), 0.0), atol=1e-5
    )


def test_shortcut_only_gating_scales_shortcut_only():
    out, variables = _unit(ablations.ShortcutOnlyGating, X, zero_last_conv=True, features=16, gate_bias_init=0.0)
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.zeros_like(a) if p[0].key in ("gate", "conv2") and p[-1].key == "kernel" else a,
        variables["params"],
    )
    unit = ablations.ShortcutOnlyGating(features=16, norm=make_norm(train=False, group_size=None, dtype=jnp.float32))
    out = unit.apply({**variables, "params": params}, X)
    np.testing.assert_allclose(out, nn.relu(0.5 * X), atol=1e-6)  # g = sigmoid(0) = 0.5.


def test_dropout_shortcut_drops_in_training_only():
    train_out, _ = _unit(ablations.DropoutShortcut, X, zero_last_conv=True, train=True, features=16, rate=0.5)
    kept = np.asarray(train_out) != 0
    positive = np.asarray(X) > 0
    # Kept elements are 2x (inverted dropout); about half of the positive ones are dropped.
    np.testing.assert_allclose(np.asarray(train_out)[kept], 2 * np.asarray(X)[kept], rtol=1e-5)
    assert 0.3 < (kept & positive).sum() / positive.sum() < 0.7
    eval_out, _ = _unit(ablations.DropoutShortcut, X, zero_last_conv=True, train=False, features=16, rate=0.5)
    np.testing.assert_allclose(eval_out, nn.relu(X), atol=1e-6)


def test_relu_before_addition_output_is_never_below_shortcut():
    out, _ = _unit(ablations.ReLUBeforeAddition, X, features=16, train=True)
    assert bool(jnp.all(out >= X - 1e-6))  # F >= 0 after its final ReLU (Fig. 4(c)).


def test_bn_after_addition_normalises_the_sum():
    out, _ = _unit(ablations.BNAfterAddition, X, features=16, train=True)
    # relu(BN(y)) in training mode: before the ReLU each channel has mean 0, so about half is zero.
    assert 0.3 < float((out == 0).mean()) < 0.7


def test_relu_only_preact_branch_starts_with_relu_not_bn():
    _, variables = _unit(ablations.ReLUOnlyPreActivation, X, features=16)
    assert set(k for k in variables["params"] if k.startswith("bn")) == {"bn1", "bn2"}
    out, _ = _unit(ablations.ReLUOnlyPreActivation, X, zero_last_conv=True, features=16)
    np.testing.assert_allclose(out, X, atol=1e-6)  # BN(0) = beta = 0 in eval; f is identity.


def test_plain_unit_has_no_shortcut():
    out, variables = _unit(models.Plain, X, zero_last_conv=True, features=16)
    assert "shortcut" not in variables["params"]
    np.testing.assert_allclose(out, 0.0, atol=1e-6)


def test_every_unit_variant_builds_a_network():
    images = jnp.ones((2, 8, 8, 3))
    for unit in models.UNITS:
        model = models.create_model("cifar_resnet20", num_classes=10, depth=8, unit=unit)
        variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, images, train=False)
        logits, _ = model.apply(
            variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
        )
        assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits))), unit
