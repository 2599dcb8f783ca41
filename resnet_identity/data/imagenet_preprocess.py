"""Host-side decoding and cropping of the streamed datasets, in TensorFlow (tf.data map functions).

The crops are ImageNet's (``crops.py`` names them); the ``folder`` dataset uses them at its
own image size, the sizes below scaled by ``size / 224``. JPEGs decode only the crop's
window; other formats (PNG, GIF, BMP) are decoded whole (twice in training: once for the
shape the window is drawn from, once for the pixels).

Training crops (``TRAIN_CROPS``, chosen by ``<dataset>.train_crop``; docs/papers.md,
"ImageNet (v2)"):

  * ``'scale'``, v1's scale augmentation, which v2 keeps (the "scale" rows of
    v2 Table 5): resize the image so its shorter side is S, an integer drawn
    uniformly from [256, 480], and take a random 224x224 crop. We draw S and
    the crop first, from the JPEG's shape alone, so the crop is a square
    window of ``round(224 * shorter_side / S)`` source pixels, and decode only
    that window (``tf.image.decode_and_crop_jpeg``) and resize it to 224x224
    (bicubic). This is the 224 crop of the image resized to S up to rounding
    the window to whole pixels (a scale off by at most 0.5 / window side,
    0.3% for ImageNet's 500x375 images) and the window's edge pixels being
    repeated where the whole resized image would blend in their neighbours.
    Decoding the whole JPEG and resizing all of it to S first costs about
    twice the host CPU (``benchmarks/imagenet_pipeline.py``; figures in
    benchmarks/results/history/2026-11-23.md, "ImageNet host pipeline").
  * ``'scale_aspect'``, fb.resnet.torch's ``RandomSizedCrop(224)`` (the
    "scale + aspect" row of Table 5): a crop covering 8%-100% of the image
    area with aspect ratio in [3/4, 4/3], resized to 224x224 (bicubic, like
    ``image.scale``). The window is drawn by
    ``tf.image.stateless_sample_distorted_bounding_box`` (up to 10 attempts,
    as fb.resnet.torch) and only that window is decoded. When no attempt
    fits, the sampler returns the whole image and we fall back, as
    fb.resnet.torch does, to resizing the shorter side to 224 and taking the
    centre crop.

The flip and colour augmentation run on device (``imagenet.py``).

Evaluation (``eval_crop``; ``crops.eval_resize`` gives the sizes): resize the
shorter side to S and take the centre crop x crop, with S = 256 for crop 224
(224 / 0.875) and S = 320 for crop 320 (v2 Table 5: "a 320x320 crop from an
image whose shorter side is 320"); or fb.resnet.torch's ten crops.

Every function returns uint8 [size, size, 3]. Randomness comes only from the
explicit ``seed`` (stateless ops), so the output is a function of its inputs.
"""

import tensorflow as tf

from resnet_identity.data import crops

AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
MAX_ATTEMPTS = 10
# v1 Sec. 3.4 (docs/papers.md, "ImageNet (v2)"): the shorter side before the crop,
# both ends included.
SHORTER_SIDE_RANGE = (256, 480)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    # Bicubic resizing overshoots [0, 255]; clip before the cast wraps around.
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def decode(image_bytes: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 3] of a JPEG, PNG, GIF (first frame) or BMP file's bytes."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def _shape(image_bytes: tf.Tensor) -> tf.Tensor:
    """int32 [3] (height, width, channels), read from a JPEG's header alone."""
    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.image.extract_jpeg_shape(image_bytes),
        lambda: tf.shape(decode(image_bytes)),
    )


def _resize_shorter(image: tf.Tensor, shorter: int, crop: int, method: str = "bicubic") -> tf.Tensor:
    """The decoded image resized so its shorter side is ``shorter``, each side at least ``crop``."""
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    scale = shorter / tf.minimum(height, width)
    new_height = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), crop)
    new_width = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), crop)
    return _to_uint8(tf.image.resize(image, [new_height, new_width], method=method))


def resize_shorter_center_crop(image: tf.Tensor, shorter: int, crop: int, method: str = "bicubic") -> tf.Tensor:
    """Resizes the shorter side of a decoded image to ``shorter``, then centre-crops."""
    resized = _resize_shorter(image, shorter, crop, method)
    shape = tf.shape(resized)
    top = (shape[0] - crop) // 2
    left = (shape[1] - crop) // 2
    return tf.ensure_shape(resized[top : top + crop, left : left + crop, :], [crop, crop, 3])


