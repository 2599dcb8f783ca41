"""A convolution whose gradient convolutions XLA:CPU runs on its fast kernels, in a loop too,
and whose 1x1 form is a matrix product where that is faster (CPU, CUDA GPUs).

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

A 1x1 convolution (two of a bottleneck unit's three, and every projection shortcut) is one
matrix product over the flattened (n, h, w) rows, of every stride-th row and column when it
is strided, and XLA:CPU runs that product (on YNNPACK) 2-3x faster than the same
convolution: 32768x64 by 64x16 in 0.41 ms against 1.23 ms. On CPU its forward pass, input
gradient and kernel gradient are therefore all products.

The platforms in `PRODUCT_PLATFORMS` (CUDA GPUs) take products too, in the order the
compiler picks. XLA:GPU autotunes them for these tall, narrow shapes (131072 x 64 by 64 x 16
in a CIFAR bottleneck at batch 128) and runs them as Triton fusions that take in the ReLU
before the product and the residual addition after the unit's last one; a cuDNN convolution
runs alone. On an H200, bf16, a scanned ResNet-1001 step at batch 128 went from 106.9 to
85.9 ms, ResNet-50's unrolled step at batch 256 from 36.0 to 35.3 ms, and the gradients of
a bottleneck network agree with the convolutions' to 9e-7 (relative, at "highest"
precision; benchmarks/RESULTS.md, "7. GPU"). `pointwise_products` changes the set while a
model is traced, for side-by-side timings.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))

# Lowering platforms ("cuda", "rocm", "tpu") besides the CPU whose 1x1 convolutions, and both
# their gradients, are matrix products (module docstring); the CPU's always are. ROCm and TPU
# have not been timed, so they keep their library convolutions.
PRODUCT_PLATFORMS: tuple[str, ...] = ("cuda",)


@contextlib.contextmanager
def pointwise_products(platforms: Sequence[str]) -> Iterator[None]:
    """Within the block, `PRODUCT_PLATFORMS` is `platforms` (the CPU takes products anyway):
    for timing both forms in one process. Tracing reads it, so a function jitted inside the
    block must also be lowered there."""
    global PRODUCT_PLATFORMS
    unknown = set(platforms) - {"cpu", "cuda", "rocm", "tpu"}
    if unknown:
        raise ValueError(f"unknown platforms {sorted(unknown)}; choose from cpu, cuda, rocm, tpu.")
    saved, PRODUCT_PLATFORMS = PRODUCT_PLATFORMS, tuple(p for p in platforms if p != "cpu")
    try:
        yield
    finally:
        PRODUCT_PLATFORMS = saved


def _is_pointwise(w: jax.Array, padding: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    return w.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0))


def _pointwise(x: jax.Array, w: jax.Array, strides: tuple[int, int] = (1, 1)) -> jax.Array:
    """A 1x1 convolution as one matrix product over the (n, h, w) rows it reads."""
    x = x[:, ::strides[0], ::strides[1], :]
    y = lax.dot_general(x.reshape(-1, x.shape[-1]), w.reshape(w.shape[2:]), (((1,), (0,)), ((), ())))
    return y.reshape(x.shape[:-1] + (w.shape[-1],))


def _spread(dx: jax.Array, strides: tuple[int, int], size: tuple[int, int]) -> jax.Array:
    """Places a strided 1x1 convolution's input gradient back on the rows and columns it
    read, with zeros between them and after the last: the transpose of `x[:, ::s, ::s]`."""
    if strides == (1, 1):
        return dx
    config = [(0, 0, 0)] + [(0, i - (d - 1) * s - 1, s - 1) for i, d, s in zip(size, dx.shape[1:3], strides)]
    return lax.pad(dx, jnp.zeros((), dx.dtype), config + [(0, 0, 0)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _nhwc_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int],
               padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    conv = functools.partial(lax.conv_general_dilated, window_strides=strides, padding=padding,
                             dimension_numbers=_NHWC)
    if _is_pointwise(w, padding):  # a product on CPU and `PRODUCT_PLATFORMS` (module docstring)
        product = functools.partial(_pointwise, strides=strides)
        return lax.platform_dependent(x, w, cpu=product, **dict.fromkeys(PRODUCT_PLATFORMS, product), default=conv)
    return conv(x, w)


def _nhwc_conv_fwd(x, w, strides, padding):
    return _nhwc_conv(x, w, strides, padding), (x, w)


def _pointwise_grads(strides, x, w, g, *, narrow_left=False):
    """Both gradients of a 1x1 convolution as matrix products: g w^T, placed back on the rows
    and columns the convolution read, and x^T g over the flattened (n, h, w) rows.

    XLA:CPU's dot takes a transposed left operand as it is, where contracting the three
    leading axes of the 4-D arrays made it copy one of them into a transposed layout first
    (about 80 ms of a 164 step at batch 32). It is also about twice as fast with the narrower
    operand on the left (32768x16 by 32768x64: 0.9 ms; 32768x64 by 32768x16: 1.7 ms), so with
    `narrow_left` a wide x gives (g^T x)^T. XLA would fold that transpose back into the slow
    product; the barrier keeps the product as written. Elsewhere the compiler picks the order.
    """
    dx = _spread(_pointwise(g, jnp.swapaxes(w, 2, 3)), strides, x.shape[1:3])
    read = x[:, ::strides[0], ::strides[1], :]
    x2, g2 = read.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    rows = (((0,), (0,)), ((), ()))
    if narrow_left and x2.shape[1] > g2.shape[1]:
        dw = lax.optimization_barrier(lax.dot_general(g2, x2, rows)).T
    else:
        dw = lax.dot_general(x2, g2, rows)
    return dx, dw.reshape(w.shape)


def _canonical_grads(strides, padding, x, w, g):
    """Both gradients as NHWC/HWIO convolutions, or matrix products for 1x1 kernels; the
    paddings are JAX's transpose rules'."""
    if _is_pointwise(w, padding):
        return _pointwise_grads(strides, x, w, g, narrow_left=True)
    kernel, size_in = w.shape[:2], x.shape[1:3]
    flipped = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)  # HWIO of the transposed conv
    dilated_out = [(o - 1) * s + 1 for o, s in zip(g.shape[1:3], strides)]
    dx_padding = [(k - 1 - lo, i - d + lo) for k, (lo, _), i, d in zip(kernel, padding, size_in, dilated_out)]
    dx = lax.conv_general_dilated(g, flipped, (1, 1), dx_padding, lhs_dilation=strides, dimension_numbers=_NHWC)
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

    # Only XLA:CPU needs the rewrite; elsewhere the compiler picks layouts for JAX's own form,
    # except for the products of a 1x1 convolution on `PRODUCT_PLATFORMS`.
    products = dict.fromkeys(PRODUCT_PLATFORMS if _is_pointwise(w, padding) else (),
                             functools.partial(_pointwise_grads, strides))
    return lax.platform_dependent(x, w, g, cpu=functools.partial(_canonical_grads, strides, padding),
                                  **products, default=jax_grads)


_nhwc_conv.defvjp(_nhwc_conv_fwd, _nhwc_conv_bwd)


def conv_with_canonical_grads(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                              padding: Any, lhs_dilation: Sequence[int] | None = None,
                              rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                              feature_group_count: int = 1, batch_group_count: int = 1,
                              precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """`lax.conv_general_dilated` whose gradient convolutions are canonical on XLA:CPU.

    A drop-in for `nn.Conv(conv_general_dilated=...)`. The same forward pass and gradients
    up to float rounding: the gradients are computed by the convolutions JAX's transpose
    rules would emit, with their operands transposed into NHWC/HWIO, and on CPU a 1x1
    convolution (strided or not) and both its gradients are matrix products (see the module
    docstring for why both matter).
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
