"""A tiny ILSVRC2012 in the layout of ImageNet's two official tars, as TFDS's builder reads them.

  write_archives(directory, classes=3, per_class=3, validation=6) -> dict[str, list[str]]
      Writes `ILSVRC2012_img_train.tar` (one tar per class, `<synset>.tar`, of JPEGs named
      `<synset>_<i>.JPEG`) and `ILSVRC2012_img_val.tar` (`ILSVRC2012_val_<8 digits>.JPEG`) into
      `directory`; returns the synsets of each split's images, {"train": [...], "validation": [...]}.

TFDS's builder (tensorflow_datasets/datasets/imagenet2012) labels a training image by its class
tar's name, and the n-th validation image (by sorted name) by the n-th line of the
`validation_labels.txt` it ships, which is the official ground truth; so the validation images
here are the first `validation` of the official names, and their synsets that file's lines.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image

# The first classes of TFDS's labels.txt (the official order of the 1000 synsets).
SYNSETS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475")


def _jpeg(rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 256, (40 + int(rng.integers(0, 30)), 56, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar archive (mode "w:gz": gzipped) holding `members`, name to content."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def write_archives(directory, classes: int = 3, per_class: int = 3, validation: int = 6) -> dict[str, list[str]]:
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

    rng = np.random.default_rng(0)
    synsets = SYNSETS[:classes]
    class_tars = {
        f"{synset}.tar": tar_bytes({f"{synset}_{i}.JPEG": _jpeg(rng) for i in range(per_class)}) for synset in synsets
    }
    with open(os.path.join(directory, "ILSVRC2012_img_train.tar"), "wb") as file:
        file.write(tar_bytes(class_tars))
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, validation + 1)]
    with open(os.path.join(directory, "ILSVRC2012_img_val.tar"), "wb") as file:
        file.write(tar_bytes({name: _jpeg(rng) for name in names}))
    ground_truth = imagenet_common.tfds.core.tfds_path(imagenet_common._VALIDATION_LABELS_FNAME).read_text().split()
    return {"train": [s for s in synsets for _ in range(per_class)], "validation": ground_truth[:validation]}
