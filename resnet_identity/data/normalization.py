"""Input normalisation: which statistics, and applying them on device.

Choices (``config.normalization``; the CIFAR paper recipes, ``recipes.cifar``, pick
``'per_pixel_mean'``, and their ``released_code`` preset ``'per_channel'``):
  * ``'per_channel'`` (the default when none is set): ``(x - mean_c) / std_c``.
      - CIFAR-10: mean (125.3, 123.0, 113.9), std (63.0, 62.1, 66.7) on the
        0-255 scale, the constants of the released v2 code
        (fb.resnet.torch ``datasets/cifar10.lua``; docs/papers.md "CIFAR (v2 paper)").
      - CIFAR-100: mean (129.3, 124.1, 112.4), std (68.2, 65.4, 70.4), the
        constants of fb.resnet.torch ``datasets/cifar100.lua``, computed the
        same way on the CIFAR-100 training set.
      - ImageNet: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) on the
        0-1 scale (fb.resnet.torch ``datasets/imagenet.lua``).
      - digits and synthetic: computed from their own training split.
  * ``'per_pixel_mean'``: the v1 paper's "per-pixel mean subtracted"
    (v1 Sec. 4.2). The paper gives no scale; we divide by the global standard
    deviation of the mean-subtracted training pixels (one scalar), so inputs
    have unit variance like ``'per_channel'`` and the same learning rate
    works for both. Needs the whole training split in memory, so ImageNet
    does not offer it.

Statistics are stored on the 0-255 scale so that uint8 images normalise with
one subtract and one divide.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

CHOICES = ("per_channel", "per_pixel_mean")

# (mean, std), each per RGB channel on the 0-255 scale.
_FIXED_PER_CHANNEL = {
    "cifar10": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    "cifar100": ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4)),
    "imagenet2012": (tuple(255.0 * m for m in (0.485, 0.456, 0.406)), tuple(255.0 * s for s in (0.229, 0.224, 0.225))),
}

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
      dataset: the dataset name; selects fixed constants where they exist.
      train_images: uint8 [N, H, W, C] training split, or None when it is not
        held in memory (ImageNet).

    Raises:
      ValueError: unknown choice, or statistics that need a training split that
        is not in memory.
    """
    choice = choice or "per_channel"
    if choice not in CHOICES:
        raise ValueError(f"Unknown normalization {choice!r}; valid choices: {', '.join(CHOICES)}.")
    if choice == "per_channel" and dataset in _FIXED_PER_CHANNEL:
        mean, std = _FIXED_PER_CHANNEL[dataset]
        return Normalization(np.asarray(mean, np.float32), np.asarray(std, np.float32), "per_channel")
    if train_images is None:
        raise ValueError(
            f"normalization {choice!r} needs the training split of {dataset!r} in memory; use 'per_channel'."
        )
    if choice == "per_channel":
        return _per_channel_stats(train_images)
    return _per_pixel_mean_stats(train_images)
