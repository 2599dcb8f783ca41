"""Stems: the layers before stage 1, injected into `ResNet` as a class.

Every stem takes the same fields and says, through `output_activated`, whether its output
is already BN-ReLU'd. The network reads that to decide whether stage 1's first unit
pre-activates both paths (v2, after a bare stem) or neither (after a BN-ReLU'd stem).
A new stem is a subclass here plus a `STEMS` entry (selected by `model_overrides.stem`) or a
`Family` in `registry.py`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_identity.models import layers
from resnet_identity.models.layers import Dtype, ModuleDef


class Stem(nn.Module):
    """The common fields of a stem.

    Attributes:
      features: output channels (16 on CIFAR, 64 on ImageNet).
      pre_activation: whether the network's units pre-activate (v2).
      norm: the BatchNorm partial shared by the network.
      dtype: compute dtype.
      conv: the convolution partial shared by the network (`layers.make_conv`).
    """

    features: int
    pre_activation: bool
    norm: ModuleDef
    dtype: Dtype = jnp.float32
    conv: ModuleDef = layers.conv

    @classmethod
    def output_activated(cls, pre_activation: bool) -> bool:
        """Whether the output is already BN-ReLU'd, for a network with these units."""
        raise TypeError(f"{cls.__name__} must define output_activated(pre_activation).")


class CifarStem(Stem):
    """conv3x3(16) (v1 Sec. 4.2), followed by BN-ReLU unless the units pre-activate: in v2 the
    stem is a bare conv and stage 1's first unit pre-activates both paths (`resnet-pre-act.lua`)."""

    @classmethod
    def output_activated(cls, pre_activation: bool) -> bool:
        return not pre_activation

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(self.features, 3, name="conv")(x)
        return nn.relu(self.norm(name="bn")(x)) if self.output_activated(self.pre_activation) else x


class ImageNetStem(Stem):
    """conv7x7/2(64) -> BN -> ReLU -> max-pool 3x3/2 (v1 Table 1), in v1 and v2 alike: after it,
    stage 1's first pre-activation unit skips its pre-activation, as `preresnet.lua` does."""

    @classmethod
    def output_activated(cls, pre_activation: bool) -> bool:
        return True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(self.features, 7, 2, name="conv")(x)
        x = nn.relu(self.norm(name="bn")(x))
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class TimmStem(Stem):
    """conv7x7/2(64) -> max-pool 3x3/2 before pre-activation units, with no BN-ReLU between
    them: timm's `resnetv2_*` models (`create_resnetv2_stem`, `preact=True`). Stage 1's first
    unit then pre-activates both paths, as after the bare CIFAR stem. Before post-activation
    units it is `ImageNetStem` (timm adds the BN-ReLU there too)."""

    @classmethod
    def output_activated(cls, pre_activation: bool) -> bool:
        return not pre_activation

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(self.features, 7, 2, name="conv")(x)
        if self.output_activated(self.pre_activation):
            x = nn.relu(self.norm(name="bn")(x))
        # Max-pool pads with -inf (as torch does), so unactivated negative values survive it.
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


# Stems by the name a config gives (`model_overrides.stem`); a family's default is its own.
STEMS: dict[str, type[Stem]] = {"cifar": CifarStem, "imagenet": ImageNetStem, "timm": TimmStem}
