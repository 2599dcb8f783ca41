"""Importing TensorFlow Datasets lazily, and failing clearly when data is missing.

TensorFlow is an optional extra (``pip install -e '.[tfds]'``): the embedded
and synthetic sources must work without it. Nothing here imports TensorFlow
at module load; ``import_tfds`` does, when a TFDS dataset is requested, and keeps
TensorFlow's and TFDS's start-up lines off the console unless INFO logging was asked for
(`--verbosity=0`; cli.py).
"""

import contextlib
import logging
import os
import re
import socket
import sys
import tempfile
import urllib.parse
import urllib.request

from absl import logging as absl_logging

from resnet_identity.data.base import DatasetError
from resnet_identity.runs.files import as_path

INSTALL_HINT = "pip install -e '.[tfds]'"

# Where TFDS expects the two ImageNet archives it cannot download itself
# (tensorflow_datasets imagenet2012 MANUAL_DOWNLOAD_INSTRUCTIONS; the builder's
# manual_dir defaults to <data_dir>/downloads/manual).
IMAGENET_ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


class DatasetNotPreparedError(DatasetError):
    """A TFDS dataset is neither prepared in ``data_dir`` nor downloadable."""


# What TensorFlow's C++ start-up prints before absl's logging is initialised, whatever
# TF_CPP_MIN_LOG_LEVEL says: absl's notice that it logs to stderr, INFO lines (oneDNN's
# notice, once per shared library; the CPU-feature guard) and the guard's continuation line.
_START_UP_LINE = re.compile(r"WARNING: All log messages before absl::InitializeLog|I\d{4} |To enable the following")


def import_tfds():
    """Returns ``(tensorflow, tensorflow_datasets)``.

    Also hides every accelerator from TensorFlow: it only runs the host input
    pipeline, and left alone it would reserve GPU memory that JAX needs.

    Raises:
      ImportError: naming the extra to install when either is missing.
    """
    try:
        with _start_up_lines_hidden():
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


def _verbose() -> bool:
    return absl_logging.get_verbosity() >= absl_logging.INFO


@contextlib.contextmanager
def _start_up_lines_hidden():
    """While TensorFlow is first imported, its C++ writes to file descriptor 2 directly; those
    writes are collected, and everything but its start-up lines is written back afterwards."""
    if "tensorflow" in sys.modules or _verbose():
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    logging.getLogger("absl").addFilter(_quiet_tfds_records)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _START_UP_LINE.match(line)))
            sys.stderr.flush()


def _quiet_tfds_records(record: logging.LogRecord) -> bool:
    """TFDS's own notices below ERROR (say, `file_utils`' "Variant folder ... has no
    dataset_info.json" when it looks for a dataset not yet prepared) stay off the console."""
    return (
        _verbose() or record.levelno >= logging.ERROR or f"{os.sep}tensorflow_datasets{os.sep}" not in record.pathname
    )


def resolve_data_dir(data_dir: str | None) -> str:
    """``data_dir`` (local or gs://), or TFDS's default ($TFDS_DATA_DIR, else
    ~/tensorflow_datasets)."""
    if data_dir:
        # Through as_path: TFDS's epath then reads a gs:// data_dir with the client it chose.
        return os.fspath(as_path(os.path.expanduser(data_dir)))
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def prepare_command(name: str, data_dir: str) -> str:
    """The command that prepares `name` into `data_dir` (resnet_identity/prepare.py)."""
    archive = "--archive=ILSVRC2012_img_train.tar --archive=ILSVRC2012_img_val.tar " if name == "imagenet2012" else ""
    return f"python -m resnet_identity.prepare {name} {archive}--data_dir={data_dir}"


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
            "2. Prepare the dataset (hours; needs ~300 GB free); this places both archives in "
            f"{manual_dir}/, where TFDS reads them:\n"
            f"  {prepare_command(name, data_dir)}\n"
            f"TensorFlow and TFDS come with: {INSTALL_HINT}\n"
            f"(cause: {cause})"
        )
    return (
        f"TFDS dataset '{name}' is not prepared in data_dir '{data_dir}' and "
        f"could not be downloaded.\n"
        "Prepare it (set data_dir, or the TFDS_DATA_DIR environment variable, to the same "
        "directory); on a machine without internet, add --archive=FILE with CIFAR's binary "
        f"archive, or copy a prepared '{name}' directory into '{data_dir}':\n"
        f"  {prepare_command(name, data_dir)}\n"
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


def unreachable(url: str) -> str | None:
    """Why a connection to `url`'s server (or to the proxy that requests would use) fails, if it
    does. Checked before a download: offline, TFDS's downloader retries for minutes."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        proxy_parts = urllib.parse.urlsplit(proxy)
        host, port, via = proxy_parts.hostname, proxy_parts.port or 80, f" through the proxy {proxy}"
    else:
        host, port, via = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), ""
    try:
        socket.create_connection((host, port), timeout=20).close()
    except OSError as error:
        return f"{host}:{port} cannot be reached{via} ({error})"
    return None


def _download(builder) -> Exception | None:
    """Downloads and prepares `builder`'s dataset; the exception instead of raising it, so
    that a failing process still reaches the other processes' barrier."""
    for url in builder.url_infos or {}:  # the files TFDS records checksums for: what it downloads
        if url.startswith("http") and (reason := unreachable(url)):
            return ConnectionError(reason)
    try:
        builder.download_and_prepare()
    except Exception as error:  # Any failure gets the same remedy.
        return error
    return None
