"""The operations of one residual unit, in execution order, read off its traced program.

v2 Fig. 4 draws five units that differ only in where BN, ReLU and the addition sit. Rather
than restate those drawings, `unit_ops` traces a unit of this codebase (`jax.make_jaxpr`)
and names what it finds, so the listing is what the code computes:

- every convolution and BatchNorm, by its flax module name (`conv1`, `bn2`, `shortcut/conv`)
  and shape, grouped from the primitives that flax's named scopes attribute to it;
- ReLU (`jax.nn.relu`, a `max(x, 0)` under a custom JVP), elementwise scaling, and the
  addition of the shortcut to the residual branch, at the unit's own level;
- "after addition" for whatever follows that addition (f in v2 Eq. 2).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from resnet_identity.models import ResidualUnit
from resnet_identity.models.layers import make_conv, make_norm


@dataclasses.dataclass(frozen=True)
class Op:
    """One step of a unit: its kind ("conv", "bn", "relu", "add", ...) and a readable label."""

    kind: str
    label: str
    after_addition: bool = False


def _submodule(eqn) -> str:
    """The unit's child module that a primitive belongs to ('conv1', 'shortcut'); '' if none.

    Flax names a scope "Class.method" for a method call and plain "name" for a submodule;
    the first component is the unit itself.
    """
    parts = [p for p in str(eqn.source_info.name_stack).split("/")[1:] if "." not in p]
    return parts[0] if parts else ""


def _nested(eqns):
    """The equations and, depth first, those of the jaxprs nested in them (jit, custom_jvp)."""
    for eqn in eqns:
        yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                yield from _nested(inner.eqns)


def _is_relu(eqn) -> bool:
    return eqn.primitive.name == "custom_jvp_call" and any(
        e.primitive.name == "max" for e in _nested(eqn.params["call_jaxpr"].jaxpr.eqns)
    )


def _conv_text(eqn) -> str:
    kh, kw, cin, cout = eqn.invars[1].aval.shape
    stride = eqn.params["window_strides"][0]
    return f"conv {kh}x{kw}, {cin}->{cout}" + (f", stride {stride}" if stride > 1 else "")


def _module_op(name: str, eqns) -> Op:
    """One op for all primitives of the submodule `name` (a unit's direct child)."""
    convs = [_conv_text(e) for e in _nested(eqns) if e.primitive.name == "conv_general_dilated"]
    has_norm = any(e.primitive.name == "rsqrt" for e in _nested(eqns))
    if name == "shortcut":
        text = (convs[0] + (" + BN" if has_norm else "")) if convs else "subsample + zero-pad channels (option A)"
        return Op("shortcut", f"shortcut: {text}")
    if name == "gate":
        return Op("gate", "gate: g(x) = sigmoid(conv1x1(x) + b_g)")
    if name.startswith("Dropout"):
        return Op("dropout", "dropout")
    if convs:
        return Op("conv", f"{name}: {convs[0]}")
    if has_norm:
        return Op("bn", f"{name}: BN")
    return Op("other", name)


def _unit_level_op(eqn) -> Op | None:
    if _is_relu(eqn):
        return Op("relu", "ReLU")
    shapes = [getattr(v.aval, "ndim", 0) for v in eqn.invars]
    if eqn.primitive.name == "add" and shapes == [4, 4]:
        return Op("add", "add: shortcut + residual branch")
    if eqn.primitive.name == "mul" and 4 in shapes and 0 in shapes:
        scalar = next((v for v in eqn.invars if getattr(v.aval, "ndim", 0) == 0), None)
        value = getattr(scalar, "val", None)
        return Op("scale", "scale" + (f" x{float(value):g}" if value is not None else ""))
    if eqn.primitive.name == "mul" and shapes == [4, 4]:
        return Op("scale", "multiply (gate)")
    return None


def unit_ops(unit: ResidualUnit, input_shape: tuple[int, int, int, int]) -> list[Op]:
    """The ops of `unit` on an NHWC input of `input_shape`, in execution order.

    The unit is traced in training mode (batch-statistics BN, active dropout) with JAX's own
    convolution and BatchNorm, whatever `conv` and `norm` it was built with.
    """
    unit = unit.clone(
        conv=make_conv(dtype=jnp.float32), norm=make_norm(train=True, group_size=None, dtype=jnp.float32), train=True
    )
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    key = jax.random.key(0)
    variables = jax.eval_shape(lambda x: unit.init({"params": key, "dropout": key}, x), x)
    jaxpr = jax.make_jaxpr(lambda v, x: unit.apply(v, x, mutable=["batch_stats"], rngs={"dropout": key}))(
        variables, x
    ).jaxpr
    ops: list[Op] = []
    added = False
    group_path, group = "", []

    def flush():
        if group_path:
            op = _module_op(group_path, group)
            ops.append(dataclasses.replace(op, after_addition=added))

    for eqn in jaxpr.eqns:
        path = _submodule(eqn)
        if path != group_path:
            flush()
            group_path, group = path, []
        if path:
            group.append(eqn)
            continue
        op = _unit_level_op(eqn)
        if op is not None:
            ops.append(dataclasses.replace(op, after_addition=added))
            added = added or op.kind == "add"
    flush()
    return ops


def format_ops(ops: list[Op]) -> str:
    """A numbered listing, with the addition and what follows it marked."""
    lines = []
    for i, op in enumerate(ops, 1):
        where = "  (after addition)" if op.after_addition else ""
        lines.append(f"{i:>2}. {op.label}{where}")
    return "\n".join(lines)
