"""The platform kernels of `kernels.py`: each gives the values and gradients of JAX's own
(`lax.conv_general_dilated`, autodiff of `layers.normalise`), in the form it exists for."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resnet_identity import models
from resnet_identity.models import kernels, layers

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize(
    "shape,kernel,stride,pad",
    [
        ((2, 8, 8, 4), (3, 3, 4, 6), 1, 1),
        ((2, 8, 8, 4), (1, 1, 4, 6), 2, 0),
        ((2, 9, 9, 4), (3, 3, 4, 6), 2, 1),
        ((2, 8, 8, 6), (1, 1, 6, 4), 1, 0),
        ((2, 16, 16, 3), (7, 7, 3, 4), 2, 3),
        ((2, 9, 7, 4), (1, 1, 4, 6), 2, 0),
        ((2, 10, 10, 4), (1, 1, 4, 3), 3, 0),
    ],
)
def test_canonical_conv_equals_lax(shape, kernel, stride, pad):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kernel)
    padding = ((pad, pad), (pad, pad))

    def loss(conv, x, w):
        return jnp.sum(jnp.sin(conv(x, w, (stride, stride), padding, dimension_numbers=NHWC)))

    ours = jax.jit(jax.value_and_grad(functools.partial(loss, kernels.canonical_conv), (0, 1)))(x, w)
    reference = jax.jit(jax.value_and_grad(functools.partial(loss, lax.conv_general_dilated), (0, 1)))(x, w)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_canonical_conv_keeps_loop_body_convolutions_canonical():
    """The cause of the slow scanned gradient: non-NHWC/HWIO convs inside a while body."""
    conv = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, conv_general_dilated=kernels.canonical_conv)
    plain = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
    w = jax.random.normal(jax.random.key(2), (5, 3, 3, 8, 8)) * 0.1

    def run(module, w, x):
        return jnp.sum(lax.scan(lambda h, k: (module.apply({"params": {"kernel": k}}, h), None), x, w)[0])

    x = jax.random.normal(jax.random.key(3), (2, 6, 6, 8))
    grad = jax.jit(jax.grad(functools.partial(run, conv), argnums=(0, 1)))
    labels = set(re.findall(r"dim_labels=([\w>-]+)", grad.lower(w, x).compile().as_text()))
    assert labels == {"b01f_01io->b01f"}
    reference = jax.grad(functools.partial(run, plain), argnums=(0, 1))(w, x)
    for a, b in zip(grad(w, x), reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c_in,c_out,stride", [(16, 32, 1), (32, 16, 1), (16, 32, 2)])
def test_1x1_kernel_gradient_is_one_matrix_product_with_no_activation_transposed(c_in, c_out, stride):
    """x^T g over the flattened (n, h, w) rows: XLA:CPU's dot reads the transposed operand in
    place; contracting three axes of the 4-D arrays made it copy one into a transposed layout.
    The narrower of x and g is the product's left operand (the faster order on XLA:CPU). The
    forward pass and the input gradient of a 1x1 convolution, strided or not, are products
    too: no convolution is left."""
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, c_in))
    w = jax.random.normal(jax.random.key(1), (1, 1, c_in, c_out))

    def loss(w, x):
        return jnp.sum(
            jnp.sin(kernels.canonical_conv(x, w, (stride, stride), ((0, 0), (0, 0)), dimension_numbers=NHWC))
        )

    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(w, x).compile().as_text()
    moved = re.findall(r"= f32\[([\d,]+)\]\S* (?:transpose|copy)\(", text)
    activation_sizes = {4 * 6 * 6 * c_in, 4 * 6 * 6 * c_out // stride**2}
    assert not [s for s in moved if np.prod([int(d) for d in s.split(",")]) in activation_sizes], moved
    narrow, wide = sorted((c_in, c_out))
    assert re.search(rf"= f32\[{narrow},{wide}\]\S* dot\(", text)
    assert "convolution(" not in text


@pytest.mark.parametrize("c_in,c_out,stride", [(6, 4, 1), (4, 6, 2), (4, 3, 3)])
def test_accelerator_1x1_products_give_the_convolution_and_its_gradients(c_in, c_out, stride):
    """The product form that CUDA GPUs take (`kernels.PRODUCTS_1X1`), run here on CPU: forward
    pass and both gradients of a strided or unstrided 1x1 convolution, against `lax`'s."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, c_in))
    w = jax.random.normal(jax.random.key(1), (1, 1, c_in, c_out))
    y, vjp = jax.vjp(
        lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), ((0, 0), (0, 0)), dimension_numbers=NHWC), x, w
    )
    g = jax.random.normal(jax.random.key(2), y.shape)
    np.testing.assert_allclose(kernels._pointwise(x, w, (stride, stride)), y, rtol=1e-5, atol=1e-5)
    for ours, reference in zip(kernels._pointwise_grads((stride, stride), x, w, g), vjp(g)):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_cuda_lowering_makes_1x1_convolutions_products_unless_told_otherwise():
    """Lowered for CUDA (no GPU needed): with CUDA's kernels a 1x1 convolution and both its
    gradients are `dot_general`s, a 3x3 stays a convolution; with CUDA taken out of the
    product platforms, its kernels leave the 1x1 a convolution."""
    x = jnp.ones((2, 8, 8, 16))

    def lowered(kernel: int) -> str:
        conv = kernels.for_platform("cuda").conv

        def loss(w, x):
            pad = (kernel - 1) // 2
            return jnp.sum(jnp.sin(conv(x, w, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=NHWC)))

        w = jnp.ones((kernel, kernel, 16, 32))
        return jax.jit(jax.grad(loss, (0, 1))).trace(w, x).lower(lowering_platforms=("cuda",)).as_text()

    assert kernels.product_platforms() == ("cuda",)
    assert kernels.for_platform("cuda") is kernels.PRODUCTS_1X1 and kernels.for_platform("cpu") is kernels.CPU
    assert kernels.for_platform("tpu") is kernels.JAX_DEFAULT and kernels.for_platform("rocm") is kernels.JAX_DEFAULT
    text = lowered(1)
    assert text.count("stablehlo.dot_general") == 3 and "stablehlo.convolution" not in text
    assert lowered(3).count("stablehlo.convolution") == 3
    with kernels.pointwise_products(()):
        assert kernels.product_platforms() == ()
        text = lowered(1)
    assert kernels.product_platforms() == ("cuda",)  # the block's choice ends with it
    assert text.count("stablehlo.convolution") == 3 and "stablehlo.dot_general" not in text
    with pytest.raises(ValueError, match="unknown platforms"):
        with kernels.pointwise_products(("gpu",)):
            pass


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_closed_form_normalise_equals_autodiff_of_the_plain_formula(dtype):
    """The closed-form BN gradient against JAX's autodiff of `layers.normalise`, the
    statistics' cotangents included (they are zero in training, not here)."""
    x = (jax.random.normal(jax.random.key(0), (2, 4, 5, 5, 6)) * 3 + 1).astype(dtype)
    scale = jax.random.normal(jax.random.key(1), (6,))
    bias = jax.random.normal(jax.random.key(2), (6,))

    def loss(normalise, x, scale, bias):
        y, mean, var = normalise(x, scale, bias, 1e-5)
        return jnp.sum(jnp.sin(y)) + jnp.sum(mean**2) + jnp.sum(jnp.cos(var))

    ours = jax.grad(functools.partial(loss, kernels.closed_form_normalise), (0, 1, 2))(x, scale, bias)
    theirs = jax.grad(functools.partial(loss, layers.normalise), (0, 1, 2))(x, scale, bias)
    tolerance = 1e-4 if dtype == jnp.float32 else 2e-2
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("platform", ["cpu", "cuda"])
def test_a_network_with_a_platforms_kernels_has_the_gradients_of_the_plain_one(platform):
    """The whole injection: a bottleneck network (1x1 projections, strided units) built with
    the CPU's or CUDA's kernels against `kernels.JAX_DEFAULT` (nn.Conv and autodiff BN), same
    parameters and batch, in a scan."""
    model = models.create_model("cifar_preact164", num_classes=10, depth=11, remat="none")
    images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))  # 16x16: the same ops, compiled sooner
    variables = model.init(jax.random.key(0), images[:1], train=False)

    def loss(model, params):
        logits, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(logits))

    fast = jax.jit(jax.value_and_grad(functools.partial(loss, model.clone(kernels=kernels.for_platform(platform)))))
    plain = jax.jit(jax.value_and_grad(functools.partial(loss, model.clone(kernels=kernels.JAX_DEFAULT))))
    (loss_fast, grads_fast), (loss_plain, grads_plain) = fast(variables["params"]), plain(variables["params"])
    np.testing.assert_allclose(loss_fast, loss_plain, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_fast), jax.tree.leaves(grads_plain)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
