"""Geometric training augmentation, on device, in pure JAX.

The CIFAR recipe of both papers (v1 Sec. 4.2; v2 Appendix, docs/papers.md "CIFAR (v2 paper)"):
"pad 4 pixels on each side, take a random 32x32 crop from the padded image or
its horizontal flip". The released code (fb.resnet.torch ``cifar10.lua``:
``ColorNormalize``, ``HorizontalFlip(0.5)``, ``RandomCrop(32, 4)``) normalises
*before* padding, so the padding is zero in normalised units; the functions
here therefore take images that are already normalised.

All functions act on a batch [N, H, W, C], draw one independent offset and
flip per example from a single key, are deterministic given that key, and
are jittable (static shapes: ``dynamic_slice`` keeps the crop size fixed).
"""

import jax
import jax.numpy as jnp


def crop_offsets(rng: jax.Array, num_images: int, pad: int) -> jax.Array:
    """int32 [N, 2] (row, column) offsets into the padded image, in [0, 2*pad]."""
    return jax.random.randint(rng, (num_images, 2), 0, 2 * pad + 1, dtype=jnp.int32)


def crop_padded(images: jax.Array, offsets: jax.Array, pad: int) -> jax.Array:
    """Zero-pads each image by ``pad`` and crops back to its size at ``offsets``.

    Offsets (pad, pad) return the image unchanged; (0, 0) shifts it down-right
    by ``pad`` and exposes ``pad`` rows and columns of zeros.
    """
    height, width, channels = images.shape[1:]
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop_one(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop_one)(padded, offsets)


def flip_mask(rng: jax.Array, num_images: int) -> jax.Array:
    """bool [N]: which images to mirror, each with probability 1/2."""
    return jax.random.bernoulli(rng, 0.5, (num_images,))


def flip_horizontally(images: jax.Array, mask: jax.Array) -> jax.Array:
    """Mirrors (left-right) the images where ``mask`` is True."""
    return jnp.where(mask[:, None, None, None], images[:, :, ::-1, :], images)


def random_flip(images: jax.Array, rng: jax.Array) -> jax.Array:
    """Mirrors each image with probability 1/2."""
    return flip_horizontally(images, flip_mask(rng, images.shape[0]))


def pad_crop_flip(images: jax.Array, rng: jax.Array, *, pad: int, flip: bool) -> jax.Array:
    """Random pad-and-crop (skipped when ``pad`` is 0), then optional flip.

    Args:
      images: float [N, H, W, C], already normalised (padding is zero there).
      rng: a JAX key; the only source of randomness.
      pad: pixels of zero padding on each side; 4 in the papers.
      flip: whether to mirror half of the images.
    """
    crop_rng, flip_rng = jax.random.split(rng)
    if pad:
        images = crop_padded(images, crop_offsets(crop_rng, images.shape[0], pad), pad)
    if flip:
        images = random_flip(images, flip_rng)
    return images
