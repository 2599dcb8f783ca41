"""Parameter and multiply-add counts, computed from shapes alone (no FLOPs are run).

Parameters come from `jax.eval_shape(model.init)`. Multiply-adds are read off the traced
forward pass of the model built with JAX's own kernels (`kernels.JAX_DEFAULT`): every
convolution and matrix product in the jaxpr contributes (output elements) x (multiplies
per output), and a scan body counts `length` times.
Like the papers, this counts conv and FC multiply-adds only (v1 Table 1's "FLOPs").
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

from resnet_identity.models import kernels


def abstract_variables(model: nn.Module, image_size: int, batch: int = 1) -> Any:
    """The model's variables as `ShapeDtypeStruct`s."""
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def parameter_count(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _eqn_macs(eqn: Any) -> int:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        lhs, rhs = (v.aval for v in eqn.invars)
        out = eqn.outvars[0].aval
        spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
        kernel_spatial = math.prod(rhs.shape[d] for d in spec[2:])
        in_per_group = rhs.shape[spec[1]]
        return math.prod(out.shape) * kernel_spatial * in_per_group
    if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs.shape[d] for d in contract)
    return 0


def _jaxpr_macs(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for param in eqn.params.values():
            subs = param if isinstance(param, (tuple, list)) else (param,)
            for sub in subs:
                if isinstance(sub, jax_core.ClosedJaxpr):
                    total += repeat * _jaxpr_macs(sub.jaxpr)
                elif isinstance(sub, jax_core.Jaxpr):
                    total += repeat * _jaxpr_macs(sub)
    return total


def forward_macs(model: nn.Module, image_size: int, variables: Any | None = None) -> int:
    """Multiply-adds of one forward pass on one `image_size` x `image_size` image."""
    model = model.clone(kernels=kernels.JAX_DEFAULT)
    variables = variables if variables is not None else abstract_variables(model, image_size)
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images)
    return _jaxpr_macs(jaxpr.jaxpr)


def stage_table(model: nn.Module, image_size: int) -> list[tuple[str, int]]:
    """(top-level module, parameter count) rows in network order, then the total."""
    params = abstract_variables(model, image_size)["params"]
    order = ["stem"] + sorted(k for k in params if k.startswith("stage")) + ["final_bn", "fc"]
    rows = [(name, parameter_count(params[name])) for name in order if name in params]
    return rows + [("total", parameter_count(params))]
