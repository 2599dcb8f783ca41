"""A dataset held in host memory as uint8 arrays: digits, synthetic, CIFAR.

The host side only gathers rows (``order.py`` says which); normalisation and
the pad-crop-flip augmentation run on device in ``train_transform``. The
training stream is therefore a pure function of (seed, step), and
``train_batches(start_step=k)`` starts at step k directly.
"""

import dataclasses
from collections.abc import Iterator

import jax
import numpy as np

from resnet_identity.data import augment, base, order
from resnet_identity.data import normalization as normalization_lib


@dataclasses.dataclass(frozen=True, eq=False)
class InMemoryDataset:
    """Implements ``base.Dataset`` over arrays held in host memory.

    Attributes:
      name: dataset name.
      num_classes: number of labels.
      train_images: uint8 [N, H, W, 3].
      train_labels: int32 [N].
      test_images: uint8 [M, H, W, 3].
      test_labels: int32 [M].
      normalization: applied first in both transforms.
      crop_padding: zero padding for the random crop (0: no crop).
      random_flip: whether training mirrors half of the images.
    """

    name: str
    num_classes: int
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    normalization: normalization_lib.Normalization
    crop_padding: int = 4
    random_flip: bool = True

    def __post_init__(self):
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(f"{split}_images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}.")
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise ValueError(f"{split}_labels must be int32 [{len(images)}], got {labels.dtype} {labels.shape}.")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"train and test images differ in shape: {self.train_images.shape[1:]} vs {self.test_images.shape[1:]}."
            )

    @property
    def image_size(self) -> int:
        return self.train_images.shape[1]

    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    @property
    def num_test(self) -> int:
        return len(self.test_labels)

    def train_batches(
        self, *, global_batch_size: int, start_step: int, seed: int, process_index: int = 0, process_count: int = 1
    ) -> Iterator[base.Batch]:
        """See ``base.Dataset.train_batches``; the order is ``order.py``'s."""
        local_batch = base.local_batch_size(global_batch_size, process_index, process_count)
        base.check_stream_start(start_step, seed)
        return self._train_stream(global_batch_size, start_step, seed, process_index, local_batch)

    def _train_stream(self, global_batch_size, start_step, seed, process_index, local_batch):
        epochs = order.EpochOrder(seed, self.num_train)
        step = start_step
        while True:
            start = order.train_slice_start(step, global_batch_size, process_index, local_batch)
            indices = epochs.indices(start, local_batch)
            yield {"image": self.train_images[indices], "label": self.train_labels[indices]}
            step += 1

    def eval_batches(
        self, *, global_batch_size: int, process_index: int = 0, process_count: int = 1, crop: int | None = None
    ) -> Iterator[base.Batch]:
        """See ``base.Dataset.eval_batches``.

        ``crop`` exists for ImageNet's two test protocols; here the only valid
        values are None and ``image_size`` (the images are used whole).
        """
        local_batch = base.local_batch_size(global_batch_size, process_index, process_count)
        if crop not in (None, self.image_size):
            raise ValueError(
                f"{self.name} evaluates whole {self.image_size}x{self.image_size} images; crop={crop} is invalid."
            )
        return self._eval_stream(global_batch_size, process_index, local_batch)

    def _eval_stream(self, global_batch_size, process_index, local_batch):
        for indices, mask in order.eval_index_batches(self.num_test, global_batch_size, process_index, local_batch):
            # Zero the padding rows so they are recognisable, not copies of row 0.
            images = self.test_images[indices]
            images[~mask] = 0
            labels = np.where(mask, self.test_labels[indices], 0).astype(np.int32)
            yield {"image": images, "label": labels, "mask": mask}

    def train_transform(self, images: jax.Array, rng: jax.Array) -> jax.Array:
        """Normalise, then pad-crop and flip as configured (``augment.py``)."""
        images = self.normalization(images)
        return augment.pad_crop_flip(images, rng, pad=self.crop_padding, flip=self.random_flip)

    def eval_transform(self, images: jax.Array) -> jax.Array:
        """Normalisation only."""
        return self.normalization(images)
