"""One network module for every ResNet of both papers: stem, stages of units, head.

CIFAR (v1 Sec. 4.2): a 3x3 conv to 16 channels, three stages on 32/16/8 maps.
ImageNet (v1 Table 1): 7x7/2 conv to 64, BN, ReLU, 3x3/2 max-pool, four stages.
Pre-activation units (v2: `PreActivation` and its subclasses, v2 Fig. 4(d)-(e)) change
three places, each decided once:
- the CIFAR stem is a bare conv (no BN-ReLU), so stage 1's first unit pre-activates
  both paths (`preact="both"`); after the ImageNet stem, whose output is already
  BN-ReLU'd, stage 1's first unit has no pre-activation (`preact="none"`), as
  `preresnet.lua` does. The stem (`stems.py`, injected as a class) says which through
  `output_activated`;
- the first unit of every later stage pre-activates both paths (`preact="both"`), the
  others their branch alone (`preact="branch"`);
- the last unit is followed by BN-ReLU before pooling (`resnet-pre-act.lua`).

The network is also where the platform's kernels are chosen (`kernels.py`): it binds them
into the `conv` and `norm` partials that the stem and every unit receive.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_identity.models import kernels as kernels_lib
from resnet_identity.models.layers import ModuleDef, dense_kernel_init, make_conv, make_norm
from resnet_identity.models.stack import UnitStack
from resnet_identity.models.stems import Stem
from resnet_identity.models.units import PreActivation, ResidualUnit

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ResNet(nn.Module):
    """A residual (or plain) network.

    Attributes:
      stage_sizes: units per stage, e.g. (18, 18, 18) for CIFAR ResNet-110.
      stage_features: output channels of each stage, e.g. (16, 32, 64).
      unit: the unit class (`PostActivation`, `PreActivation`, an ablation, `Plain`).
      unit_options: extra fields for `unit` (e.g. `gate_bias_init` of a gating unit).
      bottleneck: bottleneck (True) or basic (False) units.
      stem: the stem class, `CifarStem` or `ImageNetStem` (`stems.py`).
      stem_features: channels of the stem conv (16 on CIFAR, 64 on ImageNet).
      num_classes: outputs of the final FC layer.
      shortcut: "A", "B" or "C".
      stride_on: where a bottleneck's stride sits, "1x1" (papers) or "3x3".
      bn_group_size: examples per BatchNorm statistics group (None: whole batch).
      dtype: compute dtype, "float32" or "bfloat16"; parameters and BN statistics stay float32.
        Activations, the residual stream x_{l+1} = x_l + F(x_l) included, are held in it: in
        bfloat16 (8-bit mantissa) a branch output below 1/256 of x_l is rounded away in the sum.
      zero_init_last: start every residual branch at zero (`ResidualUnit.zero_init_last`).
      scan: scan over each stage's identical units (fast compile) or unroll them.
      remat: rematerialisation scheme, see `stack.py`; None is its `DEFAULT_REMAT`, "elementwise",
        when scanned and "none" when unrolled.
      unroll: scan unroll factor (units per loop iteration).
      kernels: how convolutions and BatchNorm are computed (`kernels.Kernels`); None picks the
        default backend's (`kernels.for_platform`) when the model is traced.
    """

    stage_sizes: Sequence[int]
    stage_features: Sequence[int]
    unit: type[ResidualUnit]
    bottleneck: bool
    stem: type[Stem]
    stem_features: int
    num_classes: int
    unit_options: dict | None = None
    shortcut: str = "B"
    stride_on: str = "1x1"
    bn_group_size: int | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: str = "float32"
    zero_init_last: bool = False
    scan: bool = True
    remat: bool | str | None = None
    unroll: int = 1
    kernels: kernels_lib.Kernels | None = None

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = True) -> jax.Array:
        self._check(images)
        dtype = DTYPES[self.dtype]
        kernels = self.kernels or kernels_lib.for_platform(kernels_lib.current_platform())
        conv = make_conv(dtype=dtype, conv_general_dilated=kernels.conv)
        norm = make_norm(
            train=train,
            group_size=self.bn_group_size,
            dtype=dtype,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            normalise=kernels.normalise,
        )
        pre_activation = issubclass(self.unit, PreActivation)
        x = self.stem(self.stem_features, pre_activation, norm, dtype, conv, name="stem")(images.astype(dtype))
        stem_activated = self.stem.output_activated(pre_activation)
        unit = functools.partial(
            self.unit,
            bottleneck=self.bottleneck,
            stride_on=self.stride_on,
            shortcut=self.shortcut,
            conv=conv,
            norm=norm,
            zero_init_last=self.zero_init_last,
            train=train,
            **(self.unit_options or {}),
        )
        for i, (size, features) in enumerate(zip(self.stage_sizes, self.stage_features)):
            strides = 1 if i == 0 else 2
            first_preact = "none" if (i == 0 and stem_activated) else "both"
            x = _Stage(
                unit, size, features, strides, first_preact, self.scan, self.remat, self.unroll, name=f"stage{i + 1}"
            )(x)
        if pre_activation:
            x = nn.relu(norm(name="final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(
            self.num_classes,
            kernel_init=dense_kernel_init,
            bias_init=nn.initializers.zeros,
            dtype=dtype,
            name="fc",
        )(x)
        return logits.astype(jnp.float32)

    def _check(self, images: jax.Array) -> None:
        """Clear errors for a `ResNet` built directly (`create_model` checks its own names)."""
        problems = []
        if self.dtype not in DTYPES:
            problems.append(f"dtype={self.dtype!r}: choose one of {tuple(DTYPES)}")
        if not (isinstance(self.stem, type) and issubclass(self.stem, Stem)):
            problems.append(f"stem={self.stem!r}: pass a `Stem` subclass, e.g. stems.CifarStem")
        if not (isinstance(self.unit, type) and issubclass(self.unit, ResidualUnit)):
            problems.append(f"unit={self.unit!r}: pass a `ResidualUnit` subclass, e.g. units.PreActivation")
        sizes, features = tuple(self.stage_sizes), tuple(self.stage_features)
        if not sizes or len(sizes) != len(features):
            problems.append(
                f"stage_sizes={sizes} and stage_features={features}: give one size and one channel count per stage"
            )
        if any(not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1 for n in sizes):
            problems.append(f"stage_sizes={sizes}: every stage needs at least one unit")
        if problems:
            raise ValueError("ResNet: " + "; ".join(problems) + ".")
        if images.ndim != 4:
            raise ValueError(
                f"ResNet: images must be NHWC (batch, height, width, channels); got shape "
                f"{images.shape}. Add a batch axis for one image: images[None]."
            )


class _Stage(nn.Module):
    """The first unit (stride, projection, preact for both paths) and n-1 identical units."""

    unit: ModuleDef
    size: int
    features: int
    strides: int
    first_preact: str
    scan: bool
    remat: bool | str | None
    unroll: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.unit(self.features, self.strides, preact=self.first_preact, name="first")(x)
        rest = functools.partial(self.unit, self.features, 1, preact="branch")
        return UnitStack(rest, self.size - 1, self.scan, self.remat, self.unroll, name="rest")(x)