def ten_crop(image: tf.Tensor, shorter: int, crop: int, method: str = "bicubic") -> tf.Tensor:
    """fb.resnet.torch's TenCrop after Scale(shorter): uint8 [10, crop, crop, 3], the centre
    and the four corners, then the same five of the mirrored image."""
    resized = _resize_shorter(image, shorter, crop, method)
    shape = tf.shape(resized)
    bottom, right = shape[0] - crop, shape[1] - crop
    corners = [(bottom // 2, right // 2), (0, 0), (0, right), (bottom, 0), (bottom, right)]
    five = tf.stack([resized[top : top + crop, left : left + crop, :] for top, left in corners])
    return tf.ensure_shape(tf.concat([five, tf.reverse(five, axis=[2])], 0), [10, crop, crop, 3])


def _decode_window(image_bytes: tf.Tensor, window: tf.Tensor, size: int) -> tf.Tensor:
    """Decodes ``window`` [top, left, height, width] (only that window of a JPEG);
    resizes it to size."""

    def whole_then_window():
        image = decode(image_bytes)
        return image[window[0] : window[0] + window[2], window[1] : window[1] + window[3], :]

    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3),
        whole_then_window,
    )
    return _to_uint8(tf.image.resize(image, [size, size], method="bicubic"))


def scale_crop_window(
    shape: tf.Tensor, seed: tf.Tensor, size: int = 224, shorter_range: tuple[int, int] = SHORTER_SIDE_RANGE
) -> tuple[tf.Tensor, tf.Tensor]:
    """Draws v1's scale augmentation for an image of ``shape`` (module docstring).

    Args:
      shape: int [3] (height, width, channels) of the source image.
      seed: int [2] seed of the stateless sampler.
      size: side of the crop taken after the resize.
      shorter_range: (low, high), both included, for the resized shorter side.

    Returns:
      ``(shorter, window)``: the drawn shorter side S (int32 scalar) and the
      int32 window [top, left, side, side], in source pixels, that becomes the
      size x size crop of the image resized to shorter side S.
    """
    shorter_seed, top_seed, left_seed = tf.unstack(tf.random.split(seed, 3))
    low, high = shorter_range
    shorter = tf.random.stateless_uniform([], shorter_seed, low, high + 1, tf.int32)
    height, width = shape[0], shape[1]
    short_side = tf.minimum(height, width)
    side = tf.cast(tf.round(size * tf.cast(short_side, tf.float32) / tf.cast(shorter, tf.float32)), tf.int32)
    side = tf.clip_by_value(side, 1, short_side)
    top = tf.random.stateless_uniform([], top_seed, 0, height - side + 1, tf.int32)
    left = tf.random.stateless_uniform([], left_seed, 0, width - side + 1, tf.int32)
    return shorter, tf.stack([top, left, side, side])


def scale_crop(image_bytes: tf.Tensor, seed: tf.Tensor, size: int = 224) -> tf.Tensor:
    """v1's scale augmentation of one image (see the module docstring), the
    shorter-side range scaled by ``size / 224``.

    Args:
      image_bytes: a scalar string tensor holding a JPEG (or PNG, GIF, BMP).
      seed: int [2] seed of the stateless sampler.
      size: output height and width.
    """
    shape = _shape(image_bytes)
    low, high = SHORTER_SIDE_RANGE
    _, window = scale_crop_window(shape, seed, size, (round(low * size / 224), round(high * size / 224)))
    return _decode_window(image_bytes, window, size)


def random_sized_crop(image_bytes: tf.Tensor, seed: tf.Tensor, size: int = 224) -> tf.Tensor:
    """fb.resnet.torch ``RandomSizedCrop`` of one image (see the module docstring).

    Args:
      image_bytes: a scalar string tensor holding a JPEG (or PNG, GIF, BMP).
      seed: int [2] seed of the stateless sampler.
      size: output height and width.
    """
    shape = _shape(image_bytes)
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
    begin, window_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        whole_image,
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=AREA_RANGE,
        max_attempts=MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    sampling_failed = tf.reduce_all(tf.equal(window_size[:2], shape[:2]))

    def crop_and_resize():
        window = tf.stack([begin[0], begin[1], window_size[0], window_size[1]])
        return _decode_window(image_bytes, window, size)

    def fallback():
        return resize_shorter_center_crop(decode(image_bytes), size, size)

    return tf.cond(sampling_failed, fallback, crop_and_resize)


# ``<dataset>.train_crop`` -> the host-side crop of a training image.
TRAIN_CROPS = {crops.SCALE: scale_crop, crops.SCALE_ASPECT: random_sized_crop}


def eval_crop(
    image_bytes: tf.Tensor, crop: int | str, image_size: int = 224, method: str = "bicubic", shorter: int | None = None
) -> tf.Tensor:
    """The test protocol ``crop`` (one of ``crops.eval_crops(image_size)``): uint8
    [crop, crop, 3], or [10, image_size, image_size, 3] for ``crops.TEN_CROP``. ``method``
    resizes (bicubic as fb.resnet.torch; torchvision's weights expect bilinear); ``shorter``
    replaces the shorter side of the ``image_size`` and ten-crop protocols."""
    shorter, side = crops.eval_resize(crop, image_size, shorter)
    if crop == crops.TEN_CROP:
        return ten_crop(decode(image_bytes), shorter, side, method)
    return resize_shorter_center_crop(decode(image_bytes), shorter, side, method)
