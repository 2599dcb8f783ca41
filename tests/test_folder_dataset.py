"""The `folder` dataset: layout, labels, the ImageNet stream on JPEG and PNG files, and the
errors a bad folder gets before anything compiles (or, for a corrupt image met later, naming it)."""

import itertools
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from folder_images import write_folder

from resnet_identity.data import DatasetError, get_dataset, registry
from resnet_identity.training import config as config_lib

pytest.importorskip("tensorflow")


def _config(path, **options):
    return ml_collections.ConfigDict({"dataset": "folder", "folder": {"path": str(path), "image_size": 32, **options}})


def test_classes_are_the_sorted_sub_folders_and_the_stream_is_imagenets(tmp_path):
    write_folder(tmp_path, classes=("zebra", "ant", "mole"))
    facts = registry.facts(_config(tmp_path))
    assert facts.class_names == ("ant", "mole", "zebra")
    assert (facts.num_classes, facts.num_train, facts.eval_crops) == (3, 12, (32, 46, "10crop"))
    ds = get_dataset(_config(tmp_path, shuffle_buffer=4))
    epoch = list(itertools.islice(ds.train_batches(global_batch_size=4, start_step=0, seed=1), 3))
    assert all(b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.uint8 for b in epoch)
    np.testing.assert_array_equal(np.sort(np.concatenate([b["label"] for b in epoch])), np.repeat(np.arange(3), 4))
    resumed = next(ds.train_batches(global_batch_size=4, start_step=2, seed=1))
    np.testing.assert_array_equal(resumed["image"], epoch[2]["image"])
    # Class k's images are brightened by 60 k (folder_images), so the crops say which class they are.
    for batch in epoch:
        assert (
            np.argsort(batch["image"].mean(axis=(1, 2, 3))) == np.argsort(batch["label"], kind="stable")
        ).all() or len(set(batch["label"])) < len(batch["label"])
    for crop, shape in ((None, (32, 32, 3)), (46, (46, 46, 3)), ("10crop", (10, 32, 32, 3))):
        batches = list(ds.eval_batches(global_batch_size=4, crop=crop))
        assert [b["mask"].sum() for b in batches] == [4, 2]
        assert batches[0]["image"].shape[1:] == shape
        np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]), [0, 0, 1, 1, 2, 2])
    ten = next(ds.eval_batches(global_batch_size=4, crop="10crop"))["image"]
    np.testing.assert_array_equal(ten[:, 5:], ten[:, :5, :, ::-1])  # the last five are the first five mirrored


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda root: __import__("shutil").rmtree(root / "val"), r"has no val/ split"),
        (lambda root: [p.unlink() for p in (root / "train" / "dog").iterdir()], r"classes without images: train/dog/"),
        (lambda root: __import__("shutil").rmtree(root / "val" / "eel"), r"only in train/: eel"),
        (
            lambda root: (root / "train" / "cat" / "notes.txt").write_text("x"),
            r"without an image extension.*notes\.txt",
        ),
        (
            lambda root: (root / "train" / "cat" / "blank.jpg").write_bytes(b""),
            r"empty \(0-byte\) files: train/cat/blank",
        ),
        (lambda root: (root / "train" / "stray.jpg").write_bytes(b"x"), r"files outside class folders: stray\.jpg"),
        (
            lambda root: (root / "train" / "cat" / "moved.jpg").symlink_to(root / "gone.jpg"),
            r"cannot be opened: train/cat/moved\.jpg -> .*gone\.jpg \(No such file or directory\)",
        ),
        (
            lambda root: (root / "val" / "fox").symlink_to(root / "gone", target_is_directory=True),
            r"cannot be opened: val/fox -> .*gone \(No such file or directory\)",
        ),
    ],
)
def test_a_bad_folder_is_refused_by_validation_with_what_is_wrong(tmp_path, damage, message):
    write_folder(tmp_path)
    damage(tmp_path)
    config = config_lib.default_config()
    config.dataset, config.folder.path = "folder", str(tmp_path)
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(config)


def test_unset_or_missing_path_says_what_to_set(tmp_path):
    config = config_lib.default_config()
    config.dataset = "folder"
    with pytest.raises(config_lib.ConfigError, match=r"Set folder\.path"):
        config_lib.validate(config)
    config.folder.path = str(tmp_path / "nowhere")
    with pytest.raises(config_lib.ConfigError, match="is not a folder"):
        config_lib.validate(config)


def test_an_image_that_does_not_decode_is_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "val" / "dog" / "0.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match=r"do not decode.*val/dog/0\.jpg"):
        get_dataset(_config(tmp_path))  # the sample check, before anything compiles

    write_folder(tmp_path)  # repaired; then damaged after the checks, as if met mid-training
    ds = get_dataset(_config(tmp_path, shuffle_buffer=4))
    (tmp_path / "train" / "eel" / "1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match=r"Cannot decode .*train/eel/1\.png.*rerun the same command"):
        list(itertools.islice(ds.train_batches(global_batch_size=4, start_step=0, seed=0), 3))


def test_a_batch_larger_than_the_folder_is_refused(tmp_path):
    write_folder(tmp_path)
    config = config_lib.default_config()
    config.dataset, config.folder.path, config.batch_size = "folder", str(tmp_path), 16
    with pytest.raises(config_lib.ConfigError, match="batch_size=16 is larger than folder's 12 training examples"):
        config_lib.validate(config)


def test_a_broken_link_among_other_problems_is_one_error_line_from_train_py(tmp_path):
    """The listing's problems come in one `error:` message, with no traceback, from the real CLI."""
    images = write_folder(tmp_path / "images")
    (images / "train" / "dog" / "0.jpg").unlink()
    (images / "train" / "dog" / "0.jpg").symlink_to(tmp_path / "elsewhere" / "0.jpg")
    (images / "val" / "eel" / "notes.txt").write_text("x")
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [
            sys.executable,
            str(root / "train.py"),
            "--config=configs/quickstart.py",
            f"--workdir={tmp_path / 'run'}",
            "--config.dataset=folder",
            f"--config.folder.path={images}",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: "), done.stderr
    assert "train/dog/0.jpg -> " in done.stderr and "val/eel/notes.txt" in done.stderr, done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
