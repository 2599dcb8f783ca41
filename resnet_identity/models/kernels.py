"""How each platform computes the units' convolutions and BatchNorm: the same functions and
gradients as JAX's own, faster where a measurement said so.

The units compute the papers' functions with an injected `conv` and `norm`; the network
(`ResNet.kernels`) picks one `Kernels` per platform and builds those partials from it. Nothing
else knows the kernels exist: the summary and the analyses build their models with
`JAX_DEFAULT`, JAX's own convolution and autodiff BatchNorm. The figures behind each choice are in
benchmarks/results/2026-12-03_models.md and the dated logs it cites.

- `CPU`: every gradient convolution in canonical form, 1x1 convolutions as matrix products,
  and BatchNorm's closed-form gradient.
  XLA:CPU runs a convolution on its fast library kernels only in the canonical form (input
  NHWC, kernel HWIO, output NHWC); any other form is emitted as a naive loop nest. Its
  `ConvCanonicalization` pass rewrites other forms with transposes, but only in the entry
  computation, not inside while-loop bodies. JAX's transpose rules give the input gradient
  a kernel in HWOI form (`b01f_01oi->b01f`) and the kernel gradient batch/feature-swapped
  operands (`f01b_i01o->01bf`): unrolled, those are canonicalised; in a scan they sit in the
  loop body and run naively. `_canonical_grads` writes both gradient convolutions in
  canonical form itself, with the transposes made explicit, so it makes no difference where
  they are traced.
  A 1x1 convolution (two of a bottleneck unit's three, and every projection) is one matrix
  product over the flattened (n, h, w) rows, of every stride-th row and column when strided;
  XLA:CPU runs that product faster than the same convolution, so its forward pass and both
  gradients are products.
- `PRODUCTS_1X1` (CUDA GPUs, `product_platforms`): 1x1 convolutions and their gradients as
  products, in the order the compiler picks; XLA:GPU autotunes them for these tall, narrow
  shapes and fuses the ReLU before and the residual addition after them, where a cuDNN
  convolution runs alone. Other convolutions are JAX's own. BatchNorm's closed form, with
  which every GPU figure was measured.
- `CLOSED_FORM_BN`: JAX's own convolutions and BatchNorm's closed form: a CUDA GPU told not
  to take products (`pointwise_products`).
- `JAX_DEFAULT`: JAX's own convolution and autodiff BatchNorm; ROCm and TPU, never timed, get it.

BatchNorm's closed-form gradient: autodiff of `layers.normalise` keeps several full-size
intermediates and emits many small reductions; the closed form keeps only x and per-channel
statistics, the same numbers to float rounding. On CPU it made a step faster and smaller
(measured); on a GPU every figure was taken with it. ROCm and TPU keep JAX's own.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from resnet_identity.models import layers

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


@dataclasses.dataclass(frozen=True)
class Kernels:
    """One platform's implementations of the two operations the units inject.

    Attributes:
      name: what the choice is called in a benchmark's label.
      conv: `lax.conv_general_dilated`'s signature, for `nn.Conv(conv_general_dilated=...)`.
      normalise: `layers.normalise`'s signature: (grouped x, scale, bias, epsilon) -> (y, mean, var).
    """

    name: str
    conv: Callable[..., jax.Array]
    normalise: Callable[..., tuple[jax.Array, jax.Array, jax.Array]]


def _is_pointwise(w: jax.Array, padding: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    return w.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0))


def _pointwise(x: jax.Array, w: jax.Array, strides: tuple[int, int] = (1, 1)) -> jax.Array:
    """A 1x1 convolution as one matrix product over the (n, h, w) rows it reads."""
    x = x[:, :: strides[0], :: strides[1], :]
    y = lax.dot_general(x.reshape(-1, x.shape[-1]), w.reshape(w.shape[2:]), (((1,), (0,)), ((), ())))
    return y.reshape(x.shape[:-1] + (w.shape[-1],))


def _spread(dx: jax.Array, strides: tuple[int, int], size: tuple[int, int]) -> jax.Array:
    """Places a strided 1x1 convolution's input gradient back on the rows and columns it
    read, with zeros between them and after the last: the transpose of `x[:, ::s, ::s]`."""
    if strides == (1, 1):
        return dx
    config = [(0, 0, 0)] + [(0, i - (d - 1) * s - 1, s - 1) for i, d, s in zip(size, dx.shape[1:3], strides)]
    return lax.pad(dx, jnp.zeros((), dx.dtype), config + [(0, 0, 0)])


def _pointwise_grads(strides, x, w, g, *, narrow_left=False):
    """Both gradients of a 1x1 convolution as matrix products: g w^T, placed back on the rows
    and columns the convolution read, and x^T g over the flattened (n, h, w) rows.

    XLA:CPU's dot takes a transposed left operand as it is, where contracting the three
    leading axes of the 4-D arrays made it copy one of them into a transposed layout first.
    It is also faster with the narrower operand on the left, so with `narrow_left` a wide x
    gives (g^T x)^T. XLA would fold that transpose back into the slow product; the barrier
    keeps the product as written. Elsewhere the compiler picks the order.
    """
    dx = _spread(_pointwise(g, jnp.swapaxes(w, 2, 3)), strides, x.shape[1:3])
    read = x[:, :: strides[0], :: strides[1], :]
    x2, g2 = read.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    rows = (((0,), (0,)), ((), ()))
    if narrow_left and x2.shape[1] > g2.shape[1]:
        dw = lax.optimization_barrier(lax.dot_general(g2, x2, rows)).T
    else:
        dw = lax.dot_general(x2, g2, rows)
    return dx, dw.reshape(w.shape)


def _canonical_grads(strides, padding, x, w, g):
    """Both gradients as NHWC/HWIO convolutions; the paddings are JAX's transpose rules'."""
    kernel, size_in = w.shape[:2], x.shape[1:3]
    flipped = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)  # HWIO of the transposed conv
    dilated_out = [(o - 1) * s + 1 for o, s in zip(g.shape[1:3], strides)]
    dx_padding = [(k - 1 - lo, i - d + lo) for k, (lo, _), i, d in zip(kernel, padding, size_in, dilated_out)]
    dx = lax.conv_general_dilated(g, flipped, (1, 1), dx_padding, lhs_dilation=strides, dimension_numbers=_NHWC)
    # dw[i, j, c, o] = sum_{n, t} x[n, s t + i, c] g[n, t, o]: C acts as the batch, N as the feature.
    dw_padding = [(lo, d - i + k - 1 - lo) for k, (lo, _), i, d in zip(kernel, padding, size_in, dilated_out)]
    dw = lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)),
        jnp.transpose(g, (1, 2, 0, 3)),
        (1, 1),
        dw_padding,
        rhs_dilation=strides,
        dimension_numbers=_NHWC,
    )
    return dx, jnp.transpose(dw, (1, 2, 0, 3))


def _library_conv(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _nhwc_conv(
    x: jax.Array,
    w: jax.Array,
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    canonical: bool,
) -> jax.Array:
    """A 1x1 convolution as a product, any other as the library's; `canonical` says whether
    the gradient convolutions are rewritten into canonical form (XLA:CPU) or JAX's own."""
    if _is_pointwise(w, padding):
        return _pointwise(x, w, strides)
    return _library_conv(x, w, strides, padding)


