"""Datasets streamed from encoded images with tf.data, one shard per process: imagenet2012, folder.

A `Source` says where the encoded images are (a TFDS builder, a folder of files); this
module does the rest, the same for every source.

Train (docs/papers.md "ImageNet (v2)"):
  * each process reads its own slice of the training split, the images still encoded, so
    the crop decodes only its window (`imagenet_preprocess.py`); the host yields uint8
    image_size x image_size crops. `train_crop` picks the crop: "scale", v1's shorter side
    drawn from [256, 480] then a random 224 crop (the default, as in the papers), or
    "scale_aspect", fb.resnet.torch's random-sized crop (`crops.py`);
  * on device, `train_transform` applies the optional colour jitter (`color_jitter`,
    fb.resnet.torch uses 0.4) and PCA lighting (`pca_lighting`, AlexNet's colour
    augmentation that v1 cites; fb.resnet.torch and `recipes.imagenet` use std 0.1) of
    `color.py`, normalises, and flips half of the images. Both colour options default to
    0 (off).

Order and resume: epoch e of process p is read with the file-shuffle seed, shuffle-buffer
seed and crop seed drawn from `default_rng([seed, e, p])`; every epoch yields exactly
`steps_per_epoch = (num_train // P) // b` batches of b = B / P (the at most b examples of a
shard left over are dropped, a different random few each epoch), so all processes agree on
where epochs start. `start_step = k` rebuilds epoch `k // steps_per_epoch` and skips
`k % steps_per_epoch` batches into it, without decoding the skipped examples. Resume is
deterministic only to the extent that tf.data with fixed seeds and `deterministic=True` is
(same files, same TF version).

Eval: each process reads its slice of the evaluation split in stored order, applies the
test protocol of `eval_batches(crop=)` (`crops.py`: a single centre crop, or ten crops
whose softmax outputs `train_state.eval_step` averages), and pads with masked zero images
up to a common per-process count, so every example is seen exactly once and all processes
run the same number of batches.

An image that cannot be decoded stops the stream with a `DatasetError` naming its file
(found by re-reading the failing batch's files one by one).

Importing this module needs TensorFlow; the dataset modules import it lazily.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from resnet_identity.data import augment, base, color, crops, imagenet_preprocess
from resnet_identity.data import normalization as normalization_lib


class Source(Protocol):
    """Where a streamed dataset's encoded images come from.

    The `tf.data.Dataset`s it returns yield `{"file": string scalar, "label": int32 scalar}`;
    `read(file)` turns a "file" into the image's encoded bytes.
    """

    num_train: int
    num_test: int

    def train_files(self, shuffle_seed: int, process_index: int, process_count: int) -> tf.data.Dataset:
        """This process's slice of the training split, its file order shuffled by `shuffle_seed`."""
        ...

    def eval_files(self, process_index: int, process_count: int) -> tf.data.Dataset:
        """This process's slice of the evaluation split, in stored order."""
        ...

    def eval_count(self, process_index: int, process_count: int) -> int:
        """Examples in `eval_files(process_index, process_count)`."""
        ...

    def read(self, file: tf.Tensor) -> tf.Tensor: ...

    def describe(self, file: bytes) -> str:
        """How an error message names one "file"."""
        ...


def _epoch_seeds(seed: int, epoch: int, process_index: int) -> tuple[int, int, int]:
    """(file shuffle, shuffle buffer, crop) seeds of one epoch of one process."""
    rng = np.random.default_rng([seed, epoch, process_index])
    return tuple(int(s) for s in rng.integers(0, 2**31 - 1, size=3))


