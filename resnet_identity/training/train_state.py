"""The training state and the pure step functions that update it.

`train_step` is one SGD step of the papers' recipe: on-device augmentation, the forward pass
in training mode (BN batch statistics, optionally per group), softmax cross-entropy, and the
optax update. A non-finite loss or gradient norm leaves the state unchanged and records the
step in `nonfinite_step`, so the host can stop with the last good state intact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resnet_identity import models


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    # -1 while every step so far was finite; else the first step (counted from 1, as the logs
    # count) whose loss or gradient norm was not.
    nonfinite_step: jax.Array


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, image_size: int, rng: jax.Array
) -> TrainState:
    """Initialises parameters (papers' init), BN statistics and the optimiser state."""
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = model.init({"params": rng, "dropout": rng}, images, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        nonfinite_step=jnp.full((), -1, jnp.int32),
    )


def convert_layout(state: TrainState, like: Any) -> TrainState:
    """`state` with its parameters, BN statistics and optimiser moments (every subtree of the
    optimiser state shaped like the parameters) rearranged into the layout of `like`: a
    `TrainState` (or its `jax.eval_shape`) of the same model under other `scan`/`remat`
    overrides, or a checkpoint's tree metadata. See `models.convert_layout`."""
    if isinstance(like, TrainState):
        params_like, stats_like = like.params, like.batch_stats
    else:
        params_like, stats_like = like["params"], like["batch_stats"]
    params_structure = jax.tree.structure(state.params)

    def convert(tree: Any) -> Any:  # the parameter-shaped dicts, however deep in the optimiser state
        if not isinstance(tree, dict):
            return tree
        if jax.tree.structure(tree) == params_structure:
            return models.convert_layout(tree, params_like)
        return jax.tree.map(convert, tree, is_leaf=lambda x: x is not tree and isinstance(x, dict))

    return state.replace(
        params=models.convert_layout(state.params, params_like),
        batch_stats=models.convert_layout(state.batch_stats, stats_like),
        opt_state=jax.tree.map(convert, state.opt_state, is_leaf=lambda x: isinstance(x, dict)),
    )


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Softmax cross-entropy per example. With `label_smoothing` e, the target is 1 - e on the
    label plus e spread evenly over every class (Szegedy et al. 2016, Sec. 7); the papers use 0."""
    if not label_smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: Callable[[jax.Array], jax.Array],
    transform: Callable[[jax.Array, jax.Array], jax.Array],
    key: jax.Array,
    label_smoothing: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step. Randomness is `fold_in(key, step)`, so a resumed run draws the same numbers.
    The loss (and its logged value) is smoothed by `label_smoothing`; evaluation's is not."""
    step_key = jax.random.fold_in(key, state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    images = transform(batch["image"], augment_key)
    labels = batch["label"]

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_key},
        )
        return cross_entropy(logits, labels, label_smoothing).mean(), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    stepped = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    # Keep the last good state on a non-finite step; only the step counter and the flag move.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), stepped, state)
    new_state = new_state.replace(
        step=state.step + 1,
        nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite, state.step + 1, state.nonfinite_step),
    )
    metrics = {
        "loss": loss,
        "error": jnp.mean(jnp.argmax(logits, -1) != labels),
        "grad_norm": grad_norm,
        "learning_rate": schedule(state.step),
    }
    return new_state, metrics


def eval_step(
    state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module, transform: Callable[[jax.Array], jax.Array]
) -> dict[str, jax.Array]:
    """Sums of loss and errors over the real (mask=True) examples of one batch."""
    images, labels = batch["image"], batch["label"]  # images [b, views, H, W, 3] for a multi-crop test
    views = images.shape[1] if images.ndim == 5 else 1
    logits = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        transform(images.reshape((-1, *images.shape[-3:]))),
        train=False,
    )
    # log of the views' mean softmax output (fb.resnet.torch's 10-crop test); one view: log_softmax.
    log_probs = jax.nn.logsumexp(jax.nn.log_softmax(logits).reshape(len(images), views, -1), axis=1) - jnp.log(views)
    label_log_prob = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    ranked_above = jnp.sum(log_probs > label_log_prob[:, None], axis=-1)
    mask = batch["mask"].astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(-label_log_prob * mask),
        "error_sum": jnp.sum((jnp.argmax(log_probs, -1) != labels) * mask),
        "top5_error_sum": jnp.sum((ranked_above >= 5) * mask),
        "count": jnp.sum(mask),
    }