def _nhwc_conv_fwd(x, w, strides, padding, canonical):
    return _nhwc_conv(x, w, strides, padding, canonical), (x, w)


def _nhwc_conv_bwd(strides, padding, canonical, residuals, g):
    x, w = residuals
    if _is_pointwise(w, padding):
        return _pointwise_grads(strides, x, w, g, narrow_left=canonical)
    if canonical:
        return _canonical_grads(strides, padding, x, w, g)
    return jax.vjp(lambda x, w: _library_conv(x, w, strides, padding), x, w)[1](g)


_nhwc_conv.defvjp(_nhwc_conv_fwd, _nhwc_conv_bwd)


def _fast_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    canonical: bool,
) -> jax.Array:
    """`lax.conv_general_dilated`, with 1x1 products and (if `canonical`) canonical gradient
    convolutions for the undilated, ungrouped 2-D NHWC/HWIO convolutions with explicit padding
    that this codebase builds; anything else is passed to `lax.conv_general_dilated`."""
    ones = (1,) * (lhs.ndim - 2)
    supported = (
        lhs.ndim == 4
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
        and tuple(lhs_dilation or ones) == ones
        and tuple(rhs_dilation or ones) == ones
        and feature_group_count == batch_group_count == 1
        and precision is None
        and preferred_element_type is None
        and not isinstance(padding, str)
    )
    if not supported:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )
    return _nhwc_conv(lhs, rhs, tuple(window_strides), tuple((int(lo), int(hi)) for lo, hi in padding), canonical)


