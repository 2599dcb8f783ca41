"""``synthetic``: random images and labels, for benchmarks and smoke tests.

Uniform random uint8 pixels and labels from a fixed seed, so every run sees
the same data. Training applies normalisation only (no crop, no flip), to
keep the device-side transform out of what a benchmark measures. Options
(``config.synthetic.*``): ``image_size`` and ``num_classes``.
"""

import numpy as np

from resnet_identity.data import in_memory
from resnet_identity.data import normalization as normalization_lib
from resnet_identity.data.base import DatasetSpec, Facts, Option

NAME = "synthetic"
NUM_TRAIN = 1024
NUM_TEST = 256
_SEED = 0


def load(image_size: int = 32, num_classes: int = 10, normalization: str | None = None) -> in_memory.InMemoryDataset:
    """Builds ``NUM_TRAIN`` + ``NUM_TEST`` random images of ``image_size``^2."""
    if image_size < 1 or num_classes < 1:
        raise ValueError(
            f"synthetic.image_size and synthetic.num_classes must be >= 1, got {image_size} and {num_classes}."
        )
    rng = np.random.default_rng(_SEED)
    total = NUM_TRAIN + NUM_TEST
    images = rng.integers(0, 256, (total, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, total, dtype=np.int32)
    train_images = images[:NUM_TRAIN]
    return in_memory.InMemoryDataset(
        name=NAME,
        num_classes=num_classes,
        train_images=train_images,
        train_labels=labels[:NUM_TRAIN],
        test_images=images[NUM_TRAIN:],
        test_labels=labels[NUM_TRAIN:],
        normalization=normalization_lib.resolve(normalization, NAME, train_images),
        crop_padding=0,
        random_flip=False,
    )


def _check(options) -> list[str]:
    return [
        f"{name}={options[name]!r} must be an int >= 1."
        for name in ("image_size", "num_classes")
        if not (isinstance(options[name], int) and options[name] >= 1)
    ]


SPEC = DatasetSpec(
    name=NAME,
    facts=lambda options: Facts(
        num_classes=options["num_classes"], image_size=options["image_size"], num_train=NUM_TRAIN
    ),
    load=lambda options, settings: load(
        image_size=int(options["image_size"]),
        num_classes=int(options["num_classes"]),
        normalization=settings.normalization,
    ),
    options={"image_size": Option(32, int), "num_classes": Option(10, int)},
    check=_check,
)
