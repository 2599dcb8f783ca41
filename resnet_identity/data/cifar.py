"""``cifar10`` / ``cifar100``: read once through TFDS, then served from memory.

Both splits (50k train, 10k test, 32x32x3) are read with tf.data into host
numpy arrays when the dataset is built; from then on they are served exactly
like the embedded sources (``in_memory.py``): the order of ``order.py`` and
the device-side pad-4 crop + flip of the CIFAR recipe (docs/papers.md "CIFAR (v2 paper)").

TensorFlow is imported only when ``load`` runs (``tfds_access.import_tfds``). A missing
dataset is downloaded then (``config.tfds_download``); ``python -m resnet_identity.prepare``
prepares it beforehand, also from an archive on a machine without internet (docs/datasets.md).
"""

import numpy as np

from resnet_identity.data import in_memory, tfds_access
from resnet_identity.data import normalization as normalization_lib
from resnet_identity.data.base import ChannelStats, DatasetSpec, Facts

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
IMAGE_SIZE = 32
NUM_TRAIN = 50_000
# 'per_channel' normalisation, 0-255 scale: the constants of the released v2 code, fb.resnet.torch
# `datasets/cifar10.lua` and `datasets/cifar100.lua` (docs/papers.md "CIFAR (v2 paper)"); CIFAR-100's
# are computed the same way on its own training set.
PER_CHANNEL = {
    "cifar10": ChannelStats(mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7)),
    "cifar100": ChannelStats(mean=(129.3, 124.1, 112.4), std=(68.2, 65.4, 70.4)),
}
# CIFAR-10's labels 0-9, in order (the dataset's batches.meta).
CIFAR10_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Examples per tf.data batch while reading; bounds peak memory of the copy.
_READ_CHUNK = 10_000


def _read_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    _, tfds = tfds_access.import_tfds()
    # shuffle_files=False: the stored order, identical on every host, so the
    # permutations of order.py select the same examples everywhere.
    dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False).batch(_READ_CHUNK)
    images, labels = [], []
    for image_chunk, label_chunk in tfds.as_numpy(dataset):
        images.append(image_chunk)
        labels.append(label_chunk)
    return (np.concatenate(images).astype(np.uint8, copy=False), np.concatenate(labels).astype(np.int32))


def load(
    name: str, data_dir: str | None = None, download: bool = True, normalization: str | None = None
) -> in_memory.InMemoryDataset:
    """Reads CIFAR-10 or CIFAR-100 from TFDS into memory.

    Args:
      name: 'cifar10' or 'cifar100' (fine labels).
      data_dir: TFDS data directory; None for TFDS's default.
      download: whether TFDS may download and prepare a missing dataset.
      normalization: a ``normalization.CHOICES`` value; None for per-channel.

    Raises:
      DatasetNotPreparedError: the dataset is missing and cannot be downloaded.
      ImportError: TensorFlow / TFDS are not installed.
    """
    if name not in NUM_CLASSES:
        raise ValueError(f"Not a CIFAR dataset: {name!r}.")
    builder = tfds_access.prepared_builder(name, data_dir, download)
    train_images, train_labels = _read_split(builder, "train")
    test_images, test_labels = _read_split(builder, "test")
    return in_memory.InMemoryDataset(
        name=name,
        num_classes=NUM_CLASSES[name],
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        normalization=normalization_lib.resolve(normalization, name, train_images),
        crop_padding=4,
        random_flip=True,
    )


def _spec(name: str, class_names: tuple[str, ...] | None) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        facts=lambda options: Facts(
            num_classes=NUM_CLASSES[name], image_size=IMAGE_SIZE, num_train=NUM_TRAIN, class_names=class_names
        ),
        load=lambda options, settings: load(
            name, data_dir=settings.data_dir, download=settings.download, normalization=settings.normalization
        ),
        per_channel=PER_CHANNEL[name],
        title=TITLES[name],
        paper_recipe="cifar",  # docs/papers.md "CIFAR (v2 paper)"
    )


# CIFAR-100's fine-label names are left to TFDS's metadata, which needs TensorFlow.
SPEC = (_spec("cifar10", CIFAR10_CLASS_NAMES), _spec("cifar100", None))