def read_options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # One thread per op: tf.data parallelism comes from the parallel maps.
    options.threading.max_intra_op_parallelism = 1
    return options


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedDataset:
    """Implements `base.Dataset` over a `Source` of encoded images.

    Attributes:
      name: the `config.dataset` value.
      source: where the images come from.
      num_classes: number of labels.
      image_size: side of the training crops.
      normalization: applied on device, after the colour augmentation.
      train_crop: a key of `imagenet_preprocess.TRAIN_CROPS`.
      color_jitter: fb.resnet.torch ColorJitter strength; 0 disables it.
      pca_lighting: std of the PCA lighting noise; 0 disables it.
      shuffle_buffer: examples (still-encoded images) in the shuffle buffer.
      eval_interpolation: how evaluation resizes ("bicubic", or "bilinear" for weights
        trained that way, e.g. torchvision's).
      eval_shorter: the shorter side before the image_size and ten-crop evaluation crops
        (None: round(image_size * 256 / 224); imported weights may set their own).
    """

    name: str
    source: Source
    num_classes: int
    image_size: int
    normalization: normalization_lib.Normalization
    train_crop: str = crops.SCALE
    color_jitter: float = 0.0
    pca_lighting: float = 0.0
    shuffle_buffer: int = 10_000
    eval_interpolation: str = "bicubic"
    eval_shorter: int | None = None

    @property
    def num_train(self) -> int:
        return self.source.num_train

    @property
    def num_test(self) -> int:
        return self.source.num_test

    def train_batches(
        self, *, global_batch_size: int, start_step: int, seed: int, process_index: int = 0, process_count: int = 1
    ) -> Iterator[base.Batch]:
        """See `base.Dataset.train_batches` and the module docstring."""
        local_batch = base.local_batch_size(global_batch_size, process_index, process_count)
        base.check_stream_start(start_step, seed)
        steps = base.steps_per_epoch(self.num_train, global_batch_size, drops_remainder=True)
        if steps < 1:
            raise ValueError(
                f"A per-process batch of {local_batch} is larger than the "
                f"{self.num_train // process_count} training examples of a process."
            )
        return self._train_stream(start_step, seed, process_index, process_count, local_batch, steps)

    def _train_stream(self, start_step, seed, process_index, process_count, local_batch, steps):
        epoch, skip_steps = divmod(start_step, steps)
        while True:
            files = self._epoch_files(
                epoch, skip_steps * local_batch, steps * local_batch, seed, process_index, process_count
            )
            crop_seed = _epoch_seeds(seed, epoch, process_index)[2]
            yield from self._named_failures(
                self._crops(files, crop_seed).batch(local_batch, drop_remainder=True),
                files.map(lambda index, example: example),
                local_batch,
            )
            epoch += 1
            skip_steps = 0

    def _epoch_files(self, epoch, skip, num_examples, seed, process_index, process_count) -> tf.data.Dataset:
        """(index in epoch, {"file", "label"}) of one epoch, from example `skip` on."""
        file_seed, buffer_seed, _ = _epoch_seeds(seed, epoch, process_index)
        files = self.source.train_files(file_seed, process_index, process_count)
        # The same order on every pass, so that a failing batch's files can be read again.
        files = files.shuffle(self.shuffle_buffer, seed=buffer_seed, reshuffle_each_iteration=False)
        # enumerate() before skip(): an example's crop seed is its position in the epoch,
        # whether or not the stream started mid-epoch.
        return files.take(num_examples).enumerate().skip(skip)

    def _crops(self, files: tf.data.Dataset, crop_seed: int) -> tf.data.Dataset:
        crop = imagenet_preprocess.TRAIN_CROPS[self.train_crop]

        def prepare(index, example):
            crop_key = tf.stack([tf.constant(crop_seed, tf.int64), index])
            return {
                "image": crop(self.source.read(example["file"]), crop_key, self.image_size),
                "label": example["label"],
            }

        return files.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _named_failures(
        self, batches: tf.data.Dataset, files: tf.data.Dataset, local_batch: int
    ) -> Iterator[base.Batch]:
        """`batches` as numpy; an image that fails to decode raises `DatasetError` naming
        its file, found among the failing batch's `files`."""
        done = 0
        try:
            for batch in tfds.as_numpy(batches.prefetch(tf.data.AUTOTUNE).with_options(read_options())):
                yield batch
                done += 1
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
            suspects = files.skip(done * local_batch).take(local_batch)
            for example in suspects.as_numpy_iterator():
                try:
                    imagenet_preprocess.decode(self.source.read(example["file"]))
                except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as cause:
                    raise base.DatasetError(
                        f"Cannot decode {self.source.describe(example['file'])} ({cause.message.strip()}). "
                        "Replace or delete the file, then rerun the same command to resume."
                    ) from error
            raise

    def eval_batches(
        self, *, global_batch_size: int, process_index: int = 0, process_count: int = 1, crop: int | str | None = None
    ) -> Iterator[base.Batch]:
        """See `base.Dataset.eval_batches`; `crop` is one of `crops.eval_crops(image_size)`
        (None: image_size); "10crop" yields images [b, 10, image_size, image_size, 3]."""
        local_batch = base.local_batch_size(global_batch_size, process_index, process_count)
        crop = self.image_size if crop is None else crop
        _, side = crops.eval_resize(crop, self.image_size)
        count = self.source.eval_count(process_index, process_count)
        # Shards differ by at most one example; pad all to the largest, rounded up to whole
        # batches, so every process runs the same number of steps.
        largest_shard = -(-self.num_test // process_count)
        padded = -(-largest_shard // local_batch) * local_batch
        files = self.source.eval_files(process_index, process_count)

        def prepare(example):
            return {
                "image": imagenet_preprocess.eval_crop(
                    self.source.read(example["file"]), crop, self.image_size, self.eval_interpolation, self.eval_shorter
                ),
                "label": example["label"],
                "mask": tf.constant(True),
            }

        shape = [10, side, side, 3] if crop == crops.TEN_CROP else [side, side, 3]
        padding = tf.data.Dataset.from_tensors(
            {
                "image": tf.zeros(shape, tf.uint8),
                "label": tf.constant(0, tf.int32),
                "mask": tf.constant(False),
            }
        ).repeat(padded - count)
        batches = (
            files.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .concatenate(padding)
            .batch(local_batch)
        )
        return self._named_failures(batches, files, local_batch)

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
