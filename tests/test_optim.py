"""Tests for resnet_identity.optim against hand computation (PAPERS.md, "Training recipes")."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_identity import optim

CIFAR_STEPS_PER_EPOCH = 391  # ceil(50000 / 128): fb.resnet.torch keeps the last partial batch.


def lr_at(schedule, steps):
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)))


# ---------------------------------------------------------------- to_steps


def test_to_steps_epochs_multiplies_and_rounds():
    assert optim.to_steps((81, 122), unit="epochs", steps_per_epoch=391) == (31671, 47702)
    assert optim.to_steps((80, 121), unit="epochs", steps_per_epoch=391) == (31280, 47311)
    # ImageNet v2: epochs 30 and 60 at ceil(1281167 / 256) = 5005 steps per epoch.
    assert optim.to_steps([30, 60], unit="epochs", steps_per_epoch=5005) == (150150, 300300)
    assert optim.to_steps((0.5, 1.25), unit="epochs", steps_per_epoch=10) == (5, 12)


def test_to_steps_steps_pass_through():
    assert optim.to_steps([32000, 48000], unit="steps", steps_per_epoch=391) == (32000, 48000)
    assert optim.to_steps((), unit="steps", steps_per_epoch=1) == ()


@pytest.mark.parametrize("kwargs, message", [
    (dict(values=(1,), unit="iterations", steps_per_epoch=1), "'steps', 'epochs'"),
    (dict(values=(1,), unit="epochs", steps_per_epoch=0), "steps_per_epoch"),
    (dict(values=(-1,), unit="epochs", steps_per_epoch=10), "non-negative"),
    (dict(values=(1.5,), unit="steps", steps_per_epoch=10), "integers"),
])
def test_to_steps_rejects_bad_input(kwargs, message):
    values = kwargs.pop("values")
    with pytest.raises(ValueError, match=message):
        optim.to_steps(values, **kwargs)


# ------------------------------------------------------------- LR schedule


def test_v2_cifar_schedule_with_constant_warmup():
    schedule = optim.learning_rate_schedule(
        base_learning_rate=0.1, boundaries=(32000, 48000), warmup_steps=400, warmup_learning_rate=0.01
    )
    steps = [0, 1, 399, 400, 401, 31999, 32000, 32001, 47999, 48000, 63999]
    expected = [0.01, 0.01, 0.01, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001]
    np.testing.assert_allclose(lr_at(schedule, steps), expected, rtol=1e-6)


def test_schedule_without_warmup_decays_at_each_boundary():
    schedule = optim.learning_rate_schedule(base_learning_rate=0.4, boundaries=(3, 5, 6), decay_factor=0.5)
    expected = [0.4, 0.4, 0.4, 0.2, 0.2, 0.1, 0.05, 0.05]
    np.testing.assert_allclose(lr_at(schedule, range(8)), expected, rtol=1e-6)


def test_schedule_without_boundaries_is_constant():
    schedule = optim.learning_rate_schedule(base_learning_rate=0.1, boundaries=())
    np.testing.assert_allclose(lr_at(schedule, [0, 10, 10**6]), [0.1] * 3, rtol=1e-6)


def test_linear_warmup_from_zero_and_from_given_rate():
    from_zero = optim.learning_rate_schedule(
        base_learning_rate=0.1, boundaries=(10,), warmup_steps=4, warmup="linear"
    )
    expected = [0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.01]
    np.testing.assert_allclose(lr_at(from_zero, [0, 1, 2, 3, 4, 9, 10]), expected, rtol=1e-6, atol=1e-9)
    from_rate = optim.learning_rate_schedule(
        base_learning_rate=0.1, boundaries=(10,), warmup_steps=4, warmup_learning_rate=0.02, warmup="linear"
    )
    np.testing.assert_allclose(lr_at(from_rate, [0, 1, 2, 3, 4]), [0.02, 0.04, 0.06, 0.08, 0.1], rtol=1e-6)


def test_released_code_epoch_schedule_in_steps():
    """fb.resnet.torch: 1-based epochs; decay = epoch >= 122 and 2 or epoch >= 81 and 1 or 0."""
    cuts = optim.to_steps((80, 121), unit="epochs", steps_per_epoch=CIFAR_STEPS_PER_EPOCH)
    assert cuts == (31280, 47311)
    schedule = optim.learning_rate_schedule(base_learning_rate=0.1, boundaries=cuts)
    epochs = np.arange(1, 201)
    first_steps = (epochs - 1) * CIFAR_STEPS_PER_EPOCH
    last_steps = epochs * CIFAR_STEPS_PER_EPOCH - 1
    decay = np.where(epochs >= 122, 2, np.where(epochs >= 81, 1, 0))
    expected = 0.1 * 0.1**decay
    np.testing.assert_allclose(lr_at(schedule, first_steps), expected, rtol=1e-6)
    np.testing.assert_allclose(lr_at(schedule, last_steps), expected, rtol=1e-6)
    # Reading "epoch 81" as 81 completed epochs would cut one epoch late.
    late_cuts = optim.to_steps((81, 122), unit="epochs", steps_per_epoch=CIFAR_STEPS_PER_EPOCH)
    late = optim.learning_rate_schedule(base_learning_rate=0.1, boundaries=late_cuts)
    np.testing.assert_allclose(lr_at(late, [31280, 31671]), [0.1, 0.01], rtol=1e-6)


def test_schedule_runs_on_traced_step():
    schedule = optim.learning_rate_schedule(
        base_learning_rate=0.1, boundaries=(5,), warmup_steps=2, warmup_learning_rate=0.01
    )
    jitted = jax.jit(schedule)
    assert float(jitted(jnp.int32(1))) == pytest.approx(0.01)
    assert float(jitted(jnp.int32(2))) == pytest.approx(0.1)
    assert float(jitted(jnp.int32(5))) == pytest.approx(0.01)


@pytest.mark.parametrize("kwargs, message", [
    (dict(boundaries=(10, 10)), "strictly increasing"),
    (dict(boundaries=(20, 10)), "strictly increasing"),
    (dict(boundaries=(0, 10)), "positive"),
    (dict(boundaries=(-5,)), "positive"),
    (dict(boundaries=(10.5,)), "integer"),
    (dict(boundaries=(10,), base_learning_rate=0.0), "base_learning_rate"),
    (dict(boundaries=(10,), decay_factor=0.0), "decay_factor"),
    (dict(boundaries=(10,), warmup_steps=-1), "warmup_steps"),
    (dict(boundaries=(10,), warmup_steps=10, warmup_learning_rate=0.01), "first boundary"),
    (dict(boundaries=(10,), warmup_steps=2), "warmup_learning_rate"),
    (dict(boundaries=(10,), warmup_steps=2, warmup_learning_rate=-0.1), "non-negative"),
    (dict(boundaries=(10,), warmup="cosine"), "'constant', 'linear'"),
])
def test_schedule_rejects_bad_input(kwargs, message):
    kwargs.setdefault("base_learning_rate", 0.1)
    with pytest.raises(ValueError, match=message):
        optim.learning_rate_schedule(**kwargs)


# --------------------------------------------------------------------- SGD


def run_steps(tx, params, grads_per_step):
    state = tx.init(params)
    update = jax.jit(tx.update)
    for grads in grads_per_step:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def scalar_run(tx, w0, grads):
    params = run_steps(tx, {"w": jnp.float32(w0)}, [{"w": jnp.float32(g)} for g in grads])
    return float(params["w"])


def test_plain_momentum_by_hand():
    # w=1, g=1, lr=0.1, mu=0.9: v = 1, 1.9, 2.71; w = 0.9, 0.71, 0.439.
    tx = optim.sgd(learning_rate=0.1, momentum=0.9)
    assert scalar_run(tx, 1.0, [1.0]) == pytest.approx(0.9)
    assert scalar_run(tx, 1.0, [1.0, 1.0, 1.0]) == pytest.approx(0.439)


def test_nesterov_by_hand():
    # Torch7: d = g + mu * v_new. d = 1.9, 2.71, 3.439; w = 0.81, 0.539, 0.1951.
    tx = optim.sgd(learning_rate=0.1, momentum=0.9, nesterov=True)
    assert scalar_run(tx, 1.0, [1.0]) == pytest.approx(0.81)
    assert scalar_run(tx, 1.0, [1.0, 1.0]) == pytest.approx(0.539)
    assert scalar_run(tx, 1.0, [1.0, 1.0, 1.0]) == pytest.approx(0.1951)


def test_no_momentum_is_plain_gradient_descent():
    tx = optim.sgd(learning_rate=0.1, momentum=0.0)
    assert scalar_run(tx, 1.0, [1.0, 2.0, 3.0]) == pytest.approx(0.4)


def test_weight_decay_enters_before_momentum_by_hand():
    # w=1, g=0, wd=0.1, lr=1, mu=0.5: g' = 0.1, 0.09, 0.076; v = 0.1, 0.14, 0.146.
    tx = optim.sgd(learning_rate=1.0, momentum=0.5, weight_decay=0.1)
    assert scalar_run(tx, 1.0, [0.0, 0.0, 0.0]) == pytest.approx(0.614)


def test_learning_rate_applies_after_momentum():
    # lr = 1, 1, 0.1; mu = 0.5; g = 1: v = 1, 1.5, 1.75; w = -1, -2.5, -2.675.
    # Caffe's v = mu * v + lr * g would give v3 = 0.85 and w3 = -3.35.
    schedule = optim.learning_rate_schedule(base_learning_rate=1.0, boundaries=(2,))
    tx = optim.sgd(learning_rate=schedule, momentum=0.5)
    assert scalar_run(tx, 0.0, [1.0, 1.0]) == pytest.approx(-2.5)
    assert scalar_run(tx, 0.0, [1.0, 1.0, 1.0]) == pytest.approx(-2.675)


def flax_named_params(rng):
    shapes = {
        "Conv_0": {"kernel": (3, 3, 2, 4)},
        "BatchNorm_0": {"scale": (4,), "bias": (4,)},
        "Dense_0": {"kernel": (4, 3), "bias": (3,)},
    }
    return jax.tree.map(
        lambda s: rng.standard_normal(s).astype(np.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )


def torch7_sgd_reference(params, grads_per_step, lrs, *, momentum, nesterov, weight_decay, mask):
    """numpy transcription of torch/optim sgd.lua with dampening 0."""
    w = {k: dict(v) for k, v in params.items()}
    buf = {}
    for grads, lr in zip(grads_per_step, lrs):
        for module, leaves in grads.items():
            for name, g in leaves.items():
                key = (module, name)
                if mask[module][name]:
                    g = g + weight_decay * w[module][name]  # dfdx:add(wd, x)
                buf[key] = g.copy() if key not in buf else momentum * buf[key] + g
                step = g + momentum * buf[key] if nesterov else buf[key]
                w[module][name] = w[module][name] - lr * step  # x:add(-clr, dfdx)
    return w


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("decay_bn_and_bias", [True, False])
def test_sgd_matches_torch7_reference_on_pytree(nesterov, decay_bn_and_bias):
    rng = np.random.default_rng(0)
    params = flax_named_params(rng)
    grads_per_step = [flax_named_params(rng) for _ in range(3)]
    lrs = [0.1, 0.1, 0.01]
    if decay_bn_and_bias:
        mask = jax.tree.map(lambda _: True, params)
    else:
        mask = {
        "Conv_0": {"kernel": True},
        "BatchNorm_0": {"scale": False, "bias": False},
        "Dense_0": {"kernel": True, "bias": False},
        }
    schedule = optim.learning_rate_schedule(base_learning_rate=0.1, boundaries=(2,))
    tx = optim.sgd(
        learning_rate=schedule,
        momentum=0.9,
        nesterov=nesterov,
        weight_decay=0.05,
        decay_bn_and_bias=decay_bn_and_bias,
    )
    got = run_steps(tx, params, grads_per_step)
    want = torch7_sgd_reference(
        params, grads_per_step, lrs, momentum=0.9, nesterov=nesterov, weight_decay=0.05, mask=mask
    )
    for module, leaves in want.items():
        for name, value in leaves.items():
            np.testing.assert_allclose(got[module][name], value, rtol=1e-5, atol=1e-6)


def test_masked_weight_decay_leaves_bn_and_bias_undecayed():
    params = {
        "Conv_0": {"kernel": jnp.ones(2)},
        "BatchNorm_0": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
        "Dense_0": {"kernel": jnp.ones(2), "bias": jnp.ones(2)},
    }
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    tx = optim.sgd(learning_rate=1.0, momentum=0.0, weight_decay=0.5, decay_bn_and_bias=False)
    got = run_steps(tx, params, [zero_grads])
    np.testing.assert_allclose(got["Conv_0"]["kernel"], 0.5)
    np.testing.assert_allclose(got["Dense_0"]["kernel"], 0.5)
    for module, name in [("BatchNorm_0", "scale"), ("BatchNorm_0", "bias"), ("Dense_0", "bias")]:
        np.testing.assert_allclose(got[module][name], 1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(momentum=-0.1), "momentum"),
    (dict(momentum=1.0), "momentum"),
    (dict(momentum=0.0, nesterov=True), "nesterov"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(learning_rate=0.0), "learning_rate"),
])
def test_sgd_rejects_bad_input(kwargs, message):
    kwargs.setdefault("learning_rate", 0.1)
    with pytest.raises(ValueError, match=message):
        optim.sgd(**kwargs)


# -------------------------------------------------------- weight_decay_mask


class ConvBnDense(nn.Module):

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(4, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        return nn.Dense(3)(x.mean(axis=(1, 2)))


class NamedNorms(nn.Module):

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(4, (3, 3), use_bias=False, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
        x = nn.LayerNorm(name="final_norm")(x)
        return nn.Dense(3, name="normal_head")(x.mean(axis=(1, 2)))


def abstract_init(model):
    # The mask depends only on the tree's paths, so shapes suffice (no compute).
    return jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8, 8, 2)))


def test_weight_decay_mask_on_flax_conv_bn_dense():
    variables = abstract_init(ConvBnDense())
    assert optim.weight_decay_mask(variables["params"]) == {
        "Conv_0": {"kernel": True},
        "BatchNorm_0": {"scale": False, "bias": False},
        "Dense_0": {"kernel": True, "bias": False},
    }


def test_weight_decay_mask_with_custom_module_names():
    variables = abstract_init(NamedNorms())
    assert optim.weight_decay_mask(variables["params"]) == {
        "conv1": {"kernel": True},
        "bn1": {"scale": False, "bias": False},
        "final_norm": {"scale": False, "bias": False},
        "normal_head": {"kernel": True, "bias": False},
    }


def test_weight_decay_mask_excludes_any_leaf_under_a_norm_module():
    params = {
        "unit0": {
            "PreActBN": {"gamma": 1.0},
            "GhostBatchNorm_0": {"mean_shift": 1.0},
            "shortcut": {"conv": {"kernel": 1.0}, "bn": {"gamma": 1.0}},
            "conv1": {"kernel": 1.0},
        }
    }
    assert optim.weight_decay_mask(params) == {
        "unit0": {
            "PreActBN": {"gamma": False},
            "GhostBatchNorm_0": {"mean_shift": False},
            "shortcut": {"conv": {"kernel": True}, "bn": {"gamma": False}},
            "conv1": {"kernel": True},
        }
    }
