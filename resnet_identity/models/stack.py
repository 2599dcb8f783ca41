"""A run of identical residual units: scanned (the default) or unrolled.

Every stage of a ResNet is one "first" unit (which may stride, project or pre-activate
for both paths) followed by n-1 identical units. `UnitStack` applies those n-1 units.

- `scan=True` traces and compiles one unit and loops over stacked parameters
  (`nn.scan`), so init and compile time stay flat with depth: ResNet-1001's 330
  repeated units cost about what ResNet-164's 51 do.
- `scan=False` unrolls a Python loop, one module per unit (`unit0`, `unit1`, ...).
- `remat` rematerialises activations in the backward pass (`jax.checkpoint`). Without
  it a unit keeps ~4.7x its input in activations (ResNet-1001 at batch 128: 29.7 GiB).
  - "unit" keeps each unit's input and recomputes the unit once: 6.4 GiB, since
    330 inputs are still kept.
  - "block" (what `remat=True` selects) keeps one input per block of L units and
    recomputes a block's forward pass once, keeping all of that one block's
    activations meanwhile; L ~ sqrt(n / 4.7) minimises n/L + 4.7 L. Memory O(sqrt n)
    at the compute of "unit" (one extra forward pass): 1.8 GiB.
  - "nested" uses blocks of ~sqrt(n) units with per-unit remat inside: least memory
    (1.0 GiB) but two extra forward passes.
  Unrolled (`scan=False`), every scheme rematerialises per unit.

The stacked and unrolled layouts hold the same numbers; `stacked_to_unrolled` and
`unrolled_to_stacked` convert between them.

Why a scanned gradient was 7-10x slower than the unrolled one on CPU, and the fix:
XLA:CPU runs a convolution on its fast library kernels only in the canonical form (input
NHWC, kernel HWIO, output NHWC); any other form is emitted as a naive loop nest. Its
`ConvCanonicalization` pass rewrites other forms with transposes, but only for
convolutions in the entry computation, not inside while-loop bodies. A forward conv is
canonical, but JAX's transpose rules give the input gradient a kernel in HWOI form
(`b01f_01oi->b01f`) and the kernel gradient batch/feature-swapped operands
(`f01b_i01o->01bf`). Unrolled, those are canonicalised; scanned, they sit in the loop body
and run naively. `conv_with_canonical_grads`, given to `nn.Conv(conv_general_dilated=...)`
where `layers.conv` builds the convolutions, writes both gradient convolutions in
canonical form itself, with the transposes made explicit, so it makes no difference where
they are traced (benchmarks/RESULTS.md has the measurements).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ModuleDef = Any

REMAT_SCHEMES = ("none", "unit", "block", "nested")
REMAT_OPTIONS = (False, True) + REMAT_SCHEMES
# Activations a pre-act bottleneck unit keeps for its backward pass, in multiples of its
# input: 29.7 GiB (no remat) / 6.4 GiB (inputs only) for ResNet-1001 at batch 128.
ACTIVATIONS_PER_INPUT = 4.7


def resolve_remat(remat: bool | str | None) -> str:
    """Maps the `remat` override to a scheme name: True -> "block", False -> "none"."""
    if remat is True:
        return "block"
    if remat is False or remat is None:
        return "none"
    if remat in REMAT_SCHEMES:
        return remat
    raise ValueError(f"remat={remat!r}; choose one of {REMAT_OPTIONS}.")


_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _nhwc_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int],
               padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


def _nhwc_conv_fwd(x, w, strides, padding):
    return _nhwc_conv(x, w, strides, padding), (x, w)


def _canonical_grads(strides, padding, x, w, g):
    """Both gradients as NHWC/HWIO convolutions; the paddings are JAX's transpose rules'."""
    kernel, size_in = w.shape[:2], x.shape[1:3]
    dilated_out = [(o - 1) * s + 1 for o, s in zip(g.shape[1:3], strides)]
    dx_padding = [(k - 1 - lo, i - d + lo) for k, (lo, _), i, d in zip(kernel, padding, size_in, dilated_out)]
    flipped = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)  # HWIO of the transposed conv
    dx = lax.conv_general_dilated(g, flipped, (1, 1), dx_padding, lhs_dilation=strides, dimension_numbers=_NHWC)
    if kernel == (1, 1) and padding == ((0, 0), (0, 0)):
        # A 1x1 kernel's gradient is one matrix product over (n, h, w). XLA:CPU transposes
        # its left operand to put (n, h, w) minor, so make that the one with fewer channels.
        strided = x[:, ::strides[0], ::strides[1], :][:, :g.shape[1], :g.shape[2], :]
        contract = (((0, 1, 2), (0, 1, 2)), ((), ()))
        if strided.shape[-1] <= g.shape[-1]:
            dw = lax.dot_general(strided, g, contract)
        else:
            dw = lax.dot_general(g, strided, contract).T
        return dx, dw.reshape(w.shape)
    # dw[i, j, c, o] = sum_{n, t} x[n, s t + i, c] g[n, t, o]: C acts as the batch, N as the feature.
    dw_padding = [(lo, d - i + k - 1 - lo) for k, (lo, _), i, d in zip(kernel, padding, size_in, dilated_out)]
    dw = lax.conv_general_dilated(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), (1, 1),
                                  dw_padding, rhs_dilation=strides, dimension_numbers=_NHWC)
    return dx, jnp.transpose(dw, (1, 2, 0, 3))


def _nhwc_conv_bwd(strides, padding, residuals, g):
    x, w = residuals

    def jax_grads(x, w, g):
        return jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC),
                       x, w)[1](g)

    # Only XLA:CPU needs the rewrite; elsewhere the compiler picks layouts for JAX's own form.
    return lax.platform_dependent(x, w, g, cpu=functools.partial(_canonical_grads, strides, padding),
                                  default=jax_grads)


_nhwc_conv.defvjp(_nhwc_conv_fwd, _nhwc_conv_bwd)


def conv_with_canonical_grads(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                              padding: Any, lhs_dilation: Sequence[int] | None = None,
                              rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                              feature_group_count: int = 1, batch_group_count: int = 1,
                              precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """`lax.conv_general_dilated` whose gradient convolutions are canonical on XLA:CPU.

    A drop-in for `nn.Conv(conv_general_dilated=...)`. Same forward; the same gradients up
    to float rounding (a 1x1 kernel's is a matrix product): the
    gradients are computed by the convolutions JAX's transpose rules would emit, with their
    operands transposed into NHWC/HWIO (see the module docstring for why that matters).
    Only undilated, ungrouped 2-D NHWC/HWIO convolutions with explicit padding (all this
    codebase builds) take that path; anything else is passed to `lax.conv_general_dilated`.
    """
    ones = (1,) * (lhs.ndim - 2)
    canonical = (
        lhs.ndim == 4
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
        and tuple(lhs_dilation or ones) == ones
        and tuple(rhs_dilation or ones) == ones
        and feature_group_count == batch_group_count == 1
        and precision is None
        and preferred_element_type is None
        and not isinstance(padding, str)
    )
    if not canonical:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count,
                                        precision, preferred_element_type)
    return _nhwc_conv(lhs, rhs, tuple(window_strides), tuple((int(lo), int(hi)) for lo, hi in padding))


def nested_block_length(length: int) -> int:
    """Units per block for the nested scheme: the divisor of `length` nearest sqrt(length).

    Blocks must divide the run evenly to share one stacked parameter layout; for a prime
    run the block is the whole run (degrading to per-unit remat inside one block).
    """
    target = math.sqrt(length)
    divisors = [d for d in range(1, length + 1) if length % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


def block_length(length: int) -> int:
    """Units per block for the "block" scheme: the divisor L of `length` minimising the
    activations kept, length / L block inputs plus one block's 4.7 L (110 units: L = 5)."""
    divisors = [d for d in range(1, length + 1) if length % d == 0]
    return min(divisors, key=lambda d: length / d + ACTIVATIONS_PER_INPUT * d)


def _levels(scheme: str, length: int) -> tuple[tuple[int, bool], ...]:
    """(iterations, rematerialise each iteration) per loop level, outermost first."""
    if scheme in ("none", "unit"):
        return ((length, scheme == "unit"),)
    block = block_length(length) if scheme == "block" else nested_block_length(length)
    return ((length // block, True), (block, scheme == "nested"))


class _Step(nn.Module):
    """Adapts a unit to the (carry, x) -> (carry, y) signature that `nn.scan` needs."""

    unit: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        return self.unit(name="unit")(x), None


class _Block(nn.Module):
    """One iteration of an outer loop: the inner loop levels, scanned."""

    unit: ModuleDef
    levels: tuple[tuple[int, bool], ...]
    unroll: int

    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        return _loop(self.unit, self.levels, self.unroll)(x, None)


def _loop(unit: ModuleDef, levels: tuple[tuple[int, bool], ...], unroll: int) -> nn.Module:
    """Nested `nn.scan`s, named "blocks" (outer) and "units" (innermost)."""
    (length, remat), inner = levels[0], levels[1:]
    body = _Block if inner else _Step
    if remat:
        body = nn.remat(body, prevent_cse=False)  # scan already keeps iterations apart
    scanned = nn.scan(
        body,
        variable_axes={True: 0},
        split_rngs={True: True},
        length=length,
        unroll=1 if inner else min(unroll, length),
    )
    if inner:
        return scanned(unit, inner, unroll, name="blocks")
    return scanned(unit, name="units")


class UnitStack(nn.Module):
    """`length` applications of `unit` (a partial with everything but `name` bound)."""

    unit: ModuleDef
    length: int
    scan: bool = True
    remat: bool | str = False
    unroll: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scheme = resolve_remat(self.remat)
        if self.length == 0:
            return x
        if not self.scan:
            unit = nn.remat(self.unit.func, prevent_cse=True) if scheme != "none" else self.unit.func
            for i in range(self.length):
                x = unit(*self.unit.args, **self.unit.keywords, name=f"unit{i}")(x)
            return x
        x, _ = _loop(self.unit, _levels(scheme, self.length), self.unroll)(x, None)
        return x


def _is_stacked_run(tree: Any) -> bool:
    return isinstance(tree, dict) and set(tree) in ({"units"}, {"blocks"})


def stacked_to_unrolled(variables: Any) -> Any:
    """Converts every scanned `UnitStack` in a variable tree to the `unit{i}` layout."""
    if not isinstance(variables, dict):
        return variables
    if _is_stacked_run(variables):
        if "blocks" in variables:
            inner = variables["blocks"]["units"]["unit"]
            flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), inner)
        else:
            flat = variables["units"]["unit"]
        length = jax.tree.leaves(flat)[0].shape[0]
        return {f"unit{i}": jax.tree.map(lambda a, i=i: a[i], flat) for i in range(length)}
    return {k: stacked_to_unrolled(v) for k, v in variables.items()}


def unrolled_to_stacked(variables: Any, *, nested: bool = False, remat: bool | str | None = None) -> Any:
    """Inverse of `stacked_to_unrolled`, in the layout of the `remat` scheme.

    `nested=True` is short for `remat="nested"`.
    """
    scheme = "nested" if nested else resolve_remat(remat)
    if not isinstance(variables, dict):
        return variables
    if variables and all(k.startswith("unit") and k[4:].isdigit() for k in variables):
        units = [variables[f"unit{i}"] for i in range(len(variables))]
        flat = jax.tree.map(lambda *a: jnp.stack(a), *units)
        levels = _levels(scheme, len(units))
        if len(levels) == 1:
            return {"units": {"unit": flat}}
        blocks = jax.tree.map(lambda a: a.reshape((-1, levels[1][0]) + a.shape[1:]), flat)
        return {"blocks": {"units": {"unit": blocks}}}
    return {k: unrolled_to_stacked(v, remat=scheme) for k, v in variables.items()}
