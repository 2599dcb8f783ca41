"""Layers shared by every unit: initialisers, the convolution and ghost BatchNorm.

Both are injected into the units as partials (flax's `ModuleDef`s), with the platform's
`kernels.Kernels` bound by the network; built directly they use JAX's own convolution and
autodiff BatchNorm.

Initialisation follows the released code (`resnet-pre-act.lua`, `preresnet.lua`):
conv weights ~ N(0, sqrt(2 / (k*k*C_out))) ("He init, fan-out form"), BN gamma=1 and
beta=0, FC bias 0. The FC weight keeps Torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

ModuleDef = Any
Dtype = Any

# `checkpoint_name`s of what BN keeps for its backward pass in training: its input and its
# per-channel statistics. The "elementwise" remat scheme (`stack.py`) saves exactly these.
BN_INPUT = "bn_input"
BN_STATS = "bn_stats"

# N(0, 2 / (k*k*C_out)): He et al. 2015, fan-out form, as `conv:weight:normal(0, sqrt(2/n))`
# with n = kW*kH*nOutputPlane in the released Torch code.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# Torch nn.Linear's default weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv(
    features: int,
    kernel_size: int,
    strides: int = 1,
    *,
    dtype: Dtype = jnp.float32,
    kernel_init: nn.initializers.Initializer = conv_kernel_init,
    use_bias: bool = False,
    bias_init: nn.initializers.Initializer = nn.initializers.zeros,
    conv_general_dilated: Callable = jax.lax.conv_general_dilated,
    name: str | None = None,
) -> nn.Conv:
    """A k x k convolution, bias-free unless asked, padded like Torch/Caffe: (k-1)//2 on every
    side. `conv_general_dilated` is the platform's kernel (`kernels.Kernels.conv`).

    Explicit symmetric padding matters for stride 2: XLA's 'SAME' pads (0, 1) on even
    inputs, which samples a different grid from the papers' code.
    """
    pad = (kernel_size - 1) // 2
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


def normalise_terms(x, scale, bias, epsilon):
    """Per-group statistics over all axes but the group (0) and channel (-1) axes, in float32
    whatever the dtype of `x`: (y, mean, var, 1/sqrt(var + epsilon)), y float32.

    Both statistics come from one pass over `x`, taken about a shift s, each group's first
    value per channel: var = E[(x-s)^2] - E[x-s]^2. Unshifted (s = 0) this cancels
    catastrophically once |mean| >> std: 11% error at mean = 1000 std. With s a value of the
    group, |E[x-s]| is a few std at most, and the error stays at float32 rounding (Chan,
    Golub & LeVeque 1983, "Algorithms for computing the sample variance"). One pass rather
    than the two-pass (x - mean)^2 because it was faster on a GPU
    (benchmarks/results/history/2026-11-23.md, "7. GPU (one H200)", change (c)).
    """
    x = x.astype(jnp.float32)
    axes = tuple(range(1, x.ndim - 1))
    shift = x[(slice(None),) + (slice(0, 1),) * len(axes)]
    shifted = x - shift
    shifted_mean = shifted.mean(axes, keepdims=True)
    var = jnp.maximum(jnp.square(shifted).mean(axes, keepdims=True) - jnp.square(shifted_mean), 0.0)
    mean = shift + shifted_mean
    rstd = jax.lax.rsqrt(var + epsilon)
    mean, rstd = checkpoint_name(mean, BN_STATS), checkpoint_name(rstd, BN_STATS)
    return (x - mean) * (rstd * scale) + bias, mean, var, rstd


def normalise(x, scale, bias, epsilon):
    """Training-mode BN of grouped `x`: (y, per-group mean, per-group biased variance), all
    float32; differentiated by JAX (`kernels.closed_form_normalise` is its closed form)."""
    y, mean, var, _ = normalise_terms(x, scale, bias, epsilon)
    return y, mean, var


class GhostBatchNorm(nn.Module):
    """BatchNorm whose training statistics come from groups of `group_size` examples.

    The papers' statistics were per GPU: 64 images on CIFAR (batch 128 on 2 GPUs) and 32 on
    ImageNet (batch 256 on 8 GPUs), docs/papers.md "Training recipes". Splitting the global batch
    into contiguous groups of G and normalising each by its own mean and (biased) variance
    reproduces that on any device count. `group_size=None` uses the whole batch, which under
    `jax.jit` with a sharded batch is the exact global-batch statistic.

    Running averages (used when `use_running_average=True`) are updated with the mean over
    groups of each group's mean and unbiased variance, with Torch's momentum 0.1
    (`momentum=0.9` here). The unbiased n/(n-1) estimate, n the values per channel in a group,
    is what Torch's `BatchNormalization` (the papers' released code) and PyTorch store; the
    normalisation itself divides by the biased one, as they do.
    Parameter and statistic names match `flax.linen.BatchNorm` ('scale', 'bias'; 'mean', 'var').
    `normalise` computes the training-mode normalisation (`kernels.Kernels.normalise`).
    """

    use_running_average: bool = False
    group_size: int | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    scale_init: Callable = nn.initializers.ones
    normalise: Callable = normalise

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

        if self.use_running_average:
            inv = jax.lax.rsqrt(running_var.value + self.epsilon) * scale
            y = x.astype(jnp.float32) * inv + (bias - running_mean.value * inv)
            return y.astype(self.dtype)

        batch = x.shape[0]
        group = batch if self.group_size is None else self.group_size
        if group <= 0 or batch % group:
            raise ValueError(
                f"BatchNorm group size {self.group_size} does not divide the batch of {batch} "
                f"examples this layer sees. Set `bn_group_size` to a divisor of the per-step "
                f"batch (the papers used 64 on CIFAR, 32 on ImageNet) or to None for the whole batch."
            )
        x = checkpoint_name(x, BN_INPUT)
        grouped = x.reshape((batch // group, group) + x.shape[1:])
        y, mean, var = self.normalise(grouped, scale, bias, self.epsilon)
        if not self.is_initializing():
            group_axes = tuple(range(mean.ndim - 1))
            n = x.size // x.shape[-1] // (batch // group)
            unbiased = var.mean(group_axes) * (n / max(n - 1, 1))
            m = self.momentum
            running_mean.value = m * running_mean.value + (1 - m) * mean.mean(group_axes)
            running_var.value = m * running_var.value + (1 - m) * unbiased
        return y.reshape(x.shape).astype(self.dtype)


def make_norm(
    *,
    train: bool,
    group_size: int | None,
    dtype: Dtype,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    normalise: Callable = normalise,
) -> ModuleDef:
    """The norm partial that every unit receives (flax imagenet's `ModuleDef` injection)."""
    return functools.partial(
        GhostBatchNorm,
        use_running_average=not train,
        group_size=group_size,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        normalise=normalise,
    )


def make_conv(*, dtype: Dtype, conv_general_dilated: Callable = jax.lax.conv_general_dilated) -> ModuleDef:
    """The conv partial that every unit and stem receives: `conv` with the compute dtype and
    the platform's kernel bound."""
    return functools.partial(conv, dtype=dtype, conv_general_dilated=conv_general_dilated)
