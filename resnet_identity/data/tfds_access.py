"""Importing TensorFlow Datasets lazily, and failing clearly when data is missing.

TensorFlow is an optional extra (``pip install -e '.[tfds]'``): the embedded
and synthetic sources must work without it. Nothing here imports TensorFlow
at module load; ``import_tfds`` does, when a TFDS dataset is requested.
"""

import os

from resnet_identity.data.base import DatasetError
from resnet_identity.files import as_path

INSTALL_HINT = "pip install -e '.[tfds]'"

# Where TFDS expects the two ImageNet archives it cannot download itself
# (tensorflow_datasets imagenet2012 MANUAL_DOWNLOAD_INSTRUCTIONS; the builder's
# manual_dir defaults to <data_dir>/downloads/manual).
IMAGENET_ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


class DatasetNotPreparedError(DatasetError):
    """A TFDS dataset is neither prepared in ``data_dir`` nor downloadable."""


def import_tfds():
    """Returns ``(tensorflow, tensorflow_datasets)``.

    Also hides every accelerator from TensorFlow: it only runs the host input
    pipeline, and left alone it would reserve GPU memory that JAX needs.

    Raises:
      ImportError: naming the extra to install when either is missing.
    """
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "TFDS datasets (cifar10, cifar100, imagenet2012) need TensorFlow and "
            f"TensorFlow Datasets; install them with: {INSTALL_HINT}"
        ) from error
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # TensorFlow was initialised earlier by the caller, whose device setup
        # then stands; this module only avoids initialising GPUs itself.
        pass
    return tf, tfds


def resolve_data_dir(data_dir: str | None) -> str:
    """``data_dir`` (local or gs://), or TFDS's default ($TFDS_DATA_DIR, else
    ~/tensorflow_datasets)."""
    if data_dir:
        # Through as_path: TFDS's epath then reads a gs:// data_dir with the client it chose.
        return os.fspath(as_path(os.path.expanduser(data_dir)))
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def _prepare_commands(name: str, data_dir: str) -> str:
    return (
        f"  tfds build {name} --data_dir={data_dir}\n"
        "or, from Python:\n"
        '  python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir='{data_dir}')"
        '.download_and_prepare()"'
    )


def not_prepared_message(name: str, data_dir: str, cause: str) -> str:
    """The error text for a TFDS dataset that is missing from ``data_dir``."""
    if name == "imagenet2012":
        manual_dir = os.path.join(data_dir, "downloads", "manual")
        return (
            f"TFDS dataset 'imagenet2012' is not prepared in data_dir "
            f"'{data_dir}', and TFDS cannot download ImageNet itself.\n"
            "1. Register at https://image-net.org/download-images and download "
            f"{IMAGENET_ARCHIVES[0]} (~138 GB) and {IMAGENET_ARCHIVES[1]} "
            "(~6.3 GB).\n"
            f"2. Put both files, unextracted, in {manual_dir}/\n"
            "3. Build the TFDS dataset (hours; needs ~300 GB free):\n"
            f"{_prepare_commands(name, data_dir)}\n"
            f"TensorFlow and TFDS come with: {INSTALL_HINT}\n"
            f"(cause: {cause})"
        )
    return (
        f"TFDS dataset '{name}' is not prepared in data_dir '{data_dir}' and "
        f"could not be downloaded.\n"
        "Prepare it on a machine with network access (set data_dir, or the "
        "TFDS_DATA_DIR environment variable, to the same directory), or copy "
        f"a prepared '{name}' directory into '{data_dir}':\n"
        f"{_prepare_commands(name, data_dir)}\n"
        f"TensorFlow and TFDS come with: {INSTALL_HINT}\n"
        f"(cause: {cause})"
    )


def prepared_builder(name: str, data_dir: str | None, download: bool):
    """A ``tfds.core.DatasetBuilder`` for ``name`` whose data is ready to read.

    Args:
      name: the TFDS dataset name.
      data_dir: the TFDS data directory; None for TFDS's default.
      download: whether to download and prepare a missing dataset. ImageNet is
        never prepared here: TFDS needs the archives placed by hand, and
        building it takes hours.

    Raises:
      DatasetNotPreparedError: with the exact steps to prepare the dataset.
    """
    _, tfds = import_tfds()
    data_dir = resolve_data_dir(data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if name == "imagenet2012" or not download:
        cause = (
            "downloads are disabled (config.tfds_download=False)"
            if name != "imagenet2012"
            else "no prepared dataset found"
        )
        raise DatasetNotPreparedError(not_prepared_message(name, data_dir, cause))
    # Process 0 downloads first while the others wait: on a data_dir every host shares, the
    # others then find it prepared, instead of all writing it at once. On a host-local
    # data_dir each host then prepares its own copy.
    import jax
    from jax.experimental import multihost_utils

    failure = _download(builder) if jax.process_index() == 0 else None
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"tfds prepare {name}")
        if jax.process_index() > 0:
            builder = tfds.builder(name, data_dir=data_dir)
            failure = None if builder.is_prepared() else _download(builder)
    if failure is not None:
        raise DatasetNotPreparedError(
            not_prepared_message(name, data_dir, f"{type(failure).__name__}: {failure}")
        ) from failure
    return builder


def _download(builder) -> Exception | None:
    """Downloads and prepares `builder`'s dataset; the exception instead of raising it, so
    that a failing process still reaches the other processes' barrier."""
    try:
        builder.download_and_prepare()
    except Exception as error:  # Any failure gets the same remedy.
        return error
    return None
