"""Residual units of both papers, written as y = h(x) + F(x), x' = f(y) (v2 Eq. 1-2).

- `PostActivation`: v1's original unit (v1 Fig. 5; v2 Fig. 4(a)); f = ReLU.
- `PreActivation`: v2's full pre-activation unit (v2 Fig. 1(b), Fig. 4(e)); f = identity.
- `Plain`: the same stack with no shortcut, for v1's degradation experiment (v1 Fig. 4).

Basic units have two 3x3 convs; bottleneck units 1x1 (C/4) -> 3x3 (C/4) -> 1x1 (C). The
stride of a bottleneck sits on its first 1x1 by default, as in both papers and the released
code; `stride_on="3x3"` moves it to the 3x3 (fb.resnet.torch's v1, the "v1.5" choice).

Each unit's `__call__` is its figure, one layer a line from top to bottom, as flax's
imagenet example writes its blocks: F's layers `conv1`, `bn1`, `conv2`, ..., then the
shortcut h (`shortcuts.py`), then the addition. Those names are the checkpoints' and the
torchvision/timm mappings'. `conv` and `norm` are injected partials (`layers.make_conv`,
`layers.make_norm`); how a platform computes them is the network's choice (`kernels.py`),
never a unit's.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from resnet_identity.models import layers
from resnet_identity.models.layers import GhostBatchNorm, ModuleDef
from resnet_identity.models.shortcuts import Shortcut

STRIDE_PLACEMENTS = ("1x1", "3x3")
PREACT_MODES = ("branch", "both", "none")


class ResidualUnit(nn.Module):
    """The fields every unit takes; each subclass's `__call__` draws its figure.

    Attributes:
      features: output channels C of the unit.
      strides: spatial stride of the unit (2 at the first unit of a downsampling stage).
      bottleneck: two 3x3 convs (False) or 1x1-3x3-1x1 with C/4 inner width (True).
      stride_on: "1x1" (papers) or "3x3" (fb.resnet.torch v1); bottleneck units only.
      shortcut: "A", "B" or "C" (see `shortcuts.py`).
      preact: pre-activation units only: what the unit's leading activation feeds.
        "branch": F alone, h reading x (every unit but a stage's first); "both": F and the
        shortcut, one BN-ReLU before the paths part (a stage's first unit, whose projection
        reads the activated tensor: `preresnet.lua`'s "both_preact"); "none": no leading
        activation, the input being BN-ReLU'd already (stage 1's first unit after the
        ImageNet stem: `preresnet.lua`'s "no_preact").
      conv: convolution partial, `layers.conv`'s signature with the dtype bound.
      norm: BatchNorm partial with the train flag and group size baked in.
      zero_init_last: start every branch at F(x) = 0, so the unit starts as h(x) (off in the
        papers). Each unit zeroes the last layer of F that still gets a gradient: the last
        BN's gamma where F ends in BN, the last conv's kernel where it ends in a conv (a zeroed
        gamma under a ReLU would stay dead: relu'(0) = 0). A unit with no such layer refuses
        it when built (`refuse_zero_init_last`).
      train: training mode, for units that need it beyond BN (dropout).
    """

    features: int
    strides: int = 1
    bottleneck: bool = False
    stride_on: str = "1x1"
    shortcut: str = "B"
    preact: str = "branch"
    conv: ModuleDef = layers.conv
    norm: ModuleDef = GhostBatchNorm
    zero_init_last: bool = False
    train: bool = False

    def __post_init__(self) -> None:
        if self.stride_on not in STRIDE_PLACEMENTS:
            raise ValueError(f"stride_on={self.stride_on!r}; choose one of {STRIDE_PLACEMENTS}.")
        if self.preact not in PREACT_MODES:
            raise ValueError(f"preact={self.preact!r}; choose one of {PREACT_MODES}.")
        super().__post_init__()

    @property
    def bottleneck_strides(self) -> tuple[int, int]:
        """The strides of a bottleneck's first 1x1 and of its 3x3: `strides` on the one
        `stride_on` names, 1 on the other."""
        return (self.strides, 1) if self.stride_on == "1x1" else (1, self.strides)


def refuse_zero_init_last(unit: ResidualUnit, why: str) -> None:
    """Raises if `unit` was asked to start at zero, which `why` says it cannot."""
    if unit.zero_init_last:
        raise ValueError(
            f"zero_init_last=True does not apply to {type(unit).__name__}: {why}, so a zeroed "
            "layer would get no gradient. Leave it False."
        )


class PostActivation(ResidualUnit):
    """v1 unit: conv-BN-ReLU-conv-BN, add, ReLU (v1 Fig. 5; v2 Fig. 4(a), "original").

    The projection is conv1x1 + BN (v1 Eq. 2); `zero_init_last` zeroes the last BN's gamma.
    """

    def combine(self, x: jax.Array, shortcut: jax.Array, branch: jax.Array) -> jax.Array:
        """y = h(x) + F(x) (v2 Eq. 1); Table 1's variants replace it (`ablations.py`)."""
        del x
        return shortcut + branch

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        last_gamma = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
        if self.bottleneck:
            stride_1x1, stride_3x3 = self.bottleneck_strides
            y = self.conv(self.features // 4, 1, stride_1x1, name="conv1")(x)
            y = nn.relu(self.norm(name="bn1")(y))
            y = self.conv(self.features // 4, 3, stride_3x3, name="conv2")(y)
            y = nn.relu(self.norm(name="bn2")(y))
            y = self.conv(self.features, 1, name="conv3")(y)
            y = self.norm(name="bn3", scale_init=last_gamma)(y)
        else:
            y = self.conv(self.features, 3, self.strides, name="conv1")(x)
            y = nn.relu(self.norm(name="bn1")(y))
            y = self.conv(self.features, 3, name="conv2")(y)
            y = self.norm(name="bn2", scale_init=last_gamma)(y)
        h = Shortcut(self.features, self.strides, self.shortcut, norm=self.norm, conv=self.conv, name="shortcut")
        return nn.relu(self.combine(x, h(x), y))


class PreActivation(ResidualUnit):
    """v2 unit: BN-ReLU-conv-BN-ReLU-conv, add; nothing after the addition (v2 Fig. 4(e)).

    Where the leading BN-ReLU goes is `preact`'s choice. The projection is a bare conv1x1
    (`resnet-pre-act.lua`); `zero_init_last` zeroes the last conv's kernel. Each BN is named
    for the conv it feeds, so with `preact="none"` there is no `bn1`.
    """

    def combine(self, x: jax.Array, shortcut: jax.Array, branch: jax.Array) -> jax.Array:
        """y = h(x) + F(x) (v2 Eq. 1), with f = identity after it (v2 Eq. 3)."""
        del x
        return shortcut + branch

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        last_kernel = nn.initializers.zeros if self.zero_init_last else layers.conv_kernel_init
        y = x if self.preact == "none" else nn.relu(self.norm(name="bn1")(x))
        shortcut_input = y if self.preact == "both" else x
        if self.bottleneck:
            stride_1x1, stride_3x3 = self.bottleneck_strides
            y = self.conv(self.features // 4, 1, stride_1x1, name="conv1")(y)
            y = nn.relu(self.norm(name="bn2")(y))
            y = self.conv(self.features // 4, 3, stride_3x3, name="conv2")(y)
            y = nn.relu(self.norm(name="bn3")(y))
            y = self.conv(self.features, 1, name="conv3", kernel_init=last_kernel)(y)
        else:
            y = self.conv(self.features, 3, self.strides, name="conv1")(y)
            y = nn.relu(self.norm(name="bn2")(y))
            y = self.conv(self.features, 3, name="conv2", kernel_init=last_kernel)(y)
        h = Shortcut(self.features, self.strides, self.shortcut, norm=None, conv=self.conv, name="shortcut")
        return self.combine(x, h(shortcut_input), y)


class Plain(ResidualUnit):
    """conv-BN-ReLU per layer and no shortcut: v1's plain baseline (v1 Fig. 3 middle)."""

    def __post_init__(self) -> None:
        refuse_zero_init_last(self, "it has no shortcut and each layer ends in a ReLU")
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
        return y