canonical_conv = functools.partial(_fast_conv, canonical=True)
product_conv = functools.partial(_fast_conv, canonical=False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def closed_form_normalise(x, scale, bias, epsilon):
    """`layers.normalise` with the textbook closed-form gradient. `x` stays in its own dtype
    (bfloat16 under mixed precision) in what is kept for the backward pass; the arithmetic
    is float32."""
    y, mean, var, _ = layers.normalise_terms(x, scale, bias, epsilon)
    return y, mean, var


def _normalise_fwd(x, scale, bias, epsilon):
    y, mean, var, rstd = layers.normalise_terms(x, scale, bias, epsilon)
    return (y, mean, var), (x, mean, rstd, scale)


def _normalise_bwd(epsilon, residuals, cotangents):
    del epsilon
    x_in, mean, rstd, scale = residuals
    x, g = x_in.astype(jnp.float32), cotangents[0].astype(jnp.float32)
    g_mean, g_var = cotangents[1:]
    axes = tuple(range(1, x.ndim - 1))
    n = math.prod(x.shape[a] for a in axes)
    xhat = (x - mean) * rstd
    sum_g = g.sum(axes, keepdims=True)
    sum_gx = (g * xhat).sum(axes, keepdims=True)
    dx = scale * rstd / n * (n * g - sum_g - xhat * sum_gx) + g_mean / n + g_var * 2.0 * (x - mean) / n
    return (
        dx.astype(x_in.dtype),
        sum_gx.sum((0,) + axes).reshape(scale.shape),
        sum_g.sum((0,) + axes).reshape(scale.shape),
    )


closed_form_normalise.defvjp(_normalise_fwd, _normalise_bwd)


JAX_DEFAULT = Kernels("jax_default", lax.conv_general_dilated, layers.normalise)
CLOSED_FORM_BN = Kernels("closed_form_bn", lax.conv_general_dilated, closed_form_normalise)
PRODUCTS_1X1 = Kernels("products_1x1", product_conv, closed_form_normalise)
CPU = Kernels("cpu", canonical_conv, closed_form_normalise)

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
# Lowering platforms besides the CPU whose 1x1 convolutions are products (module docstring).
_PRODUCT_PLATFORMS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "product_platforms", default=("cuda",)
)


def product_platforms() -> tuple[str, ...]:
    """The platforms besides the CPU whose 1x1 convolutions are products here: ("cuda",)
    unless `pointwise_products` says otherwise."""
    return _PRODUCT_PLATFORMS.get()


@contextlib.contextmanager
def pointwise_products(platforms: Sequence[str]) -> Iterator[None]:
    """Within the block (this thread or task only), `platforms` are those whose 1x1
    convolutions are products (the CPU's always are): for timing both forms in one process.
    A model picks its kernels when traced, so a function jitted inside the block must also
    be lowered there."""
    unknown = set(platforms) - set(PLATFORMS)
    if unknown:
        raise ValueError(f"unknown platforms {sorted(unknown)}; choose from {', '.join(PLATFORMS)}.")
    token = _PRODUCT_PLATFORMS.set(tuple(p for p in platforms if p != "cpu"))
    try:
        yield
    finally:
        _PRODUCT_PLATFORMS.reset(token)


def for_platform(platform: str) -> Kernels:
    """The kernels of a lowering platform ("cpu", "cuda", "rocm" or "tpu")."""
    if platform == "cpu":
        return CPU
    if platform in product_platforms():
        return PRODUCTS_1X1
    return CLOSED_FORM_BN if platform == "cuda" else JAX_DEFAULT


def current_platform() -> str:
    """The default backend as lowering names it: "cpu", "cuda", "rocm" or "tpu"."""
    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    return "rocm" if "rocm" in jax.devices()[0].client.platform_version.lower() else "cuda"
