"""Host-side ImageNet decoding and cropping, in TensorFlow (tf.data map functions).

Training: fb.resnet.torch's ``RandomSizedCrop(224)`` (PAPERS.md, "ImageNet
(v2)"): a crop covering 8%-100% of the image area with aspect ratio in
[3/4, 4/3], resized to 224x224 (bicubic, like ``image.scale``). The window is
drawn by ``tf.image.stateless_sample_distorted_bounding_box`` (up to 10
attempts, as fb.resnet.torch) and only that window is decoded
(``tf.image.decode_and_crop_jpeg``), which is several times cheaper than
decoding the whole JPEG. When no attempt fits, the sampler returns the whole
image and we fall back, as fb.resnet.torch does, to resizing the shorter side
to 224 and taking the centre crop. The flip and colour augmentation run on
device (``imagenet.py``).

Evaluation: resize the shorter side to S and take the centre crop x crop,
with S = 256 for crop 224 (224 / 0.875) and S = 320 for crop 320 (v2 Table 5:
"a 320x320 crop from an image whose shorter side is 320").

Every function returns uint8 [size, size, 3]. Randomness comes only from the
explicit ``seed`` (stateless ops), so the output is a function of its inputs.
"""

import tensorflow as tf

AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
MAX_ATTEMPTS = 10

# Shorter side before the centre crop, per evaluation crop size.
EVAL_RESIZE = {224: 256, 320: 320}


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    # Bicubic resizing overshoots [0, 255]; clip before the cast wraps around.
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def resize_shorter_center_crop(image: tf.Tensor, shorter: int,
                               crop: int) -> tf.Tensor:
    """Resizes the shorter side of a decoded image to ``shorter``, then centre-crops."""
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    scale = shorter / tf.minimum(height, width)
    new_height = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), crop)
    new_width = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), crop)
    resized = tf.image.resize(image, [new_height, new_width], method="bicubic")
    top = (new_height - crop) // 2
    left = (new_width - crop) // 2
    cropped = resized[top:top + crop, left:left + crop, :]
    return _to_uint8(tf.ensure_shape(cropped, [crop, crop, 3]))


def random_sized_crop(image_bytes: tf.Tensor, seed: tf.Tensor,
                      size: int = 224) -> tf.Tensor:
    """fb.resnet.torch ``RandomSizedCrop`` of one JPEG (see the module docstring).

    Args:
      image_bytes: a scalar string tensor holding a JPEG.
      seed: int [2] seed of the stateless sampler.
      size: output height and width.
    """
    shape = tf.image.extract_jpeg_shape(image_bytes)
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
    begin, window_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, whole_image, seed=seed, min_object_covered=0.0,
        aspect_ratio_range=ASPECT_RATIO_RANGE, area_range=AREA_RANGE,
        max_attempts=MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True)
    sampling_failed = tf.reduce_all(tf.equal(window_size[:2], shape[:2]))

    def crop_and_resize():
        window = tf.stack([begin[0], begin[1], window_size[0], window_size[1]])
        image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
        return _to_uint8(tf.image.resize(image, [size, size], method="bicubic"))

    def fallback():
        image = tf.io.decode_jpeg(image_bytes, channels=3)
        return resize_shorter_center_crop(image, size, size)

    return tf.cond(sampling_failed, fallback, crop_and_resize)


def eval_crop(image_bytes: tf.Tensor, crop: int) -> tf.Tensor:
    """The single-crop test protocol for ``crop`` (a key of ``EVAL_RESIZE``)."""
    image = tf.io.decode_jpeg(image_bytes, channels=3)
    return resize_shorter_center_crop(image, EVAL_RESIZE[crop], crop)
