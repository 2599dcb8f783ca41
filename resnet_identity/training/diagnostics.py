"""Live identity-mapping diagnostics: how far each stage's units are from the identity.

v2 Sec. 3 argues that a unit helps optimisation when it stays close to x_{l+1} = x_l + F(x_l)
with a small F, and Table 1's gated rows fail because g(x) throttles the shortcut or the
branch. With `config.diagnostics_every_steps = N` (0, the default, is off), every N steps
the trainer logs, per stage, to TensorBoard and metrics.jsonl (tag "diagnostics/..."):

- `stageK/branch_ratio`: the mean over the stage's units of ||F(x)|| / ||x||, each norm
  taken per example (then averaged), x the unit's input and F(x) its residual branch's
  output before it is combined with the shortcut;
- `stageK/gate`: for gated units (v2 Table 1 "exclusive" and "shortcut-only gating"), the
  mean of the gate g(x) = sigmoid(conv1x1(x) + b_g) over the stage's units and entries.

How F(x) is read without touching the units or the train step: a separate jitted forward
pass runs on a fixed batch of test images (BN in training mode, as the step computes it;
the state is not changed), under a flax method interceptor that `sow`s each unit's ratio
into the "intermediates" collection. Sowing works inside the scanned stack (`stack.py`
stacks every collection along the scan axis) and under remat. F(x) is the `branch`
argument of `combine` for v1's unit and Table 1's variants (`PostActivation.combine`),
and y - h(x) for units with nothing after the addition (pre-activation, Table 2(c)-(d)),
h(x) being the unit's shortcut output. Table 2(b) (BN after the addition) and plain nets
have no such F and report no ratio. Off, nothing is compiled and the step is unchanged.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_identity.models import PostActivation, PreActivation, ResidualUnit
from resnet_identity.models.ablations import Gate, ReLUBeforeAddition
from resnet_identity.models.shortcuts import Shortcut
from resnet_identity.training import parallel

COLLECTION = "intermediates"
# Units whose output is y = h(x) + F(x) itself (f = identity): F(x) = y - h(x).
IDENTITY_AFTER_ADDITION = (PreActivation, ReLUBeforeAddition)


def _ratio(branch: jax.Array, x: jax.Array) -> jax.Array:
    """Mean over the batch of ||F(x)|| / ||x||, per example, in float32."""
    norm = lambda a: jnp.sqrt(jnp.sum(jnp.square(a.astype(jnp.float32)), axis=(1, 2, 3)))
    return jnp.mean(norm(branch) / jnp.maximum(norm(x), 1e-12))


def _interceptor():
    """A flax method interceptor that sows each unit's branch ratio and each gate's mean
    (module docstring), for one trace of the network."""
    shortcuts = {}  # unit path -> h(x), from the unit's shortcut, read when the unit returns

    def intercept(next_fun, args, kwargs, context):
        module, method = context.module, context.method_name
        if method == "combine" and isinstance(module, PostActivation):
            x, _, branch = args
            module.sow(COLLECTION, "branch_ratio", _ratio(branch, x))
            return next_fun(*args, **kwargs)
        out = next_fun(*args, **kwargs)
        if method != "__call__":
            return out
        if isinstance(module, Gate):
            module.sow(COLLECTION, "gate", jnp.mean(out.astype(jnp.float32)))
        elif isinstance(module, Shortcut) and isinstance(module.parent, IDENTITY_AFTER_ADDITION):
            shortcuts[module.parent.scope.path] = out
        elif isinstance(module, IDENTITY_AFTER_ADDITION) and isinstance(module, ResidualUnit):
            module.sow(COLLECTION, "branch_ratio", _ratio(out - shortcuts.pop(module.scope.path), args[0]))
        return out

    return intercept


def _stage_means(intermediates: dict) -> dict[str, jax.Array]:
    """{"stageK/branch_ratio": mean over its units, "stageK/gate": ...} from the sown tree."""
    means = {}
    for stage, tree in intermediates.items():
        for name in ("branch_ratio", "gate"):
            leaves = [
                jnp.ravel(v)
                for path, v in jax.tree_util.tree_leaves_with_path(tree)
                if any(getattr(k, "key", None) == name for k in path)
            ]
            if leaves:
                means[f"{stage}/{name}"] = jnp.mean(jnp.concatenate(leaves))
    return means


def identity_measures(model: nn.Module, variables: Any, images: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
    """Per stage, the mean ||F(x)|| / ||x|| and gate value of `model` on `images` (BN in
    training mode; the updated statistics are dropped). Jit it; any layout works."""
    with nn.intercept_methods(_interceptor()):
        _, state = model.apply(
            variables, images, train=True, mutable=["batch_stats", COLLECTION], rngs={"dropout": rng}
        )
    sown = {k: v for k, v in state.get(COLLECTION, {}).items() if k.startswith("stage")}
    return _stage_means(sown)


class Diagnostics:
    """Logs `identity_measures` every `every` steps (`config.diagnostics_every_steps`) on a
    fixed batch of `batch_size` test images; a no-op when 0."""

    def __init__(
        self,
        every: int,
        model: nn.Module,
        dataset: Any,
        logger: Any,
        *,
        batch_size: int,
        seed: int,
        sharding: jax.sharding.Sharding,
        replicated: jax.sharding.Sharding,
    ):
        self.every, self.logger = every, logger
        if not self.every:
            return
        batch = next(
            dataset.eval_batches(
                global_batch_size=batch_size,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
        )
        self.images = parallel.global_batch(batch, sharding)["image"]
        self.rng = jax.random.key(seed)
        self.measure = jax.jit(
            lambda params, batch_stats, images, rng: identity_measures(
                model, {"params": params, "batch_stats": batch_stats}, dataset.eval_transform(images), rng
            ),
            out_shardings=replicated,
        )

    def maybe_log(self, step: int, state: Any) -> None:
        """After step `step`: logs the measures if `step` is a multiple of the interval."""
        if not self.every or step % self.every:
            return
        measures = parallel.to_host(self.measure(state.params, state.batch_stats, self.images, self.rng))
        self.logger.write(step, "diagnostics", {k: float(np.asarray(v)) for k, v in sorted(measures.items())})
