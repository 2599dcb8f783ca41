"""Input normalisation: which statistics, and applying them on device.

Choices (``config.normalization``; the CIFAR paper recipes, ``recipes.cifar``, pick
``'per_pixel_mean'``, and their ``released_code`` preset ``'per_channel'``):
  * ``'per_channel'`` (the default when none is set): ``(x - mean_c) / std_c``, with the
    fixed constants a dataset declares (``DatasetSpec.per_channel``: the released code's
    for CIFAR-10/100 and ImageNet, in ``cifar.py`` and ``imagenet.py``), or else
    statistics computed from its own training split (digits, synthetic).
  * ``'per_pixel_mean'``: the v1 paper's "per-pixel mean subtracted"
    (v1 Sec. 4.2). The paper gives no scale; we divide by the global standard
    deviation of the mean-subtracted training pixels (one scalar), so inputs
    have unit variance like ``'per_channel'`` and the same learning rate
    works for both. Needs the whole training split in memory, so ImageNet
    does not offer it.

Statistics are stored on the 0-255 scale so that uint8 images normalise with
one subtract and one divide.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

CHOICES = ("per_channel", "per_pixel_mean")

# Images per chunk when computing statistics, so a float64 copy of a whole
# 50k-image training set (1.2 GB) is never made.
_CHUNK = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class Normalization:
    """``(x - mean) / std``; both broadcast against [..., H, W, C] images.

    Attributes:
      mean: float32, shape (C,) per channel or (H, W, C) per pixel, 0-255 scale.
      std: float32, shape (C,) or () for one global scale, 0-255 scale.
      name: the choice that produced it, for logs.
    """

    mean: np.ndarray
    std: np.ndarray
    name: str

    def __call__(self, images: jax.Array) -> jax.Array:
        """Normalises uint8 (or float, 0-255 scale) images to float32."""
        return (jnp.asarray(images, jnp.float32) - self.mean) / self.std


def _per_channel_stats(images: np.ndarray) -> Normalization:
    total = np.zeros(images.shape[-1])
    total_sq = np.zeros(images.shape[-1])
    for start in range(0, len(images), _CHUNK):
        chunk = images[start : start + _CHUNK].astype(np.float64)
        total += chunk.sum(axis=(0, 1, 2))
        total_sq += np.square(chunk).sum(axis=(0, 1, 2))
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(total_sq / count - np.square(mean))
    return Normalization(mean.astype(np.float32), std.astype(np.float32), "per_channel")


def _per_pixel_mean_stats(images: np.ndarray) -> Normalization:
    total = np.zeros(images.shape[1:])
    total_sq = np.zeros(images.shape[1:])
    for start in range(0, len(images), _CHUNK):
        chunk = images[start : start + _CHUNK].astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    mean = total / len(images)
    # Variance of x - mean[pixel] over all pixels and images.
    variance = (total_sq / len(images) - np.square(mean)).mean()
    return Normalization(mean.astype(np.float32), np.asarray(np.sqrt(variance), np.float32), "per_pixel_mean")


def resolve(choice: str | None, dataset: str, train_images: np.ndarray | None) -> Normalization:
    """Builds the normalisation for ``dataset`` (see the module docstring).

    Args:
      choice: one of ``CHOICES``, or None for ``'per_channel'``.
      dataset: the dataset's name; where the registry holds it, its ``per_channel``
        constants serve ``'per_channel'``.
      train_images: uint8 [N, H, W, C] training split, or None when it is not
        held in memory (ImageNet).

    Raises:
      ValueError: unknown choice, or statistics that need a training split that
        is not in memory.
    """
    from resnet_identity.data import registry  # here: the registry imports the dataset modules, which import this

    choice = choice or "per_channel"
    if choice not in CHOICES:
        raise ValueError(f"Unknown normalization {choice!r}; valid choices: {', '.join(CHOICES)}.")
    spec = registry.SPECS.get(dataset)
    fixed = spec.per_channel if spec is not None else None
    if choice == "per_channel" and fixed is not None:
        return Normalization(np.asarray(fixed.mean, np.float32), np.asarray(fixed.std, np.float32), "per_channel")
    if train_images is None:
        raise ValueError(
            f"normalization {choice!r} needs the training split of {dataset!r} in memory; use 'per_channel'."
        )
    if choice == "per_channel":
        return _per_channel_stats(train_images)
    return _per_pixel_mean_stats(train_images)
