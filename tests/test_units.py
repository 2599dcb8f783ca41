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
    _, variables = _unit(models.PreActivation, X, features=16, preact="branch")
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
    variables = unit.init(jax.random.key(0), X)
    _, state = unit.apply(variables, X, capture_intermediates=True, mutable=["batch_stats", "intermediates"])
    sizes = [X.shape[1]] + [state["intermediates"][f"conv{i}"]["__call__"][0].shape[1] for i in (1, 2, 3)]
    assert [a // b for a, b in zip(sizes, sizes[1:])] == [expected_first, expected_middle, 1]
    kernels = [variables["params"][f"conv{i}"]["kernel"].shape for i in (1, 2, 3)]
    assert kernels == [(1, 1, 16, 16), (3, 3, 16, 16), (1, 1, 16, 64)]


def _layers(cls, bottleneck, **fields):
    """A unit's parameters as {"conv1": "3x3 16->32", "bn1": "32", ...}, from its init tree."""
    features = 64 if bottleneck else 32
    unit = cls(features=features, strides=2, bottleneck=bottleneck, shortcut="B", **fields)
    params = jax.eval_shape(lambda: unit.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, X))
    layers = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params["params"]):
        name, kind = "/".join(k.key for k in path[:-1]), path[-1].key
        if kind == "kernel" and len(leaf.shape) == 4:
            layers[name] = f"{leaf.shape[0]}x{leaf.shape[1]} {leaf.shape[2]}->{leaf.shape[3]}"
        elif kind == "scale":
            layers[name] = f"{leaf.shape[0]}"
    return layers


V1_BASIC = {"conv1": "3x3 16->32", "bn1": "32", "conv2": "3x3 32->32", "bn2": "32"}
V1_BOTTLENECK = {
    "conv1": "1x1 16->16",
    "bn1": "16",
    "conv2": "3x3 16->16",
    "bn2": "16",
    "conv3": "1x1 16->64",
    "bn3": "64",
}
V2_BASIC = {"bn1": "16", "conv1": "3x3 16->32", "bn2": "32", "conv2": "3x3 32->32"}
V2_BOTTLENECK = {
    "bn1": "16",
    "conv1": "1x1 16->16",
    "bn2": "16",
    "conv2": "3x3 16->16",
    "bn3": "16",
    "conv3": "1x1 16->64",
}
PROJECTION_BN = {"shortcut/conv": "1x1 16->{c}", "shortcut/bn": "{c}"}
PROJECTION = {"shortcut/conv": "1x1 16->{c}"}


@pytest.mark.parametrize(
    "cls, fields, basic, bottleneck, projection",
    [
        # v1 Fig. 5: each conv followed by its BN; the projection is conv + BN (v1 Eq. 2).
        (models.PostActivation, {}, V1_BASIC, V1_BOTTLENECK, PROJECTION_BN),
        (ablations.ConstantScaling, {}, V1_BASIC, V1_BOTTLENECK, PROJECTION_BN),
        (ablations.DropoutShortcut, {}, V1_BASIC, V1_BOTTLENECK, PROJECTION_BN),
        (ablations.ReLUBeforeAddition, {}, V1_BASIC, V1_BOTTLENECK, PROJECTION_BN),
        (ablations.ReLUOnlyPreActivation, {"preact": "both"}, V1_BASIC, V1_BOTTLENECK, PROJECTION_BN),
        # v2 Fig. 4(b): the last BN normalises the sum; the projection is a bare conv.
        (ablations.BNAfterAddition, {}, V1_BASIC, V1_BOTTLENECK, PROJECTION),
        # v2 Fig. 4(e): each BN precedes its conv; the projection is a bare conv.
        (models.PreActivation, {"preact": "both"}, V2_BASIC, V2_BOTTLENECK, PROJECTION),
        (models.PreActivation, {"preact": "branch"}, V2_BASIC, V2_BOTTLENECK, PROJECTION),
        (models.Plain, {}, V1_BASIC, V1_BOTTLENECK, {}),
    ],
)
def test_each_unit_has_the_layers_its_figure_draws(cls, fields, basic, bottleneck, projection):
    for is_bottleneck, branch, c in ((False, basic, 32), (True, bottleneck, 64)):
        expected = {**branch, **{k: v.format(c=c) for k, v in projection.items()}}
        assert _layers(cls, is_bottleneck, **fields) == expected, (cls.__name__, is_bottleneck)


@pytest.mark.parametrize("cls", [ablations.ExclusiveGating, ablations.ShortcutOnlyGating])
def test_gated_units_add_a_1x1_gate_to_v1s_layers(cls):
    for is_bottleneck, branch, c in ((False, V1_BASIC, 32), (True, V1_BOTTLENECK, 64)):
        expected = {**branch, "gate/Conv_0": f"1x1 16->{c}", **{k: v.format(c=c) for k, v in PROJECTION_BN.items()}}
        assert _layers(cls, is_bottleneck) == expected


def test_preact_none_mode_has_every_layer_but_the_leading_bn():
    for is_bottleneck, branch in ((False, V2_BASIC), (True, V2_BOTTLENECK)):
        c = 64 if is_bottleneck else 32
        expected = {**{k: v for k, v in branch.items() if k != "bn1"}, "shortcut/conv": f"1x1 16->{c}"}
        assert _layers(models.PreActivation, is_bottleneck, preact="none") == expected


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
