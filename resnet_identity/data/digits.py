"""``digits``: the UCI handwritten digits, embedded, for fast end-to-end runs.

1797 greyscale 8x8 images of the digits 0-9, shipped in ``digits.npz``
(written once by ``make_digits_npz.py`` from scikit-learn's copy, so neither
the network nor scikit-learn is needed). At load time each image is
upsampled once to 32x32 (bilinear) and replicated to 3 channels, so the CIFAR
networks run on it unchanged.

Split (fixed, stored in the file): 1437 train / 360 test, stratified, 35-37
test images per class.

Training augmentation: pad-4 random crop, no flip. A mirrored digit is a
different or invalid glyph (2, 3, 4, 5, 7, 9), so the CIFAR flip would
corrupt labels. Four padded pixels at 32x32 are one original pixel of shift:
mild enough that a small v2 ResNet reaches >=95% test accuracy in a few
epochs. Normalisation defaults to per-channel statistics of the training
split.
"""

import importlib.resources

import numpy as np

from resnet_identity.data import in_memory
from resnet_identity.data import normalization as normalization_lib
from resnet_identity.data.base import DatasetSpec, Facts

NAME = "digits"
NUM_CLASSES = 10
IMAGE_SIZE = 32
NUM_TRAIN = 1437
NUM_TEST = 360


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] weights of 1-D linear interpolation.

    Half-pixel centres with edge clamping, the convention of
    ``jax.image.resize(..., 'bilinear')`` and of most image libraries when
    upsampling.
    """
    source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    source = np.clip(source, 0, in_size - 1)
    lower = np.floor(source).astype(int)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = source - lower
    weights = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(weights, (rows, lower), 1 - frac)
    np.add.at(weights, (rows, upper), frac)
    return weights


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, h, w] -> uint8 [N, size, size, 3], bilinear, rounded."""
    rows = bilinear_matrix(images.shape[1], size)
    cols = bilinear_matrix(images.shape[2], size)
    resized = np.einsum("yh,nhw,xw->nyx", rows, images.astype(np.float64), cols)
    grey = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def load(normalization: str | None = None) -> in_memory.InMemoryDataset:
    """Builds the ``digits`` dataset (see the module docstring)."""
    source = importlib.resources.files("resnet_identity.data") / "digits.npz"
    with source.open("rb") as handle, np.load(handle) as arrays:
        images = upsample(arrays["images"], IMAGE_SIZE)
        labels = arrays["labels"].astype(np.int32)
        is_test = arrays["is_test"]
    train_images = images[~is_test]
    return in_memory.InMemoryDataset(
        name=NAME,
        num_classes=NUM_CLASSES,
        train_images=train_images,
        train_labels=labels[~is_test],
        test_images=images[is_test],
        test_labels=labels[is_test],
        normalization=normalization_lib.resolve(normalization, NAME, train_images),
        crop_padding=4,
        random_flip=False,
    )


SPEC = DatasetSpec(
    name=NAME,
    facts=lambda options: Facts(
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SIZE,
        num_train=NUM_TRAIN,
        class_names=tuple(str(digit) for digit in range(NUM_CLASSES)),
    ),
    load=lambda options, settings: load(settings.normalization),
)
