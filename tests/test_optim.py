"""Tests for resnet_identity.training.optim against hand computation (docs/papers.md, "Training recipes")."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_identity import models
from resnet_identity.training import config as config_lib
from resnet_identity.training import optim

CIFAR_STEPS_PER_EPOCH = 391  # ceil(50000 / 128): fb.resnet.torch keeps the last partial batch.


def lr_at(schedule, steps):
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)))


def schedule(name="step", *, total_steps=64_000, steps_per_epoch=1, **fields):
    return optim.build_schedule(
        optim.schedule_config(name, **fields), total_steps=total_steps, steps_per_epoch=steps_per_epoch
    )


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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(values=(1,), unit="iterations", steps_per_epoch=1), "'steps', 'epochs'"),
        (dict(values=(1,), unit="epochs", steps_per_epoch=0), "steps_per_epoch"),
        (dict(values=(-1,), unit="epochs", steps_per_epoch=10), "non-negative"),
        (dict(values=(1.5,), unit="steps", steps_per_epoch=10), "integers"),
    ],
)
def test_to_steps_rejects_bad_input(kwargs, message):
    values = kwargs.pop("values")
    with pytest.raises(ValueError, match=message):
        optim.to_steps(values, **kwargs)


# ------------------------------------------- schedule entries, by hand


def test_step_decay_with_the_papers_constant_warmup():
    """v2 CIFAR: 0.01 for 400 iterations, then 0.1, / 10 at 32k and 48k, 64k in all."""
    lrs = schedule(learning_rate=0.1, boundaries=(32000, 48000), warmup_steps=400, warmup_learning_rate=0.01)
    # 0, warmup - 1, warmup, boundary - 1, boundary (twice), the last step.
    steps = [0, 399, 400, 31999, 32000, 47999, 48000, 63999]
    expected = [0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    np.testing.assert_allclose(lr_at(lrs, steps), expected, rtol=1e-6)


def test_step_decay_without_warmup_decays_at_each_boundary():
    lrs = schedule(learning_rate=0.4, boundaries=(3, 5, 6), decay_factor=0.5, total_steps=8)
    expected = [0.4, 0.4, 0.4, 0.2, 0.2, 0.1, 0.05, 0.05]
    np.testing.assert_allclose(lr_at(lrs, range(8)), expected, rtol=1e-6)


def test_step_decay_without_boundaries_is_constant():
    np.testing.assert_allclose(lr_at(schedule(boundaries=()), [0, 10, 63999]), [0.1] * 3, rtol=1e-6)


def test_linear_warmup_from_zero_and_from_a_given_rate():
    from_zero = schedule(
        learning_rate=0.1, boundaries=(10,), warmup="linear", warmup_steps=4, warmup_learning_rate=0.0, total_steps=12
    )
    # 0.1 * t / 4 up to step 4, then 0.1, then 0.01 from the boundary to the last step.
    expected = [0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.01, 0.01]
    np.testing.assert_allclose(lr_at(from_zero, [0, 1, 2, 3, 4, 9, 10, 11]), expected, rtol=1e-6, atol=1e-9)
    from_rate = schedule(
        learning_rate=0.1, boundaries=(10,), warmup="linear", warmup_steps=4, warmup_learning_rate=0.02, total_steps=12
    )
    np.testing.assert_allclose(lr_at(from_rate, [0, 1, 2, 3, 4]), [0.02, 0.04, 0.06, 0.08, 0.1], rtol=1e-6)


def test_cosine_by_hand():
    """0.1 -> 0.001 over 100 steps: lr(t) = 0.001 + 0.099 * (1 + cos(pi t / 100)) / 2."""
    lrs = schedule("cosine", learning_rate=0.1, end_learning_rate=0.001, total_steps=100)
    steps = [0, 25, 50, 75, 99]
    expected = [
        0.1,
        0.001 + 0.099 * (1 + math.sqrt(0.5)) / 2,
        0.0505,
        0.001 + 0.099 * (1 - math.sqrt(0.5)) / 2,
        0.001 + 0.099 * (1 + math.cos(math.pi * 0.99)) / 2,
    ]
    np.testing.assert_allclose(lr_at(lrs, steps), expected, rtol=1e-5)


def test_cosine_starts_after_a_linear_warmup():
    """Warm-up 0 -> 0.2 over 10 steps, then the cosine over the remaining 100 of 110 steps."""
    lrs = schedule(
        "cosine", learning_rate=0.2, warmup="linear", warmup_steps=10, warmup_learning_rate=0.0, total_steps=110
    )
    steps = [0, 5, 9, 10, 60, 109]
    expected = [0.0, 0.1, 0.18, 0.2, 0.1, 0.1 * (1 + math.cos(math.pi * 0.99))]
    np.testing.assert_allclose(lr_at(lrs, steps), expected, rtol=1e-5, atol=1e-8)  # float32's 1 + cos


def test_released_code_epoch_schedule_in_steps():
    """fb.resnet.torch: 1-based epochs; decay = epoch >= 122 and 2 or epoch >= 81 and 1 or 0."""
    lrs = schedule(
        boundaries=(80, 121),
        boundaries_unit="epochs",
        steps_per_epoch=CIFAR_STEPS_PER_EPOCH,
        total_steps=200 * CIFAR_STEPS_PER_EPOCH,
    )
    epochs = np.arange(1, 201)
    first_steps = (epochs - 1) * CIFAR_STEPS_PER_EPOCH
    last_steps = epochs * CIFAR_STEPS_PER_EPOCH - 1
    decay = np.where(epochs >= 122, 2, np.where(epochs >= 81, 1, 0))
    expected = 0.1 * 0.1**decay
    np.testing.assert_allclose(lr_at(lrs, first_steps), expected, rtol=1e-6)
    np.testing.assert_allclose(lr_at(lrs, last_steps), expected, rtol=1e-6)
    # Reading "epoch 81" as 81 completed epochs would cut one epoch late.
    late = schedule(
        boundaries=(81, 122),
        boundaries_unit="epochs",
        steps_per_epoch=CIFAR_STEPS_PER_EPOCH,
        total_steps=200 * CIFAR_STEPS_PER_EPOCH,
    )
    np.testing.assert_allclose(lr_at(late, [31280, 31671]), [0.1, 0.01], rtol=1e-6)


def test_schedule_runs_on_a_traced_step():
    jitted = jax.jit(schedule(boundaries=(5,), warmup_steps=2, warmup_learning_rate=0.01, total_steps=8))
    assert [float(jitted(jnp.int32(t))) for t in (1, 2, 5)] == pytest.approx([0.01, 0.1, 0.01])


# ------------------------------------------- schedule fields and checks


def test_schedule_config_holds_every_field_of_its_entry():
    assert dict(optim.schedule_config("cosine")) == {
        "name": "cosine",
        "learning_rate": 0.1,
        "warmup": "constant",
        "warmup_steps": 0,
        "warmup_learning_rate": 0.01,
        "end_learning_rate": 0.0,
    }
    step = optim.schedule_config("step", boundaries=(4,))
    assert set(step) == {
        "name",
        "learning_rate",
        "warmup",
        "warmup_steps",
        "warmup_learning_rate",
        "boundaries",
        "boundaries_unit",
        "decay_factor",
    }
    with pytest.raises(AttributeError):
        step.end_learning_rate = 0.0  # locked: a typo or another entry's field fails at once
    with pytest.raises(ValueError, match=r"'cosine' has no field\(s\) \['boundaries'\]"):
        optim.schedule_config("cosine", boundaries=(4,))
    with pytest.raises(ValueError, match="Did you mean 'cosine'"):
        optim.schedule_config("cosin")


def test_a_new_schedule_is_one_function_and_one_entry(monkeypatch):
    def exponential(learning_rate, run, *, rate=0.5):
        return lambda step: learning_rate * rate ** (step / run.total_steps)

    monkeypatch.setitem(optim.SCHEDULES, "exponential", exponential)
    config = optim.schedule_config("exponential", learning_rate=0.2, warmup_steps=1, warmup_learning_rate=0.05)
    assert config.rate == 0.5
    lrs = optim.build_schedule(config, total_steps=4, steps_per_epoch=1)
    np.testing.assert_allclose(lr_at(lrs, [0, 1, 2]), [0.05, 0.2 * 0.5**0.25, 0.2 * 0.5**0.5], rtol=1e-6)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(boundaries=(10, 10)), "must increase"),
        (dict(boundaries=(20, 10)), "must increase"),
        (dict(boundaries=(0, 10)), r"first boundary \(step 0\) must come after step 0"),
        (dict(boundaries=(-5,)), "non-negative"),
        (dict(boundaries=(10.5,)), "integers"),
        (dict(boundaries=(100,)), r"boundaries \[100\] \(steps\) fall at or beyond the end of training \(step 100\)"),
        (dict(boundaries=(2,), boundaries_unit="epochs"), r"boundaries \[2\] \(epochs\) fall at or beyond"),
        (dict(boundaries=(10,), boundaries_unit="iterations"), "boundaries_unit must be one of"),
        (dict(learning_rate=0.0), "learning_rate must be positive"),
        (dict(decay_factor=0.0), r"decay_factor must be in \(0, 1\]"),
        (dict(decay_factor=10.0), r"decay_factor must be in \(0, 1\]"),
        (dict(warmup_steps=-1), r"warmup_steps must be an integer in \[0, 100\)"),
        (dict(warmup_steps=100, boundaries=()), r"warmup_steps must be an integer in \[0, 100\)"),
        (dict(warmup_steps=10, boundaries=(10,)), r"first boundary \(step 10\) must come after the warm-up's 10"),
        (dict(warmup_steps=2, warmup_learning_rate=-0.1), "warmup_learning_rate must be non-negative"),
        (dict(warmup="cosine"), r"warmup='cosine' is not one of \['constant', 'linear'\]"),
        (dict(name="cosine", end_learning_rate=0.5), r"end_learning_rate must be in \[0, learning_rate=0.1\]"),
        (dict(name="consine"), "Did you mean 'cosine'"),
        (dict(name="cosine", boundaries=(10,)), r"To change schedules, set config.schedule = "),
    ],
)
def test_schedule_rejects_bad_values_naming_the_field(fields, message):
    values = {**optim.schedule_fields("step"), "boundaries": (10,), **fields}
    if values["name"] != "step":  # another entry, given the step entry's fields: only asked-for ones stay
        values = {k: v for k, v in values.items() if k in fields or k in optim.COMMON_FIELDS or k == "name"}
    with pytest.raises(ValueError, match=message):
        optim.build_schedule(values, total_steps=100, steps_per_epoch=50)


def test_config_validation_is_the_optimiser_s_own_and_lists_each_section():
    config = config_lib.default_config()
    config.dataset = "digits"
    config.schedule.decay_factor = 2.0
    config.optimizer.momentum = 1.0
    errors = optim.problems(config.schedule, config.optimizer, total_steps=64_000, steps_per_epoch=23)
    assert errors == [
        "schedule: decay_factor must be in (0, 1], got 2.0.",
        "optimizer: momentum must be in [0, 1), got 1.0.",
    ]
    with pytest.raises(config_lib.ConfigError, match=r"(?s)decay_factor must be in.*momentum must be in"):
        config_lib.validate(config)


# --------------------------------------------------------------------- SGD


def run_steps(tx, params, grads_per_step):
    state = tx.init(params)
    update = jax.jit(tx.update)
    for grads in grads_per_step:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def scalar_run(tx, w0, grads):
    """One weight, named as flax names conv and FC weights, so that weight decay applies."""
    params = run_steps(tx, {"kernel": jnp.float32(w0)}, [{"kernel": jnp.float32(g)} for g in grads])
    return float(params["kernel"])


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
    tx = optim.sgd(learning_rate=schedule(learning_rate=1.0, boundaries=(2,), total_steps=3), momentum=0.5)
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
def test_config_built_sgd_matches_torch7_reference_on_pytree(nesterov, decay_bn_and_bias):
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
    config = config_lib.default_config()
    config.optimizer.update(momentum=0.9, nesterov=nesterov, weight_decay=0.05, decay_bn_and_bias=decay_bn_and_bias)
    config.schedule = optim.schedule_config("step", learning_rate=0.1, boundaries=(2,))
    tx, _ = optim.build(config.schedule, config.optimizer, total_steps=3, steps_per_epoch=1)
    got = run_steps(tx, params, grads_per_step)
    want = torch7_sgd_reference(
        params, grads_per_step, lrs, momentum=0.9, nesterov=nesterov, weight_decay=0.05, mask=mask
    )
    for module, leaves in want.items():
        for name, value in leaves.items():
            np.testing.assert_allclose(got[module][name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(momentum=-0.1), "momentum"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=0.0, nesterov=True), "nesterov"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(learning_rate=0.0), "learning_rate"),
    ],
)
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


def test_weight_decay_mask_on_flax_conv_bn_dense():
    params = jax.eval_shape(ConvBnDense().init, jax.random.key(0), jnp.ones((1, 8, 8, 2)))["params"]
    assert optim.weight_decay_mask(params) == {
        "Conv_0": {"kernel": True},
        "BatchNorm_0": {"scale": False, "bias": False},
        "Dense_0": {"kernel": True, "bias": False},
    }


def decayed_leaves(model_params, decay_bn_and_bias):
    """The parameters that weight decay alone (zero gradients, no momentum) moves."""
    tx = optim.sgd(learning_rate=1.0, momentum=0.0, weight_decay=0.5, decay_bn_and_bias=decay_bn_and_bias)
    params = jax.tree.map(jnp.ones_like, model_params)
    moved = run_steps(tx, params, [jax.tree.map(jnp.zeros_like, params)])
    return sorted(
        jax.tree_util.keystr(path, simple=True, separator="/")
        for path, leaf in jax.tree_util.tree_leaves_with_path(moved)
        if np.all(leaf == 0.5)
    )


@pytest.mark.parametrize("scan", [False, True])
def test_weight_decay_on_a_small_resnet_by_hand(scan):
    """ResNet-8 (one unit per stage, projection shortcuts): the papers decay its 9 conv weights
    and the FC weight; `decay_bn_and_bias` (the released code) also its 9 BNs' γ and β and the FC
    bias. Scanned, BN's γ and β have two dimensions, so a shape rule would get them wrong."""
    model = models.create_model("cifar_resnet20", num_classes=10, depth=8, shortcut="B", scan=scan)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables["params"])
    kernels = [
        "fc/kernel",
        "stage1/first/conv1/kernel",
        "stage1/first/conv2/kernel",
        "stage2/first/conv1/kernel",
        "stage2/first/conv2/kernel",
        "stage2/first/shortcut/conv/kernel",
        "stage3/first/conv1/kernel",
        "stage3/first/conv2/kernel",
        "stage3/first/shortcut/conv/kernel",
        "stem/conv/kernel",
    ]
    norms = [
        "stem/bn",
        "stage1/first/bn1",
        "stage1/first/bn2",
        "stage2/first/bn1",
        "stage2/first/bn2",
        "stage2/first/shortcut/bn",
        "stage3/first/bn1",
        "stage3/first/bn2",
        "stage3/first/shortcut/bn",
    ]
    undecayed = ["fc/bias"] + [f"{norm}/{leaf}" for norm in norms for leaf in ("scale", "bias")]
    assert decayed_leaves(params, decay_bn_and_bias=False) == sorted(kernels)
    assert decayed_leaves(params, decay_bn_and_bias=True) == sorted(kernels + undecayed)
