"""Residual units of both papers, written as y = h(x) + F(x), x' = f(y) (v2 Eq. 1-2).

- `PostActivation`: v1's original unit (v1 Fig. 5; v2 Fig. 4(a)); f = ReLU.
- `PreActivation`: v2's full pre-activation unit (v2 Fig. 1(b), Fig. 4(e)); f = identity.
- `Plain`: the same stack with no shortcut, for v1's degradation experiment (v1 Fig. 4).

Basic units have two 3x3 convs; bottleneck units 1x1 (C/4) -> 3x3 (C/4) -> 1x1 (C). The
stride of a bottleneck sits on its first 1x1 by default, as in both papers and the released
code; `stride_on="3x3"` moves it to the 3x3 (fb.resnet.torch's v1, the "v1.5" choice).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_identity.models.layers import GhostBatchNorm, ModuleDef, conv, conv_kernel_init
from resnet_identity.models.shortcuts import Shortcut

STRIDE_PLACEMENTS = ("1x1", "3x3")
PREACT_MODES = ("residual", "both", "none")


class ResidualUnit(nn.Module):
    """Fields and building blocks shared by every unit; subclasses define `__call__`.

    Attributes:
      features: output channels C of the unit.
      strides: spatial stride of the unit (2 at the first unit of a downsampling stage).
      bottleneck: two 3x3 convs (False) or 1x1-3x3-1x1 with C/4 inner width (True).
      stride_on: "1x1" (papers) or "3x3" (fb.resnet.torch v1); bottleneck units only.
      shortcut: "A", "B" or "C" (see `shortcuts.py`).
      preact: pre-activation units only. "residual": BN-ReLU on the branch alone (most
        units); "both": one BN-ReLU before the split, read by branch and projection (the
        first unit of a stage, `both_preact`); "none": no leading BN-ReLU (stage 1 after
        the ImageNet stem, `no_preact`).
      norm: BatchNorm partial with the train flag and group size baked in.
      zero_init_last: start every branch at F(x) = 0 by zeroing its last layer (off in the
        papers; see `zero_init_layer`).
      train: training mode, for units that need it beyond BN (dropout).
    """

    features: int
    strides: int = 1
    bottleneck: bool = False
    stride_on: str = "1x1"
    shortcut: str = "B"
    preact: str = "residual"
    norm: ModuleDef = GhostBatchNorm
    dtype: jnp.dtype = jnp.float32
    zero_init_last: bool = False
    train: bool = False

    # Read by the network: pre-activation units get a bare CIFAR stem and a final BN-ReLU.
    pre_activation: ClassVar[bool] = False
    # v1 projections are conv + BN; v2's are a bare conv.
    projection_norm: ClassVar[bool] = True
    # The layer `zero_init_last` zeroes: the branch's last BN's gamma ("norm") where the
    # branch ends in BN, its last conv's kernel ("conv") where it ends in a conv. Zeroing a
    # gamma followed by a ReLU would leave the branch dead: relu'(0) = 0 stops every
    # gradient to it, for the whole run. None: the unit cannot start as h(x), because its
    # branch ends in a ReLU or it has no shortcut.
    zero_init_layer: ClassVar[str | None] = "norm"

    def branch_specs(self) -> list[tuple[int, int, int]]:
        """(kernel, output channels, stride) of each conv of F (v1 Table 1, Fig. 5)."""
        if self.stride_on not in STRIDE_PLACEMENTS:
            raise ValueError(f"stride_on={self.stride_on!r}; choose one of {STRIDE_PLACEMENTS}.")
        if not self.bottleneck:
            return [(3, self.features, self.strides), (3, self.features, 1)]
        width = self.features // 4
        first, middle = (self.strides, 1) if self.stride_on == "1x1" else (1, self.strides)
        return [(1, width, first), (3, width, middle), (1, self.features, 1)]

    @classmethod
    def check_zero_init(cls) -> None:
        """Raises, saying why, if `zero_init_last` cannot apply to this unit."""
        if cls.zero_init_layer is None:
            raise ValueError(
                f"zero_init_last=True does not apply to {cls.__name__}: its branch ends in a "
                "ReLU or it has no shortcut, so a zeroed layer would get no gradient. Leave it False.")

    def zero_init(self, layer: str, *, last: bool) -> bool:
        """Whether `zero_init_last` zeroes this `layer` ("conv" or "norm") of the branch."""
        if not (last and self.zero_init_last):
            return False
        self.check_zero_init()
        return layer == self.zero_init_layer

    def branch_conv(self, index: int, spec: tuple[int, int, int], *, last: bool) -> nn.Module:
        kernel, features, strides = spec
        init = nn.initializers.zeros if self.zero_init("conv", last=last) else conv_kernel_init
        return conv(features, kernel, strides, dtype=self.dtype, kernel_init=init, name=f"conv{index + 1}")

    def branch_norm(self, index: int, *, last: bool) -> nn.Module:
        init = nn.initializers.zeros if self.zero_init("norm", last=last) else nn.initializers.ones
        return self.norm(name=f"bn{index + 1}", scale_init=init)

    def make_shortcut(self) -> Shortcut:
        return Shortcut(
            self.features,
            self.strides,
            self.shortcut,
            norm=self.norm if self.projection_norm else None,
            dtype=self.dtype,
            name="shortcut",
        )

    def post_activation_branch(self, x: jax.Array, *, relu_last: bool, norm_last: bool = True) -> jax.Array:
        """F as weight -> BN -> ReLU -> ... -> weight -> BN (v1 Fig. 5)."""
        specs = self.branch_specs()
        for i, spec in enumerate(specs):
            last = i == len(specs) - 1
            x = self.branch_conv(i, spec, last=last)(x)
            if not last or norm_last:
                x = self.branch_norm(i, last=last)(x)
            if not last or relu_last:
                x = nn.relu(x)
        return x


class PostActivation(ResidualUnit):
    """v1 unit: conv-BN-ReLU-conv-BN, add, ReLU (v2 Fig. 4(a), "original")."""

    def combine(self, x: jax.Array, shortcut: jax.Array, branch: jax.Array) -> jax.Array:
        """y = h(x) + F(x); Table 1 variants replace this."""
        del x
        return shortcut + branch

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch = self.post_activation_branch(x, relu_last=False)
        return nn.relu(self.combine(x, self.make_shortcut()(x), branch))


class PreActivation(ResidualUnit):
    """v2 unit: BN-ReLU-conv-BN-ReLU-conv, add; nothing after the addition (v2 Fig. 4(e))."""

    pre_activation: ClassVar[bool] = True
    projection_norm: ClassVar[bool] = False
    zero_init_layer: ClassVar[str | None] = "conv"

    def activation(self, index: int, x: jax.Array, *, last: bool) -> jax.Array:
        """What precedes conv `index`: BN-ReLU here (Fig. 4(e))."""
        return nn.relu(self.branch_norm(index, last=last)(x))

    def after_conv(self, index: int, x: jax.Array, *, last: bool) -> jax.Array:
        """What follows conv `index`: nothing in full pre-activation."""
        del index, last
        return x

    def split(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The (shortcut input, branch input) pair, per `preact` mode."""
        if self.preact == "both":
            x = self.activation(0, x, last=False)
            return x, x
        if self.preact == "none":
            return x, x
        if self.preact == "residual":
            return x, self.activation(0, x, last=False)
        raise ValueError(f"preact={self.preact!r}; choose one of {PREACT_MODES}.")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut_in, branch = self.split(x)
        specs = self.branch_specs()
        for i, spec in enumerate(specs):
            last = i == len(specs) - 1
            if i:
                branch = self.activation(i, branch, last=last)
            branch = self.after_conv(i, self.branch_conv(i, spec, last=last)(branch), last=last)
        return self.make_shortcut()(shortcut_in) + branch


class Plain(ResidualUnit):
    """conv-BN-ReLU per layer and no shortcut: v1's plain baseline (v1 Fig. 3 middle)."""

    zero_init_layer: ClassVar[str | None] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.post_activation_branch(x, relu_last=True)
