"""Preparing CIFAR for real: TFDS's own builder and download manager, only the network replaced.

`tests/cifar_archive.py` writes a tiny archive in CIFAR's binary format and serves it from a
real HTTP server on 127.0.0.1; TFDS downloads it, records its checksum (its flow for a new
file), extracts it and writes the records, and `train.py` then trains on them. The command
`python -m resnet_identity.prepare` runs as a user runs it, in a subprocess, from an archive
on disk; a broken archive gets one line.
"""

import gzip
import json
import os
import socket
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from tests import cifar_archive
from tests.imagenet_archive import tar_bytes

pytest.importorskip("tensorflow_datasets")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What TensorFlow, absl and TFDS print at start-up unless told not to (issue 25).
START_UP_NOISE = ("oneDNN", "InitializeLog", "file_utils", "cpu_feature_guard", "I0000", "W0000")


def _run(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _assert_quiet(result):
    console = result.stdout + result.stderr
    assert "Traceback" not in console, console
    noise = [line for line in console.splitlines() if any(marker in line for marker in START_UP_NOISE)]
    assert not noise, noise


def _pairs(images, labels):
    return sorted((image.tobytes(), int(label)) for image, label in zip(images, labels))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_prepared_through_tfds_trains(tmp_path, name):
    data_dir = tmp_path / "tensorflow_datasets"
    written = cifar_archive.prepare_tiny_cifar(name, data_dir, train=40, test=20)

    from resnet_identity.data import cifar

    dataset = cifar.load(name, data_dir=str(data_dir), download=False)
    prepared = {
        "train": (dataset.train_images, dataset.train_labels),
        "test": (dataset.test_images, dataset.test_labels),
    }
    for split, (images, labels) in written.items():
        # Every image with its label, decoded from TFDS's records (which it stores in another order).
        assert _pairs(*prepared[split]) == _pairs(images, labels), split

    workdir = tmp_path / "run"
    result = _run(
        "train.py",
        "--config=configs/cifar_preact164.py:smoke",
        f"--config.dataset={name}",
        f"--config.data_dir={data_dir}",
        "--config.tfds_download=False",
        "--config.model_overrides.depth=11",
        "--config.num_train_steps=3",
        "--config.schedule.boundaries=(2,)",
        "--config.schedule.warmup_steps=1",
        "--config.eval_every_steps=3",
        "--config.checkpoint_every_steps=3",
        "--config.eval_batch_size=20",
        f"--workdir={workdir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_quiet(result)
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == 3 and final["test_examples"] == 20
    assert np.isfinite(final["test_loss"])


def test_prepare_command_from_an_archive_on_disk(tmp_path):
    archive = tmp_path / "cifar-100-binary.tar.gz"
    cifar_archive.write_archive("cifar100", archive, train=30, test=10)
    data_dir = tmp_path / "data"
    result = _run("-m", "resnet_identity.prepare", "cifar100", f"--archive={archive}", f"--data_dir={data_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_quiet(result)
    assert f"Prepared cifar100 in {data_dir} from {archive} (40 images)." in result.stdout
    assert "is not byte-identical to the official cifar-100-binary.tar.gz" in result.stderr
    assert (data_dir / "cifar100" / "3.0.2" / "dataset_info.json").exists()

    again = _run("-m", "resnet_identity.prepare", "cifar100", f"--data_dir={data_dir}")
    assert again.returncode == 0 and again.stdout.strip() == f"cifar100 is already prepared in {data_dir}."
    _assert_quiet(again)


def _broken_archives(tmp_path):
    """{case: (file name, bytes, what the error line says)}, from a real tiny archive."""
    good = tmp_path / "good.tar.gz"
    cifar_archive.write_archive("cifar10", good)
    whole = good.read_bytes()
    other = tmp_path / "other.tar.gz"
    cifar_archive.write_archive("cifar100", other)
    with tarfile.open(good) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}
    short_record = dict(members)
    short_record["cifar-10-batches-bin/test_batch.bin"] = members["cifar-10-batches-bin/test_batch.bin"][:-5]
    return {
        "truncated": (whole[: len(whole) // 2], "is truncated"),
        "not_a_tar": (b"<html>404 Not Found</html>\n" * 40, "is not a tar archive"),
        "gzip_of_text": (gzip.compress(b"hello\n" * 100), "is not a tar archive"),
        "python_version": (
            tar_bytes({"cifar-10-batches-py/data_batch_1": b"x" * 100}, "w:gz"),
            "is CIFAR's Python version",
        ),
        "wrong_members": (
            tar_bytes({"photos/cat.jpg": b"x" * 100}, "w:gz"),
            "lacks cifar-10-batches-bin/data_batch_1.bin",
        ),
        "other_dataset": (other.read_bytes(), "is cifar100's archive"),
        "partial_record": (tar_bytes(short_record, "w:gz"), "test_batch.bin is not whole 3073-byte records"),
    }


def test_broken_archives_get_one_line_each(tmp_path):
    data_dir = tmp_path / "data"
    for case, (content, expected) in _broken_archives(tmp_path).items():
        path = tmp_path / f"{case}-cifar-10-binary.tar.gz"
        path.write_bytes(content)
        result = _run("-m", "resnet_identity.prepare", "cifar10", f"--archive={path}", f"--data_dir={data_dir}")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, (case, result.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, result.stderr)
        assert expected in lines[0] and str(path) in lines[0], (case, lines[0])
        assert "Traceback" not in result.stdout + result.stderr
    assert not (data_dir / "cifar10").exists()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["cifar1O"], "give one dataset to prepare, one of cifar10, cifar100, imagenet2012"),
        (["cifar10", "--archive=/nonexistent/cifar-10-binary.tar.gz"], "does not exist"),
        (["imagenet2012", "--archive=/nonexistent"], "does not exist"),
    ],
)
def test_mistakes_get_one_line(tmp_path, args, expected):
    result = _run("-m", "resnet_identity.prepare", *args, f"--data_dir={tmp_path}")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_no_network_gets_one_line_at_once(tmp_path):
    """Offline (here: a proxy that refuses connections, on any machine), the download is not
    retried for minutes: one line says how to prepare from an archive instead."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    # Both spellings: urllib prefers the lower-case one where a machine sets both.
    env = {"HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
    result = _run("-m", "resnet_identity.prepare", "cifar10", f"--data_dir={tmp_path}", env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot download cifar10: 127.0.0.1:{proxy.rsplit(':', 1)[1]} cannot be reached")
    assert lines[0].endswith("`python -m resnet_identity.prepare cifar10 --archive=cifar-10-binary.tar.gz`.")


def test_imagenet_prepared_from_its_two_tars_is_read(tmp_path):
    """ImageNet's manual path on a tiny ILSVRC2012 layout: the command places the tars in
    downloads/manual, TFDS's builder reads them, and the dataset serves their labels."""
    from tests import imagenet_archive

    archives = tmp_path / "archives"
    archives.mkdir()
    synsets = imagenet_archive.write_archives(archives)
    data_dir = tmp_path / "data"
    result = _run("-m", "resnet_identity.prepare", "imagenet2012", f"--archive={archives}", f"--data_dir={data_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_quiet(result)
    assert result.stdout.strip().endswith(f"Prepared imagenet2012 in {data_dir}.")
    assert os.path.realpath(data_dir / "downloads" / "manual" / "ILSVRC2012_img_val.tar") == str(
        archives / "ILSVRC2012_img_val.tar"
    )

    import ml_collections

    from resnet_identity import data
    from resnet_identity.data import imagenet

    dataset = data.get_dataset(ml_collections.ConfigDict({"dataset": "imagenet2012", "data_dir": str(data_dir)}))
    assert (dataset.num_train, dataset.num_test) == (9, 6)
    tfds = pytest.importorskip("tensorflow_datasets")
    names = tfds.builder(imagenet.NAME, data_dir=str(data_dir)).info.features["label"].names
    evaluated = list(dataset.eval_batches(global_batch_size=8))
    assert evaluated[0]["image"].shape == (8, 224, 224, 3)
    seen = sorted(names[label] for batch in evaluated for label in batch["label"][batch["mask"]])
    assert seen == sorted(synsets["validation"])
    batch = next(dataset.train_batches(global_batch_size=9, start_step=0, seed=0))
    assert sorted(names[label] for label in batch["label"]) == sorted(synsets["train"])


def test_a_damaged_imagenet_tar_gets_one_line(tmp_path):
    (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(b"\0" * 10)
    (tmp_path / "ILSVRC2012_img_val.tar").write_text("<html>Forbidden</html>\n" * 30)
    result = _run("-m", "resnet_identity.prepare", "imagenet2012", f"--archive={tmp_path}", f"--data_dir={tmp_path}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "is not a tar archive" in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_gs_data_dir_is_prepared_locally_then_uploaded(tmp_path, gcs_bucket):
    """On a gs:// data_dir (the emulator here) the prepared dataset lands where TFDS looks for it.
    Its records are read by tf.data, whose Cloud Storage client cannot reach an emulator: that
    last step is not tested here (docs/datasets.md)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tests.gcs_emulator import list_objects

    archive = tmp_path / "cifar-10-binary.tar.gz"
    cifar_archive.write_archive("cifar10", archive, train=30, test=10)
    data_dir = f"{gcs_bucket}/tensorflow_datasets"
    result = _run("-m", "resnet_identity.prepare", "cifar10", f"--archive={archive}", f"--data_dir={data_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Prepared cifar10 in {data_dir} from {archive} (40 images)." in result.stdout
    objects = list_objects(gcs_bucket)
    assert "tensorflow_datasets/cifar10/3.0.2/dataset_info.json" in objects
    assert any(o.startswith("tensorflow_datasets/cifar10/3.0.2/cifar10-train.tfrecord") for o in objects), objects

    from resnet_identity.data.tfds_access import prepared_builder

    builder = prepared_builder("cifar10", data_dir, download=False)
    assert builder.info.splits["train"].num_examples == 30 and builder.info.splits["test"].num_examples == 10
    assert tfds.builder("cifar10", data_dir=data_dir).is_prepared()
