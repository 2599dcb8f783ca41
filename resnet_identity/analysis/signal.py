"""Signal propagation through depth: per-unit forward and backward norms (v2 Sec. 3-4).

v2 Eq. 4-5: with identity shortcuts and f = identity, x_L = x_l + sum_i F(x_i), so
    dE/dx_l = dE/dx_L * (1 + d/dx_l sum_i F(x_i))
and the gradient of any deep unit reaches every shallower unit directly. With a scaled
shortcut x_{l+1} = lambda * x_l + F(x_l) (v2 Eq. 8-9) the direct term becomes
lambda^(L-l) dE/dx_L: exponentially small for lambda < 1, exponentially large for
lambda > 1. `unit_norms` measures both quantities on a real network:

- forward: the root-mean-square entry of each unit's input x_l;
- backward: the L2 norm of dE/dx_l over the batch, E the mean softmax cross-entropy.

How x_l and dE/dx_l are reached. The network runs unrolled (`scan=False`; a scanned
model is converted with `stacked_to_unrolled`), under a flax method interceptor that
sees every call of a `ResidualUnit`. The interceptor adds a perturbation p_l (all zeros)
to the unit's input and records the result. Since x_l + p_l is what the unit consumes,
dE/dp_l = dE/dx_l, so one `jax.value_and_grad` over the list of perturbations returns
every unit's input gradient, and the recorded inputs are the forward activations.
BatchNorm uses batch statistics (training mode), as in the papers' analysis of training.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_identity import models
from resnet_identity.data import get_dataset
from resnet_identity.models import PostActivation, PreActivation, ResidualUnit, ResNet, stacked_to_unrolled
from resnet_identity.training import trainer
from resnet_identity.training.train_state import create_train_state, cross_entropy


class ScaledShortcutPreActivation(PreActivation):
    """x_{l+1} = lambda * h(x_l) + F(x_l) with v2's pre-activation F and f = identity (v2 Eq. 8).

    Parameters are named as in `PreActivation`, so the same variables fit both.
    """

    shortcut_scale: float = 1.0

    def combine(self, x, shortcut, branch):
        del x
        return self.shortcut_scale * shortcut + branch


def comparison_models(
    depth: int, *, bottleneck: bool, num_classes: int = 10, scales: tuple[float, ...] = (0.5, 1.5)
) -> dict[str, ResNet]:
    """Plain, v1, v2 and lambda-scaled v2 CIFAR nets of one depth, keyed by a plot label.

    Basic units need depth 6n+2 (ResNet-110: n = 18), bottleneck units 9n+2 (ResNet-1001:
    n = 111). The plain net is the v1 stack without shortcuts (v1 Fig. 3 middle). The nets
    are unrolled (`scan=False`): everything here runs them unit by unit, and at the depths
    one trains on a CPU an unrolled step also compiles faster than a scanned one.
    """
    v1, v2 = ("cifar_resnet164", "cifar_preact164") if bottleneck else ("cifar_resnet110", "cifar_preact110")
    nets = {
        f"plain-{depth}": models.create_model(v1, num_classes=num_classes, depth=depth, unit="plain", scan=False),
        f"v1 ResNet-{depth}": models.create_model(v1, num_classes=num_classes, depth=depth, scan=False),
        f"v2 ResNet-{depth}": models.create_model(v2, num_classes=num_classes, depth=depth, scan=False),
    }
    for scale in scales:
        nets[f"v2, shortcut x{scale:g}"] = nets[f"v2 ResNet-{depth}"].clone(
            unit=ScaledShortcutPreActivation, unit_options={"shortcut_scale": scale}
        )
    return nets


def init_variables(model: ResNet, image_size: int = 32, seed: int = 0) -> Any:
    """The papers' initialisation (He fan-out convs, BN gamma 1), in the unrolled layout.

    Runs op by op on the unrolled net: on a CPU that takes a second even for ResNet-1001,
    where compiling the scanned init takes far longer.
    """
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    key = jax.random.key(seed)
    return model.clone(scan=False, remat=False).init({"params": key, "dropout": key}, images, train=False)


def unrolled(model: ResNet, variables: Any) -> tuple[ResNet, Any]:
    """The same network with one module per unit, and its variables in that layout."""
    return model.clone(scan=False, remat=False), stacked_to_unrolled(variables)


def unit_norms(
    model: ResNet, variables: Any, images: jax.Array, labels: jax.Array, *, shortcut_only: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(forward RMS of x_l, ||dE/dx_l||) for every residual unit l, in network order.

    `images` is an NHWC batch of at least 2 (BatchNorm statistics), `labels` its classes.
    `shortcut_only=True` detaches every residual branch's input (the gradient reaches x_l
    through shortcuts alone): the first term of v2 Eq. 5, dE/dx_L, or of Eq. 9,
    (prod lambda_i) dE/dx_L. It needs units that add shortcut and branch in a `combine`
    method (`PreActivation.combine`, `PostActivation.combine`), whose branch argument is
    detached. Norms are taken in float64,
    so an activation that grew past float32's square root still has a finite norm. The pass
    runs op by op: for one deep unrolled net (ResNet-1001) that is far quicker than compiling.
    """
    model, variables = unrolled(model, variables)

    def loss_and_inputs(perturbations):
        inputs, detached = [], []

        def intercept(next_fun, args, kwargs, context):
            module, method = context.module, context.method_name
            if shortcut_only and method == "combine" and isinstance(module, PostActivation | PreActivation):
                x, shortcut, branch = args
                detached.append(module.name)
                return next_fun(jax.lax.stop_gradient(x), shortcut, jax.lax.stop_gradient(branch))
            if method != "__call__" or not isinstance(module, ResidualUnit):
                return next_fun(*args, **kwargs)
            x = args[0] if perturbations is None else args[0] + perturbations[len(inputs)]
            inputs.append(x)
            return next_fun(x, *args[1:], **kwargs)

        with nn.intercept_methods(intercept):
            logits, _ = model.apply(
                variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
            )
        if shortcut_only and len(detached) != len(inputs):
            raise ValueError(
                f"{model.unit.__name__} does not add its shortcut and branch in a `combine` method "
                "(PreActivation.combine or PostActivation.combine); shortcut_only needs one."
            )
        return cross_entropy(logits, labels).mean(), inputs

    shapes = jax.eval_shape(lambda: loss_and_inputs(None)[1])
    zeros = [jnp.zeros(s.shape, s.dtype) for s in shapes]
    (_, inputs), grads = jax.value_and_grad(loss_and_inputs, has_aux=True)(zeros)
    forward = np.array([np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))) for x in inputs])
    backward = np.array([np.linalg.norm(np.asarray(g, np.float64)) for g in grads])
    return forward, backward


