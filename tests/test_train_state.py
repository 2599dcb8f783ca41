"""The train state and its steps (`training/train_state.py`): the loss with and without label
smoothing by hand (v2 trains without it; the field is for recipes beyond the papers), smoothing
in the training loss only, and `convert_layout` of momenta nested in the optimiser state."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_identity.training.train_state import create_train_state, cross_entropy, eval_step, train_step
from tests.test_checkpointing import _layout_state


class FixedLogits(nn.Module):
    """Logits log(1, 1, 2) for every image, whatever it is: softmax (1/4, 1/4, 1/2)."""

    @nn.compact
    def __call__(self, images, train: bool = True):
        nn.BatchNorm(use_running_average=not train)(images)  # the step updates batch_stats
        logits = self.param("logits", lambda key: jnp.log(jnp.array([1.0, 1.0, 2.0])))
        return jnp.broadcast_to(logits, (images.shape[0], 3))


def test_cross_entropy_by_hand_with_and_without_label_smoothing():
    logits = jnp.log(jnp.array([[1.0, 1.0, 2.0]]))
    # Label 2, p = 1/2: -log(1/2). Smoothed by 0.3 the target is (0.1, 0.1, 0.8):
    # -(0.1 log 1/4 + 0.1 log 1/4 + 0.8 log 1/2) = 1.2 log 2.
    assert float(cross_entropy(logits, jnp.array([2]))[0]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(cross_entropy(logits, jnp.array([2]), 0.3)[0]) == pytest.approx(1.2 * math.log(2), rel=1e-6)


def test_label_smoothing_is_in_the_training_loss_only():
    model = FixedLogits()
    images = jnp.zeros((4, 2, 2, 3))
    batch = {"image": images, "label": jnp.full((4,), 2), "mask": jnp.ones((4,), bool)}
    state = create_train_state(model, optax.sgd(0.0), 2, jax.random.key(0))
    step = functools.partial(
        train_step,
        model=model,
        tx=optax.sgd(0.0),
        schedule=lambda t: 0.0,
        transform=lambda x, key: x,
        key=jax.random.key(1),
    )
    _, plain = jax.jit(step)(state, batch)
    _, smoothed = jax.jit(functools.partial(step, label_smoothing=0.3))(state, batch)
    assert float(plain["loss"]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(smoothed["loss"]) == pytest.approx(1.2 * math.log(2), rel=1e-6)
    sums = jax.jit(functools.partial(eval_step, model=model, transform=lambda x: x))(state, batch)
    assert float(sums["loss_sum"]) == pytest.approx(4 * math.log(2), rel=1e-6)


def test_momenta_nested_deeper_in_the_optimiser_state_are_converted():
    """As in `optax.multi_transform`, whose per-label states sit in a dict."""
    from resnet_identity.training.train_state import convert_layout

    state = _layout_state("nested", seed=3)
    state = state.replace(opt_state={"inner_states": {"conv": {"trace": state.params}}, "count": state.step})
    converted = convert_layout(state, _layout_state("block"))
    for a, b in zip(jax.tree.leaves(converted.opt_state["inner_states"]), jax.tree.leaves(converted.params)):
        np.testing.assert_array_equal(a, b)
    assert converted.opt_state["count"] is state.step
