"""The unit variants that v2 ablates, each a small subclass (v2 Tables 1 and 2).

Table 1 keeps v1's unit (f = ReLU) and changes what multiplies the shortcut and F, by
overriding `PostActivation.combine`, the addition of Fig. 2(a). Table 2 moves BN and ReLU
around the addition: each of its units writes its own `__call__` out, one layer a line, as
its Fig. 4 panel draws it.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from resnet_identity.models import layers
from resnet_identity.models.layers import ModuleDef
from resnet_identity.models.shortcuts import Shortcut
from resnet_identity.models.units import PostActivation, PreActivation, ResidualUnit, refuse_zero_init_last


class ConstantScaling(PostActivation):
    """y = lambda_s * h(x) + lambda_f * F(x) (Table 1 "constant scaling", Fig. 2(b))."""

    shortcut_scale: float = 0.5
    branch_scale: float = 1.0

    def combine(self, x, shortcut, branch):
        del x
        return self.shortcut_scale * shortcut + self.branch_scale * branch


class Gate(nn.Module):
    """g(x) = sigmoid(conv1x1(x) + b_g), element-wise (Table 1, Fig. 2(c)-(d)).

    `bias_init` is b_g's initial value: the paper's -6 makes g ~ 0.0025 at the start,
    so the unit begins close to an identity mapping.
    """

    features: int
    strides: int
    bias_init: float
    conv: ModuleDef = layers.conv

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = self.conv(
            self.features, 1, self.strides, use_bias=True, bias_init=nn.initializers.constant(self.bias_init)
        )
        return nn.sigmoid(conv(x))


class ExclusiveGating(PostActivation):
    """y = (1 - g(x)) * h(x) + g(x) * F(x) (Table 1 "exclusive gating", Fig. 2(c))."""

    gate_bias_init: float = -6.0

    def combine(self, x, shortcut, branch):
        g = Gate(self.features, self.strides, self.gate_bias_init, self.conv, name="gate")(x)
        return (1 - g) * shortcut + g * branch


class ShortcutOnlyGating(PostActivation):
    """y = (1 - g(x)) * h(x) + F(x) (Table 1 "shortcut-only gating", Fig. 2(d))."""

    gate_bias_init: float = 0.0

    def combine(self, x, shortcut, branch):
        g = Gate(self.features, self.strides, self.gate_bias_init, self.conv, name="gate")(x)
        return (1 - g) * shortcut + branch


class DropoutShortcut(PostActivation):
    """y = dropout(h(x)) + F(x) (Table 1 "dropout shortcut", Fig. 2(f)); needs a 'dropout' rng."""

    rate: float = 0.5

    def combine(self, x, shortcut, branch):
        del x
        return nn.Dropout(self.rate, deterministic=not self.train)(shortcut) + branch


class BNAfterAddition(ResidualUnit):
    """weight-BN-ReLU-weight, add, BN, ReLU (Table 2(b), Fig. 4(b)).

    The projection is a bare conv, as the BN after the addition normalises it too.
    `zero_init_last` zeroes the last conv's kernel: the BN after the addition stays at 1.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        last_kernel = nn.initializers.zeros if self.zero_init_last else layers.conv_kernel_init
        if self.bottleneck:
            stride_1x1, stride_3x3 = self.bottleneck_strides
            y = self.conv(self.features // 4, 1, stride_1x1, name="conv1")(x)
            y = nn.relu(self.norm(name="bn1")(y))
            y = self.conv(self.features // 4, 3, stride_3x3, name="conv2")(y)
            y = nn.relu(self.norm(name="bn2")(y))
            y = self.conv(self.features, 1, name="conv3", kernel_init=last_kernel)(y)
            after_addition = self.norm(name="bn3")
        else:
            y = self.conv(self.features, 3, self.strides, name="conv1")(x)
            y = nn.relu(self.norm(name="bn1")(y))
            y = self.conv(self.features, 3, name="conv2", kernel_init=last_kernel)(y)
            after_addition = self.norm(name="bn2")
        h = Shortcut(self.features, self.strides, self.shortcut, norm=None, conv=self.conv, name="shortcut")
        return nn.relu(after_addition(h(x) + y))


class ReLUBeforeAddition(ResidualUnit):
    """weight-BN-ReLU-weight-BN-ReLU, add; nothing after (Table 2(c), Fig. 4(c))."""

    def __post_init__(self) -> None:
        refuse_zero_init_last(self, "its branch ends in a ReLU")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.bottleneck:
            stride_1x1, stride_3x3 = self.bottleneck_strides
            y = self.conv(self.features // 4, 1, stride_1x1, name="conv1")(x)
            y = nn.relu(self.norm(name="bn1")(y))
            y = self.conv(self.features // 4, 3, stride_3x3, name="conv2")(y)
            y = nn.relu(self.norm(name="bn2")(y))
            y = self.conv(self.features, 1, name="conv3")(y)
            y = nn.relu(self.norm(name="bn3")(y))
        else:
            y = self.conv(self.features, 3, self.strides, name="conv1")(x)
            y = nn.relu(self.norm(name="bn1")(y))
            y = self.conv(self.features, 3, name="conv2")(y)
            y = nn.relu(self.norm(name="bn2")(y))
        h = Shortcut(self.features, self.strides, self.shortcut, norm=self.norm, conv=self.conv, name="shortcut")
        return h(x) + y


class ReLUOnlyPreActivation(PreActivation):
    """ReLU-weight-BN-ReLU-weight-BN, add (Table 2(d), Fig. 4(d)).

    The pre-activation is ReLU alone (`preact` says what it feeds), so each BN follows its
    conv and shares its number; the projection keeps v1's BN because the branch ends in BN,
    and `zero_init_last` zeroes that last BN's gamma.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        last_gamma = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
        y = x if self.preact == "none" else nn.relu(x)
        shortcut_input = y if self.preact == "both" else x
        if self.bottleneck:
            stride_1x1, stride_3x3 = self.bottleneck_strides
            y = self.conv(self.features // 4, 1, stride_1x1, name="conv1")(y)
            y = nn.relu(self.norm(name="bn1")(y))
            y = self.conv(self.features // 4, 3, stride_3x3, name="conv2")(y)
            y = nn.relu(self.norm(name="bn2")(y))
            y = self.conv(self.features, 1, name="conv3")(y)
            y = self.norm(name="bn3", scale_init=last_gamma)(y)
        else:
            y = self.conv(self.features, 3, self.strides, name="conv1")(y)
            y = nn.relu(self.norm(name="bn1")(y))
            y = self.conv(self.features, 3, name="conv2")(y)
            y = self.norm(name="bn2", scale_init=last_gamma)(y)
        h = Shortcut(self.features, self.strides, self.shortcut, norm=self.norm, conv=self.conv, name="shortcut")
        return self.combine(x, h(shortcut_input), y)


__all__ = [
    "BNAfterAddition",
    "ConstantScaling",
    "DropoutShortcut",
    "ExclusiveGating",
    "Gate",
    "ReLUBeforeAddition",
    "ReLUOnlyPreActivation",
    "ResidualUnit",
    "ShortcutOnlyGating",
]
