"""``imagenet2012``: streamed from TFDS with tf.data, one shard per process.

Train (PAPERS.md "ImageNet (v2)"):
  * each process reads its own ``tfds.split_for_jax_process`` slice of
    'train', with JPEGs left encoded (``SkipDecoding``) so the crop decodes
    only its window (``imagenet_preprocess.py``); the host yields uint8
    224x224 crops. ``train_crop`` (``imagenet_train_crop``) picks the crop:
    'scale', v1's shorter side drawn from [256, 480] then a random 224 crop
    (the default, as in the papers), or 'scale_aspect', fb.resnet.torch's
    random-sized crop;
  * on device, ``train_transform`` applies the optional colour jitter
    (``imagenet_color_jitter``, fb.resnet.torch uses 0.4) and PCA lighting
    (``imagenet_pca_lighting``, AlexNet's colour augmentation that v1 cites;
    fb.resnet.torch and ``recipes.imagenet`` use std 0.1) of ``color.py``,
    normalises with the ImageNet per-channel mean/std (v1 subtracts a
    per-pixel mean image instead), and flips half of the images. Both colour
    options default to 0 (off) here.

Order and resume: epoch e of process p is read with the file-shuffle seed,
shuffle-buffer seed and crop seed drawn from ``default_rng([seed, e, p])``;
every epoch yields exactly ``steps_per_epoch = (num_train // P) // b``
batches of b = B / P (the at most b examples of a shard left over are
dropped, a different random few each epoch), so all processes agree on where
epochs start. ``start_step = k`` rebuilds epoch ``k // steps_per_epoch`` and
skips ``k % steps_per_epoch`` batches into it, without decoding the skipped
examples. Resume is deterministic only to the extent that tf.data with fixed
seeds and ``deterministic=True`` is (same TFDS files, same TF version).

Eval: each process reads its ``split_for_jax_process`` slice of 'validation'
in stored order, applies the single-crop protocol of ``eval_batches(crop=)``
(224: shorter side 256; 320: shorter side 320), and pads with masked zero
images up to a common per-process count, so every example is seen exactly
once and all processes run the same number of batches.

Importing this module needs TensorFlow; ``get_dataset`` imports it lazily.
"""

import dataclasses
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from resnet_identity.data import augment
from resnet_identity.data import base
from resnet_identity.data import color
from resnet_identity.data import imagenet_preprocess
from resnet_identity.data import normalization as normalization_lib
from resnet_identity.data import tfds_access

NAME = "imagenet2012"
NUM_CLASSES = 1000
IMAGE_SIZE = 224
TRAIN_SPLIT = "train"
EVAL_SPLIT = "validation"
DEFAULT_SHUFFLE_BUFFER = 10_000


def _epoch_seeds(seed: int, epoch: int,
                 process_index: int) -> tuple[int, int, int]:
    """(file shuffle, shuffle buffer, crop) seeds of one epoch of one process."""
    rng = np.random.default_rng([seed, epoch, process_index])
    return tuple(int(s) for s in rng.integers(0, 2**31 - 1, size=3))


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # One thread per op: tf.data parallelism comes from the parallel maps.
    options.threading.max_intra_op_parallelism = 1
    return options