def train_briefly(model: ResNet, config: ml_collections.ConfigDict) -> Any:
    """Variables after `config.num_train_steps` SGD steps of `config`'s recipe and data.

    Uses the trainer's own step, optimiser and data stream, for a model that need not be in
    the registry (such as a lambda-scaled one); nothing is logged or checkpointed.
    """
    dataset = get_dataset(config)
    tx, schedule = trainer.build_optimizer(config)
    key = jax.random.key(config.seed)
    init_key, step_key = jax.random.split(key)
    state = create_train_state(model, tx, dataset.image_size, init_key)
    step = jax.jit(trainer.step_functions(config, model, tx, schedule, dataset, step_key)[0])
    batches = dataset.train_batches(
        global_batch_size=config.batch_size, start_step=0, seed=config.seed, process_index=0, process_count=1
    )
    for _ in range(config.num_train_steps):
        state, _ = step(state, next(batches))
    if int(state.nonfinite_step) >= 0:
        raise trainer.DivergenceError(f"Loss became NaN/Inf at step {int(state.nonfinite_step)}.")
    return {"params": state.params, "batch_stats": state.batch_stats}


def test_batch(config: ml_collections.ConfigDict, size: int) -> tuple[jax.Array, np.ndarray]:
    """The first `size` test images of `config.dataset`, normalised, and their labels."""
    dataset = get_dataset(config)
    batch = next(dataset.eval_batches(global_batch_size=size))
    return dataset.eval_transform(batch["image"]), batch["label"]
