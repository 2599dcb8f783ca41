"""Input pipelines: ``get_dataset(config)`` returns a ``Dataset``.

Sources (``config.dataset``):
  * ``digits``: embedded UCI digits upsampled to 32x32 (``digits.py``);
  * ``synthetic``: fixed random images for benchmarks (``synthetic.py``);
  * ``cifar10`` / ``cifar100``: TFDS, read once into memory (``cifar.py``);
  * ``imagenet2012``: TFDS, streamed per process (``imagenet.py``).

The host yields uint8 images and int32 labels; normalisation and augmentation
run on device through ``Dataset.train_transform`` / ``eval_transform``.
TensorFlow and TFDS are imported only when a TFDS source is requested, so
this package works without the ``[tfds]`` extra.

Config fields read (all but ``dataset`` optional, read with ``config.get``):
  dataset, data_dir, normalization, tfds_download (default True),
  synthetic_image_size (32), synthetic_num_classes (10),
  imagenet_train_crop ('scale'), imagenet_color_jitter (0.0),
  imagenet_pca_lighting (0.0), imagenet_shuffle_buffer (10000).
"""

from typing import Any

from resnet_identity.data import cifar
from resnet_identity.data import digits
from resnet_identity.data import synthetic
from resnet_identity.data import tfds_access
from resnet_identity.data.base import Batch
from resnet_identity.data.base import Dataset
from resnet_identity.data.in_memory import InMemoryDataset
from resnet_identity.data.normalization import CHOICES as NORMALIZATIONS
from resnet_identity.data.tfds_access import DatasetNotPreparedError

DATASET_NAMES = ("digits", "synthetic", "cifar10", "cifar100", "imagenet2012")

__all__ = [
    "Batch", "DATASET_NAMES", "Dataset", "DatasetNotPreparedError",
    "InMemoryDataset", "NORMALIZATIONS", "get_dataset",
]


def _option(config: Any, name: str, default: Any) -> Any:
    """``config.get(name)``, with ``default`` when absent or None."""
    value = config.get(name, None)
    return default if value is None else value


def get_dataset(config: Any) -> Dataset:
    """Builds the dataset named by ``config.dataset``.

    Args:
      config: anything with ``.get(name, default)``, e.g. an
        ``ml_collections.ConfigDict``; the fields are listed in the module
        docstring.

    Raises:
      ValueError: unknown dataset or normalisation.
      ImportError: a TFDS source without TensorFlow / TFDS installed.
      DatasetNotPreparedError: a TFDS source that is not prepared.
    """
    name = config.get("dataset", None)
    if name not in DATASET_NAMES:
        raise ValueError(f"Unknown dataset {name!r}; valid names: "
                         f"{', '.join(DATASET_NAMES)}.")
    normalization = _option(config, "normalization", None)
    if normalization is not None and normalization not in NORMALIZATIONS:
        # Checked here so a typo fails before a TFDS dataset is read.
        raise ValueError(f"Unknown normalization {normalization!r}; valid "
                         f"choices: {', '.join(NORMALIZATIONS)}.")
    if name == "digits":
        return digits.load(normalization)
    if name == "synthetic":
        return synthetic.load(
            image_size=int(_option(config, "synthetic_image_size", 32)),
            num_classes=int(_option(config, "synthetic_num_classes", 10)),
            normalization=normalization)
    if name in ("cifar10", "cifar100"):
        return cifar.load(name, data_dir=_option(config, "data_dir", None),
                          download=bool(_option(config, "tfds_download", True)),
                          normalization=normalization)
    # imagenet2012. import_tfds() first, for its install hint; imagenet.py
    # imports TensorFlow at module load, hence the import here.
    tfds_access.import_tfds()
    from resnet_identity.data import imagenet
    return imagenet.load(
        data_dir=_option(config, "data_dir", None),
        normalization=normalization,
        train_crop=_option(config, "imagenet_train_crop", "scale"),
        color_jitter=_option(config, "imagenet_color_jitter", 0.0),
        pca_lighting=_option(config, "imagenet_pca_lighting", 0.0),
        shuffle_buffer=_option(config, "imagenet_shuffle_buffer",
                               imagenet.DEFAULT_SHUFFLE_BUFFER))
