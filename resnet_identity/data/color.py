"""ImageNet colour augmentation of fb.resnet.torch, on device, in pure JAX.

docs/papers.md ("ImageNet (v2)"): fb.resnet.torch trains with colour jitter 0.4
and PCA lighting noise of std 0.1; ``datasets/imagenet.lua`` applies, after
the random-sized crop and before ``ColorNormalize``:

  * ``ColorJitter{brightness=0.4, contrast=0.4, saturation=0.4}``: the three
    ops in a random order, each a blend ``alpha*img + (1-alpha)*other`` with
    ``alpha = 1 + U(-0.4, 0.4)``, where ``other`` is black (brightness), the
    mean grey level of the image (contrast), or the per-pixel grey image
    (saturation); grey = 0.299 R + 0.587 G + 0.114 B;
  * ``Lighting(0.1, eigval, eigvec)``: AlexNet's PCA noise, adding
    ``eigvec @ (alpha * eigval)`` with ``alpha ~ N(0, 0.1)`` to every pixel.

Both act on the 0-1 scale and, as in fb.resnet.torch, do not clip. Each
example draws its own factors from one key, so both are deterministic given
the key and jittable.
"""

import jax
import jax.numpy as jnp
import numpy as np

# fb.resnet.torch datasets/imagenet.lua, "pca".
PCA_EIGVAL = np.asarray([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.asarray(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32
)

_GREY_WEIGHTS = np.asarray([0.299, 0.587, 0.114], np.float32)


def _grey(image: jax.Array) -> jax.Array:
    return jnp.sum(image * _GREY_WEIGHTS, axis=-1, keepdims=True)


def _brightness(image, alpha):
    return alpha * image


def _contrast(image, alpha):
    return alpha * image + (1 - alpha) * jnp.mean(_grey(image))


def _saturation(image, alpha):
    return alpha * image + (1 - alpha) * _grey(image)


_JITTER_OPS = (_brightness, _contrast, _saturation)


def color_jitter(images: jax.Array, rng: jax.Array, strength: float) -> jax.Array:
    """Brightness, contrast and saturation jitter in a random order per image.

    Args:
      images: float [N, H, W, 3] on the 0-1 scale.
      rng: a JAX key.
      strength: the ``var`` of fb.resnet.torch (0.4); factors are
        ``1 + U(-strength, strength)``.
    """
    num_images = images.shape[0]
    order_rng, alpha_rng = jax.random.split(rng)
    orders = jax.vmap(lambda key: jax.random.permutation(key, 3))(jax.random.split(order_rng, num_images))
    alphas = 1.0 + jax.random.uniform(alpha_rng, (num_images, 3), minval=-strength, maxval=strength)

    def jitter_one(image, order, alpha):
        for position in range(3):
            op = order[position]
            image = jax.lax.switch(op, _JITTER_OPS, image, alpha[op])
        return image

    return jax.vmap(jitter_one)(images, orders, alphas)


def pca_lighting(images: jax.Array, rng: jax.Array, std: float) -> jax.Array:
    """AlexNet-style PCA lighting noise with per-image ``alpha ~ N(0, std)``.

    Args:
      images: float [N, H, W, 3] on the 0-1 scale.
      rng: a JAX key.
      std: standard deviation of ``alpha`` (0.1 in fb.resnet.torch).
    """
    alpha = std * jax.random.normal(rng, (images.shape[0], 3))
    # rgb[n, i] = sum_j eigvec[i, j] * alpha[n, j] * eigval[j]
    rgb = jnp.einsum("ij,nj->ni", PCA_EIGVEC, alpha * PCA_EIGVAL)
    return images + rgb[:, None, None, :]
