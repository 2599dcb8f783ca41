"""Input pipelines: ``get_dataset(config)`` returns a ``Dataset``.

The datasets (``config.dataset``) and their facts are declared in their own modules and
listed in ``registry.py`` (docs/datasets.md):
  * ``digits``: embedded UCI digits upsampled to 32x32 (``digits.py``);
  * ``synthetic``: fixed random images for benchmarks (``synthetic.py``);
  * ``cifar10`` / ``cifar100``: TFDS, read once into memory (``cifar.py``);
  * ``imagenet2012``: TFDS, streamed per process (``imagenet.py``, ``streamed.py``);
  * ``folder``: your own images, one sub-folder per class, streamed (``folder.py``).

The host yields uint8 images and int32 labels; normalisation and augmentation
run on device through ``Dataset.train_transform`` / ``eval_transform``.
TensorFlow and TFDS are imported only when a TFDS or streamed source is loaded,
so this package works without the ``[tfds]`` extra.

Config fields read (all but ``dataset`` optional, read with ``config.get``):
``dataset``, ``data_dir``, ``tfds_download`` (default True), ``normalization``, and the
dataset's own options under its name (``config.imagenet2012.train_crop``, ...).
"""

from typing import Any

from resnet_identity.data import registry
from resnet_identity.data.base import Batch, Dataset, DatasetError, Facts
from resnet_identity.data.in_memory import InMemoryDataset
from resnet_identity.data.normalization import CHOICES as NORMALIZATIONS
from resnet_identity.data.tfds_access import DatasetNotPreparedError

__all__ = [
    "Batch",
    "Dataset",
    "DatasetError",
    "DatasetNotPreparedError",
    "Facts",
    "InMemoryDataset",
    "NORMALIZATIONS",
    "get_dataset",
]


def get_dataset(config: Any) -> Dataset:
    """Builds the dataset named by ``config.dataset``.

    Args:
      config: anything with ``.get(name, default)``, e.g. an
        ``ml_collections.ConfigDict``; the fields are listed in the module
        docstring.

    Raises:
      ValueError: unknown dataset, option or normalisation.
      ImportError: a TFDS source without TensorFlow / TFDS installed.
      DatasetError: data that cannot be used as configured (e.g.
        ``DatasetNotPreparedError``, a TFDS source that is not prepared).
    """
    spec = registry.spec(config.get("dataset", None))
    settings = registry.settings(config)
    if settings.normalization is not None and settings.normalization not in NORMALIZATIONS:
        # Checked here so a typo fails before a TFDS dataset is read.
        raise ValueError(
            f"Unknown normalization {settings.normalization!r}; valid choices: {', '.join(NORMALIZATIONS)}."
        )
    options = registry.options(config)
    errors = spec.check(options)
    if errors:
        raise ValueError(f"Invalid {spec.name} options: " + " ".join(errors))
    return spec.load(options, settings)
