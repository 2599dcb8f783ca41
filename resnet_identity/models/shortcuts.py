"""The shortcut h(x) of a residual unit when the dimension grows (v1 paper, Sec. 3.3).

- Option A: stride-s subsample of the identity, new channels zero-padded; parameter-free.
  Used by the v1 CIFAR nets (v1 Table 6).
- Option B: a 1x1 projection only where the shape changes; identity elsewhere. The
  ImageNet default (v1 Table 3) and the released v2 code's choice.
- Option C: a 1x1 projection on every shortcut (v1 Table 3; v2 Table 1 "1x1 conv shortcut").

A v1 projection is conv1x1 + BN; a v2 projection is a bare conv1x1 (`resnet-pre-act.lua`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_identity.models import layers
from resnet_identity.models.layers import ModuleDef

SHORTCUT_OPTIONS = ("A", "B", "C")


def zero_pad_shortcut(x: jax.Array, features: int, strides: int) -> jax.Array:
    """Option A: x[:, ::s, ::s, :] followed by zero channels up to `features`."""
    x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    if extra < 0:
        raise ValueError(f"Option A cannot shrink {x.shape[-1]} channels to {features}.")
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra))) if extra else x


class Shortcut(nn.Module):
    """h(x) for a unit mapping `x` to `features` channels at `strides`.

    `norm=None` gives the v2 bare-conv projection; a norm partial gives v1's conv + BN.
    `conv` is the unit's convolution partial.
    """

    features: int
    strides: int
    option: str
    norm: ModuleDef | None
    conv: ModuleDef = layers.conv

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.option not in SHORTCUT_OPTIONS:
            raise ValueError(f"Unknown shortcut option {self.option!r}; choose one of {SHORTCUT_OPTIONS}.")
        reshapes = x.shape[-1] != self.features or self.strides != 1
        if self.option == "C" or (self.option == "B" and reshapes):
            x = self.conv(self.features, 1, self.strides, name="conv")(x)
            return self.norm(name="bn")(x) if self.norm is not None else x
        if reshapes:
            return zero_pad_shortcut(x, self.features, self.strides)
        return x
