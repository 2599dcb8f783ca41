"""Residual units of both papers, written as y = h(x) + F(x), x' = f(y) (v2 Eq. 1-2).

- `PostActivation`: v1's original unit (v1 Fig. 5; v2 Fig. 4(a)); f = ReLU.
- `PreActivation`: v2's full pre-activation unit (v2 Fig. 1(b), Fig. 4(e)); f = identity.
- `Plain`: the same stack with no shortcut, for v1's degradation experiment (v1 Fig. 4).

Basic units have two 3x3 convs; bottleneck units 1x1 (C/4) -> 3x3 (C/4) -> 1x1 (C). The
stride of a bottleneck sits on its first 1x1 by default, as in both papers and the released
code; `stride_on="3x3"` moves it to the 3x3 (fb.resnet.torch's v1, the "v1.5" choice).

Each unit's `__call__` is its figure, read top to bottom. `conv` and `norm` are injected
partials (`layers.make_conv`, `layers.make_norm`); how a platform computes them is the
network's choice (`kernels.py`), never a unit's.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from resnet_identity.models import layers
from resnet_identity.models.layers import GhostBatchNorm, ModuleDef
from resnet_identity.models.shortcuts import Shortcut

STRIDE_PLACEMENTS = ("1x1", "3x3")
PREACT_MODES = ("residual", "both", "none")


class ResidualUnit(nn.Module):
    """Fields shared by every unit, and the layers of its branch F; subclasses define `__call__`.

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
      conv: convolution partial, `layers.conv`'s signature with the dtype bound.
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
    conv: ModuleDef = layers.conv
    norm: ModuleDef = GhostBatchNorm
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
                "ReLU or it has no shortcut, so a zeroed layer would get no gradient. Leave it False."
            )

    def branch_layers(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """F's convolutions `conv1`, `conv2`, ... (`branch_specs`) and one BN for each, `bn1`,
        `bn2`, ..., the BN of conv i being the one the unit applies next to it; with
        `zero_init_last`, the last of the kind `zero_init_layer` names starts at zero."""
        if self.zero_init_last:
            self.check_zero_init()
        specs = self.branch_specs()
        zeroed = {
            "conv": len(specs) - 1 if self.zero_init_last and self.zero_init_layer == "conv" else None,
            "norm": len(specs) - 1 if self.zero_init_last and self.zero_init_layer == "norm" else None,
        }
        convs = [
            self.conv(
                features,
                kernel,
                strides,
                name=f"conv{i + 1}",
                kernel_init=nn.initializers.zeros if i == zeroed["conv"] else layers.conv_kernel_init,
            )
            for i, (kernel, features, strides) in enumerate(specs)
        ]
        norms = [
            self.norm(
                name=f"bn{i + 1}", scale_init=nn.initializers.zeros if i == zeroed["norm"] else nn.initializers.ones
            )
            for i in range(len(specs))
        ]
        return convs, norms

    def make_shortcut(self) -> Shortcut:
        """h(x) (`shortcuts.py`)."""
        return Shortcut(
            self.features,
            self.strides,
            self.shortcut,
            norm=self.norm if self.projection_norm else None,
            conv=self.conv,
            name="shortcut",
        )


class PostActivation(ResidualUnit):
    """v1 unit: conv-BN-ReLU-conv-BN, add, ReLU (v1 Fig. 5; v2 Fig. 4(a), "original")."""

    def combine(self, x: jax.Array, shortcut: jax.Array, branch: jax.Array) -> jax.Array:
        """y = h(x) + F(x); Table 1 variants replace this."""
        del x
        return shortcut + branch

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        convs, norms = self.branch_layers()
        branch = x
        for i, (conv, norm) in enumerate(zip(convs, norms)):
            branch = norm(conv(branch))
            if i < len(convs) - 1:
                branch = nn.relu(branch)
        return nn.relu(self.combine(x, self.make_shortcut()(x), branch))


class PreActivation(ResidualUnit):
    """v2 unit: BN-ReLU-conv-BN-ReLU-conv, add; nothing after the addition (v2 Fig. 4(e))."""

    pre_activation: ClassVar[bool] = True
    projection_norm: ClassVar[bool] = False
    zero_init_layer: ClassVar[str | None] = "conv"

    def split(self, x: jax.Array, activation) -> tuple[jax.Array, jax.Array]:
        """(h's input, F's input): the leading `activation` on F alone ("residual"), before
        the paths part ("both"), or none ("none")."""
        if self.preact not in PREACT_MODES:
            raise ValueError(f"preact={self.preact!r}; choose one of {PREACT_MODES}.")
        if self.preact == "none":
            return x, x
        activated = activation(x)
        return (activated if self.preact == "both" else x), activated

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        convs, norms = self.branch_layers()
        shortcut, branch = self.split(x, lambda x: nn.relu(norms[0](x)))
        branch = convs[0](branch)
        for conv, norm in zip(convs[1:], norms[1:]):
            branch = conv(nn.relu(norm(branch)))
        return self.make_shortcut()(shortcut) + branch


class Plain(ResidualUnit):
    """conv-BN-ReLU per layer and no shortcut: v1's plain baseline (v1 Fig. 3 middle)."""

    zero_init_layer: ClassVar[str | None] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for conv, norm in zip(*self.branch_layers()):
            x = nn.relu(norm(conv(x)))
        return x
