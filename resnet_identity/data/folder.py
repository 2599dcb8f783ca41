"""`folder`: your own images, one sub-folder per class, streamed like ImageNet (`streamed.py`).

Layout (`config.folder.path`, a local path or any `etils.epath` URL such as gs://):

    PATH/train/<class>/<image>.jpg|.jpeg|.png
    PATH/val/<class>/<image>.jpg|.jpeg|.png

Classes are the sub-folder names, sorted (label i is the i-th name); train/ and val/ must
hold the same ones. Files whose names start with "." are ignored. Training and evaluation
are ImageNet's: the same crops at `folder.image_size` (sizes scaled by image_size / 224,
`crops.py`), the same colour augmentation and flip, and ImageNet's per-channel mean/std,
which weights trained on ImageNet expect.

What is checked, and when (a demanding user's folder may hold a million files; decoding
them all up front would take longer than an epoch):
- before anything compiles (`SPEC.facts`, run by config validation, and `load`): both
  splits exist; each has at least one class, the same classes, and no class without images;
  every file opens (no broken symbolic link), has an image extension and is not empty; no
  stray files or nested folders (they would be silently left out). `load` also decodes a
  sample, `SAMPLE_SIZE` files of each split drawn with a fixed seed, which catches a folder
  of the wrong format;
- while training or evaluating: an image that does not decode stops the run with an error
  naming the file (`streamed.py`); replace or delete it and rerun to resume.
The listing is read once per process and path (`_scan`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath

from resnet_identity.data import crops, imagenet
from resnet_identity.data import normalization as normalization_lib
from resnet_identity.data.base import DatasetError, DatasetSpec, Facts, Option, Settings
from resnet_identity.runs.files import as_path

NAME = "folder"
SPLITS = ("train", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SAMPLE_SIZE = 32
# Problems of one kind listed in full up to this many, then counted.
_SHOWN = 5
LAYOUT = "PATH/train/<class>/<image>.jpg|.jpeg|.png and PATH/val/<class>/<image>..., the same classes in both"


@dataclasses.dataclass(frozen=True)
class Split:
    files: tuple[str, ...]
    labels: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Listing:
    classes: tuple[str, ...]
    train: Split
    val: Split


def _local_size(entry: os.DirEntry) -> int | str:
    """The entry's size in bytes (0 for a folder), or why it cannot be opened: a symbolic link
    whose target is gone (or a loop of links) lists fine but fails here."""
    if entry.is_dir():
        return 0
    try:
        return entry.stat().st_size
    except OSError as error:
        return error.strerror or type(error).__name__


def _entries(directory: epath.Path) -> list[tuple[str, bool, int | str]]:
    """(name, is a folder, size in bytes or why it cannot be opened) of each non-hidden entry,
    sorted by name."""
    if "://" not in os.fspath(directory):  # local: one scandir, sizes without a request per file
        with os.scandir(directory) as scan:
            found = [(e.name, e.is_dir(), _local_size(e)) for e in scan]
    else:
        found = [(p.name, p.is_dir(), 0 if p.is_dir() else p.stat().length) for p in directory.iterdir()]
    return sorted(entry for entry in found if not entry[0].startswith("."))


def _unopenable(path: epath.Path, relative: str, reason: str) -> str:
    """`relative`, with the target it points to if it is a symbolic link, and why it cannot be opened."""
    target = f" -> {os.readlink(path)}" if os.path.islink(path) else ""
    return f"{relative}{target} ({reason})"


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _list_split(root: epath.Path, split: str) -> tuple[dict[str, list[str]], list[str]]:
    """The image files of each class folder of `root/split`, and the problems found there."""
    entries = _entries(root / split)
    unopenable = [
        _unopenable(root / split / name, f"{split}/{name}", size) for name, _, size in entries if isinstance(size, str)
    ]
    problems: list[str] = []
    strays = [name for name, is_dir, size in entries if not is_dir and isinstance(size, int)]
    if strays:
        problems.append(f"{split}/ holds files outside class folders: {_some(strays)}.")
    files: dict[str, list[str]] = {}
    bad_type, empty, nested = [], [], []
    for name, is_dir, _ in entries:
        if not is_dir:
            continue
        images = []
        for file, file_is_dir, size in _entries(root / split / name):
            relative = f"{split}/{name}/{file}"
            if isinstance(size, str):
                unopenable.append(_unopenable(root / split / name / file, relative, size))
            elif file_is_dir:
                nested.append(relative + "/")
            elif not file.lower().endswith(IMAGE_EXTENSIONS):
                bad_type.append(relative)
            elif size == 0:
                empty.append(relative)
            else:
                images.append(os.fspath(root / split / name / file))
        files[name] = images
    if nested:
        problems.append(
            f"nested folders are not read: {_some(nested)}; move their images up into the class folder, or remove them."
        )
    if bad_type:
        problems.append(
            f"files without an image extension {IMAGE_EXTENSIONS}: {_some(bad_type)}; convert or remove them."
        )
    if empty:
        problems.append(f"empty (0-byte) files: {_some(empty)}.")
    if unopenable:
        problems.append(
            f"entries that cannot be opened: {_some(unopenable)}; restore what a broken link points to, "
            "or remove the link."
        )
    if not files:
        problems.append(f"{split}/ has no class folders.")
    return files, problems


def _class_problems(files: dict[str, dict[str, list[str]]]) -> list[str]:
    """What is wrong with the class folders across the splits: different classes, or empty ones."""
    problems = []
    only_train = sorted(set(files["train"]) - set(files["val"]))
    only_val = sorted(set(files["val"]) - set(files["train"]))
    if only_train or only_val:
        problems.append(
            "train/ and val/ must hold the same classes:"
            + (f" only in train/: {_some(only_train)};" if only_train else "")
            + (f" only in val/: {_some(only_val)};" if only_val else "")
            + " add or remove class folders so that they match."
        )
    empty_classes = [f"{split}/{name}/" for split in SPLITS for name, images in files[split].items() if not images]
    if empty_classes:
        problems.append(f"classes without images: {_some(empty_classes)}.")
    return problems


@functools.lru_cache(maxsize=8)
def _scan(path: str) -> Listing:
    """Lists and checks the folder (module docstring); raises one `DatasetError` naming
    every kind of problem found."""
    root = as_path(path)
    if not root.is_dir():
        raise DatasetError(f"folder.path {path!r} is not a folder. Expected {LAYOUT}.")
    missing = [split for split in SPLITS if not (root / split).is_dir()]
    if missing:
        raise DatasetError(f"{path} has no {' or '.join(s + '/' for s in missing)} split. Expected {LAYOUT}.")
    problems: list[str] = []
    files: dict[str, dict[str, list[str]]] = {}
    for split in SPLITS:
        files[split], found = _list_split(root, split)
        problems += found
    problems += _class_problems(files)
    if problems:
        raise DatasetError(f"The folder dataset {path} cannot be used:\n  - " + "\n  - ".join(problems))
    classes = sorted(files["train"])

    def split(name: str) -> Split:
        pairs = [(file, label) for label, cls in enumerate(classes) for file in files[name][cls]]
        return Split(tuple(file for file, _ in pairs), tuple(label for _, label in pairs))

    return Listing(tuple(classes), split("train"), split("val"))


def scan(options: Mapping[str, Any]) -> Listing:
    if not options["path"]:
        raise DatasetError(f"Set folder.path to your images (--config.folder.path=DIR). Expected {LAYOUT}.")
    return _scan(os.fspath(as_path(options["path"])))  # keyed absolute: the cache outlives a chdir


def facts(options: Mapping[str, Any]) -> Facts:
    listing = scan(options)
    return Facts(
        num_classes=len(listing.classes),
        image_size=options["image_size"],
        num_train=len(listing.train.files),
        eval_crops=crops.eval_crops(options["image_size"]),
        drops_remainder=True,
        class_names=listing.classes,
    )


class FolderSource:
    """`streamed.Source` over the files of a `Listing`."""

    def __init__(self, listing: Listing):
        self.listing = listing
        import tensorflow as tf

        self._tf = tf

    @property
    def num_train(self) -> int:
        return len(self.listing.train.files)

    @property
    def num_test(self) -> int:
        return len(self.listing.val.files)

    def _files(self, split: Split, process_index: int, process_count: int):
        return self._tf.data.Dataset.from_tensor_slices(
            {
                "file": list(split.files[process_index::process_count]),
                "label": np.asarray(split.labels[process_index::process_count], np.int32),
            }
        )

    def train_files(self, shuffle_seed: int, process_index: int, process_count: int):
        files = self._files(self.listing.train, process_index, process_count)
        return files.shuffle(
            len(self.listing.train.files) // process_count + 1, seed=shuffle_seed, reshuffle_each_iteration=False
        )

    def eval_files(self, process_index: int, process_count: int):
        return self._files(self.listing.val, process_index, process_count)

    def eval_count(self, process_index: int, process_count: int) -> int:
        return len(self.listing.val.files[process_index::process_count])

    def read(self, file):
        return self._tf.io.read_file(file)

    def describe(self, file: bytes) -> str:
        return file.decode()


def check_sample(listing: Listing, size: int = SAMPLE_SIZE) -> None:
    """Decodes `size` files of each split (all if fewer), drawn with a fixed seed; raises a
    `DatasetError` naming those that do not decode."""
    import tensorflow as tf

    from resnet_identity.data import imagenet_preprocess

    rng = np.random.default_rng(0)
    failures = []
    for split in (listing.train, listing.val):
        for index in sorted(rng.permutation(len(split.files))[:size]):
            try:
                imagenet_preprocess.decode(tf.io.read_file(split.files[index]))
            except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
                failures.append(f"{split.files[index]} ({error.message.strip()})")
    if failures:
        raise DatasetError(
            f"Images that do not decode, among a sample of {size} per split: {_some(failures)}. "
            "Replace or delete them; the whole folder may hold more."
        )


def load(options: Mapping[str, Any], settings: Settings):
    """The folder dataset (module docstring), after the listing's checks and a sample decode."""
    errors = _check(options)
    if errors:
        raise ValueError(" ".join(errors))
    listing = scan(options)
    from resnet_identity.data import tfds_access

    tfds_access.import_tfds()  # before streamed's own TensorFlow import: it hides TF's start-up lines
    from resnet_identity.data import streamed

    check_sample(listing)
    return streamed.StreamedDataset(
        name=NAME,
        source=FolderSource(listing),
        num_classes=len(listing.classes),
        image_size=int(options["image_size"]),
        normalization=normalization_lib.resolve(settings.normalization, NAME, None),
        train_crop=options["train_crop"],
        color_jitter=float(options["color_jitter"]),
        pca_lighting=float(options["pca_lighting"]),
        shuffle_buffer=int(options["shuffle_buffer"]),
    )


def _check(options: Mapping[str, Any]) -> list[str]:
    errors = crops.check_stream_options(options)
    if not (isinstance(options["image_size"], int) and options["image_size"] >= 1):
        errors.append(f"image_size={options['image_size']!r} must be a positive int (224 for ImageNet weights).")
    return errors


SPEC = DatasetSpec(
    name=NAME,
    facts=facts,
    load=load,
    options={"path": Option(None, str), "image_size": Option(224, int), **crops.STREAM_OPTIONS},
    check=_check,
    per_channel=imagenet.PER_CHANNEL,
)