@dataclasses.dataclass(frozen=True, eq=False)
class ImageNetDataset:
    """Implements ``base.Dataset`` over the TFDS ``imagenet2012`` builder.

    Attributes:
      builder: a prepared ``tfds.core.DatasetBuilder`` for imagenet2012.
      normalization: per-channel ImageNet mean/std (0-255 scale).
      train_crop: a key of ``imagenet_preprocess.TRAIN_CROPS``: 'scale' (v1)
        or 'scale_aspect' (fb.resnet.torch).
      color_jitter: fb.resnet.torch ColorJitter strength; 0 disables it.
      pca_lighting: std of the PCA lighting noise; 0 disables it.
      shuffle_buffer: examples (still-encoded JPEGs) in the shuffle buffer.
    """

    builder: Any
    normalization: normalization_lib.Normalization
    train_crop: str = "scale"
    color_jitter: float = 0.0
    pca_lighting: float = 0.0
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    name: str = NAME
    num_classes: int = NUM_CLASSES
    image_size: int = IMAGE_SIZE

    @property
    def num_train(self) -> int:
        return self.builder.info.splits[TRAIN_SPLIT].num_examples

    @property
    def num_test(self) -> int:
        return self.builder.info.splits[EVAL_SPLIT].num_examples

    def steps_per_epoch(self, global_batch_size: int, process_count: int) -> int:
        """Batches per epoch; the same on every process (module docstring)."""
        local_batch = base.local_batch_size(global_batch_size, 0, process_count)
        steps = (self.num_train // process_count) // local_batch
        if steps < 1:
            raise ValueError(f"A per-process batch of {local_batch} is larger than "
                             f"the {self.num_train // process_count} training "
                             "examples of a process.")
        return steps

    def train_batches(self, *, global_batch_size: int, start_step: int,
                      seed: int, process_index: int = 0,
                      process_count: int = 1) -> Iterator[base.Batch]:
        """See ``base.Dataset.train_batches`` and the module docstring."""
        local_batch = base.local_batch_size(global_batch_size, process_index,
                                            process_count)
        base.check_stream_start(start_step, seed)
        steps = self.steps_per_epoch(global_batch_size, process_count)
        return self._train_stream(start_step, seed, process_index, process_count,
                                  local_batch, steps)

    def _train_stream(self, start_step, seed, process_index, process_count,
                      local_batch, steps):
        epoch, skip_steps = divmod(start_step, steps)
        while True:
            dataset = self._train_epoch(epoch, skip_steps * local_batch,
                                        steps * local_batch, local_batch, seed,
                                        process_index, process_count)
            yield from tfds.as_numpy(dataset)
            epoch += 1
            skip_steps = 0

    def _train_epoch(self, epoch, skip, num_examples, local_batch, seed,
                     process_index, process_count) -> tf.data.Dataset:
        file_seed, buffer_seed, crop_seed = _epoch_seeds(seed, epoch,
                                                         process_index)
        split = tfds.split_for_jax_process(TRAIN_SPLIT,
                                           process_index=process_index,
                                           process_count=process_count)
        dataset = self.builder.as_dataset(
            split=split, shuffle_files=True,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=file_seed,
                                        options=_options()))
        dataset = dataset.shuffle(self.shuffle_buffer, seed=buffer_seed)
        # enumerate() before skip(): an example's crop seed is its position in
        # the epoch, whether or not the stream started mid-epoch.
        dataset = dataset.take(num_examples).enumerate().skip(skip)

        crop = imagenet_preprocess.TRAIN_CROPS[self.train_crop]

        def prepare(index, example):
            crop_key = tf.stack([tf.constant(crop_seed, tf.int64), index])
            return {
                "image": crop(example["image"], crop_key, IMAGE_SIZE),
                "label": tf.cast(example["label"], tf.int32),
            }

        dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)
        dataset = dataset.batch(local_batch, drop_remainder=True)
        return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())

    def eval_batches(self, *, global_batch_size: int, process_index: int = 0,
                     process_count: int = 1,
                     crop: int | None = None) -> Iterator[base.Batch]:
        """See ``base.Dataset.eval_batches``; ``crop`` is 224 (default) or 320."""
        local_batch = base.local_batch_size(global_batch_size, process_index,
                                            process_count)
        crop = IMAGE_SIZE if crop is None else crop
        if crop not in imagenet_preprocess.EVAL_RESIZE:
            raise ValueError(f"ImageNet evaluation crop must be one of "
                             f"{sorted(imagenet_preprocess.EVAL_RESIZE)}, got "
                             f"{crop}.")
        split = tfds.split_for_jax_process(EVAL_SPLIT,
                                           process_index=process_index,
                                           process_count=process_count)
        count = self.builder.info.splits[split].num_examples
        # Shards differ by at most one example; pad all to the largest, rounded
        # up to whole batches, so every process runs the same number of steps.
        largest_shard = -(-self.num_test // process_count)
        padded = -(-largest_shard // local_batch) * local_batch
        dataset = self.builder.as_dataset(
            split=split, shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(options=_options()))

        def prepare(example):
            return {
                "image": imagenet_preprocess.eval_crop(example["image"], crop),
                "label": tf.cast(example["label"], tf.int32),
                "mask": tf.constant(True),
            }

        dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)
        padding = tf.data.Dataset.from_tensors({
            "image": tf.zeros([crop, crop, 3], tf.uint8),
            "label": tf.constant(0, tf.int32),
            "mask": tf.constant(False),
        }).repeat(padded - count)
        dataset = dataset.concatenate(padding).batch(local_batch)
        return iter(tfds.as_numpy(dataset.prefetch(tf.data.AUTOTUNE)))

    def train_transform(self, images: jax.Array, rng: jax.Array) -> jax.Array:
        """Colour augmentation (if enabled), normalisation, random flip."""
        flip_rng, jitter_rng, lighting_rng = jax.random.split(rng, 3)
        images = jnp.asarray(images, jnp.float32) / 255.0
        if self.color_jitter:
            images = color.color_jitter(images, jitter_rng, self.color_jitter)
        if self.pca_lighting:
            images = color.pca_lighting(images, lighting_rng, self.pca_lighting)
        images = self.normalization(images * 255.0)
        return augment.random_flip(images, flip_rng)

    def eval_transform(self, images: jax.Array) -> jax.Array:
        """Normalisation only."""
        return self.normalization(images)


def load(data_dir: str | None = None, normalization: str | None = None,
         train_crop: str = "scale", color_jitter: float = 0.0,
         pca_lighting: float = 0.0,
         shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER) -> ImageNetDataset:
    """Opens the prepared TFDS imagenet2012 (see the module docstring).

    Raises:
      DatasetNotPreparedError: with the manual-download steps, when missing.
      ValueError: an unsupported normalisation (only 'per_channel') or
        train crop.
    """
    # Checked first: a bad option should not wait behind a missing dataset.
    crops = imagenet_preprocess.TRAIN_CROPS
    if train_crop not in crops:
        raise ValueError(f"Unknown ImageNet train crop {train_crop!r}; valid "
                         f"choices: {', '.join(crops)}.")
    normalizer = normalization_lib.resolve(normalization, NAME, None)
    builder = tfds_access.prepared_builder(NAME, data_dir, download=False)
    return ImageNetDataset(
        builder=builder,
        normalization=normalizer,
        train_crop=train_crop,
        color_jitter=float(color_jitter),
        pca_lighting=float(pca_lighting),
        shuffle_buffer=int(shuffle_buffer),
    )
