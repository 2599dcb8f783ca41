"""What the docs' commands read from the internet or from the user, made here for the docs test
(tests/test_docs_commands.py). Each writes real files in the layout the real reader expects.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


def torchvision_weights(torch_home: pathlib.Path, model: str, tag: str) -> pathlib.Path:
    """Random weights for torchvision's `model`, saved where `WeightsEnum.get_state_dict` reads a
    download it made before: $TORCH_HOME/hub/checkpoints/<the weights URL's file name>."""
    from resnet_identity.interop._torch import import_torchvision

    torchvision = import_torchvision()
    import torch

    enum = torchvision.models.get_model_weights(model)
    weights = enum.DEFAULT if tag == "DEFAULT" else enum[tag]
    path = torch_home / "hub" / "checkpoints" / os.path.basename(weights.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.get_model(model).state_dict(), path)
    return path


def timm_weights(hf_home: pathlib.Path, model: str, tag: str) -> pathlib.Path:
    """Random weights for timm's `model`.`tag` as the Hugging Face hub caches a download:
    $HF_HOME/hub/models--<repository>/snapshots/<revision>/model.safetensors, refs/main naming
    the revision."""
    from safetensors.torch import save_file

    from resnet_identity.interop._torch import import_timm

    timm = import_timm()
    tag = timm.get_pretrained_cfg(model).tag if tag in ("DEFAULT", "") else tag
    repository = timm.get_pretrained_cfg(f"{model}.{tag}").hf_hub_id
    cache = hf_home / "hub" / f"models--{repository.replace('/', '--')}"
    revision = "0" * 40
    (cache / "refs").mkdir(parents=True, exist_ok=True)
    (cache / "refs" / "main").write_text(revision)
    (cache / "snapshots" / revision).mkdir(parents=True, exist_ok=True)
    path = cache / "snapshots" / revision / "model.safetensors"
    save_file(timm.create_model(model).state_dict(), path)
    return path


def photo(path: pathlib.Path, seed: int) -> None:
    """A 300x400 photo-sized random image, JPEG or PNG by its suffix."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def image_folder(path: pathlib.Path) -> None:
    """36 images (8 train and 4 validation in each of 3 classes) in data/folder.py's layout."""
    from tests.folder_images import write_folder

    write_folder(path, per_class=(8, 4))


def tiny_imagenet(data_dir: pathlib.Path) -> None:
    """ImageNet prepared in a TFDS data_dir from a tiny ILSVRC2012 in the official tars' layout
    (tests/imagenet_archive.py: 3 classes, 9 training and 3 validation images), by
    `python -m resnet_identity.prepare imagenet2012 --archive=...`, TFDS's own builder."""
    from tests.imagenet_archive import write_archives

    archives = data_dir / "archives"
    archives.mkdir()
    write_archives(archives, validation=3)  # each evaluation command runs ResNet-50 on them at 224 and up
    command = ["-m", "resnet_identity.prepare", "imagenet2012", f"--archive={archives}", f"--data_dir={data_dir}"]
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def tiny_cifar(data_dir: pathlib.Path) -> None:
    """CIFAR-10 and CIFAR-100 prepared in a TFDS data_dir by TFDS's own builder from tiny archives
    in the real format, served on 127.0.0.1 (tests/cifar_archive.py), in a subprocess: the suite's
    own processes stay free of TensorFlow."""
    code = (
        "import sys; from tests.cifar_archive import prepare_tiny_cifar\n"
        "for name in ('cifar10', 'cifar100'): prepare_tiny_cifar(name, sys.argv[1])"
    )
    done = subprocess.run([sys.executable, "-c", code, str(data_dir)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
