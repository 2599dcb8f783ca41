"""``synthetic``: random images and labels, for benchmarks and smoke tests.

Uniform random uint8 pixels and labels from a fixed seed, so every run sees
the same data. Training applies normalisation only (no crop, no flip), to
keep the device-side transform out of what a benchmark measures.
"""

import numpy as np

from resnet_identity.data import in_memory
from resnet_identity.data import normalization as normalization_lib

NAME = "synthetic"
NUM_TRAIN = 1024
NUM_TEST = 256
_SEED = 0


def load(image_size: int = 32, num_classes: int = 10,
         normalization: str | None = None) -> in_memory.InMemoryDataset:
    """Builds ``NUM_TRAIN`` + ``NUM_TEST`` random images of ``image_size``^2."""
    if image_size < 1 or num_classes < 1:
        raise ValueError("synthetic_image_size and synthetic_num_classes must be "
                         f">= 1, got {image_size} and {num_classes}.")
    rng = np.random.default_rng(_SEED)
    total = NUM_TRAIN + NUM_TEST
    images = rng.integers(0, 256, (total, image_size, image_size, 3),
                          dtype=np.uint8)
    labels = rng.integers(0, num_classes, total, dtype=np.int32)
    train_images = images[:NUM_TRAIN]
    return in_memory.InMemoryDataset(
        name=NAME,
        num_classes=num_classes,
        train_images=train_images,
        train_labels=labels[:NUM_TRAIN],
        test_images=images[NUM_TRAIN:],
        test_labels=labels[NUM_TRAIN:],
        normalization=normalization_lib.resolve(normalization, NAME,
                                                train_images),
        crop_padding=0,
        random_flip=False,
    )
