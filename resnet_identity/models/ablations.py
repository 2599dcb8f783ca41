"""The unit variants that v2 ablates, each a small subclass (v2 Tables 1 and 2).

Table 1 keeps v1's unit (f = ReLU) and changes what multiplies the shortcut and F, by
overriding `PostActivation.combine`. Table 2 moves BN and ReLU around the addition: each of
its units writes its own `__call__`, as its figure draws it.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from resnet_identity.models import layers
from resnet_identity.models.layers import ModuleDef
from resnet_identity.models.units import PostActivation, PreActivation, ResidualUnit


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
    """weight-BN-ReLU-weight, add, BN, ReLU (Table 2(b), Fig. 4(b))."""

    projection_norm: ClassVar[bool] = False
    zero_init_layer: ClassVar[str | None] = "conv"  # the BN after the addition stays at 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        convs, norms = self.branch_layers()
        branch = convs[0](x)
        for conv, norm in zip(convs[1:], norms):
            branch = conv(nn.relu(norm(branch)))
        return nn.relu(norms[-1](self.make_shortcut()(x) + branch))


class ReLUBeforeAddition(ResidualUnit):
    """weight-BN-ReLU-weight-BN-ReLU, add; nothing after (Table 2(c), Fig. 4(c))."""

    zero_init_layer: ClassVar[str | None] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch = x
        for conv, norm in zip(*self.branch_layers()):
            branch = nn.relu(norm(conv(branch)))
        return self.make_shortcut()(x) + branch


class ReLUOnlyPreActivation(PreActivation):
    """ReLU-weight-BN-ReLU-weight-BN, add (Table 2(d), Fig. 4(d)).

    The pre-activation is ReLU alone, so each BN follows its conv; the projection
    keeps v1's BN because the branch ends in BN.
    """

    projection_norm: ClassVar[bool] = True
    zero_init_layer: ClassVar[str | None] = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        convs, norms = self.branch_layers()
        shortcut, branch = self.split(x, nn.relu)
        branch = norms[0](convs[0](branch))
        for conv, norm in zip(convs[1:], norms[1:]):
            branch = norm(conv(nn.relu(branch)))
        return self.make_shortcut()(shortcut) + branch


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
