"""TFDS sources (CIFAR-10/100, ImageNet) through ``tfds.testing.mock_data``.

No network and no real data: a temporary ``data_dir`` holds real TFDS
metadata (features, label names) with small split sizes, and ``mock_data``
serves examples from ``_fake_examples``, which honours the requested split
slice, so per-process shards and exactly-once evaluation can be checked.
Every example encodes its index (pixel value and label), so the tests can
tell which examples they received.
"""

import itertools
import socket
import time

import jax
import ml_collections
import numpy as np
import pytest

from resnet_identity import data

tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

SPLITS = {
    "cifar10": {"train": 30, "test": 13},
    "cifar100": {"train": 30, "test": 13},
    "imagenet2012": {"train": 40, "validation": 11},
}


def _write_metadata(data_dir, name):
    builder = tfds.builder(name, data_dir=str(data_dir))
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=name, split="train", filetype_suffix="tfrecord"
    )
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(
                    name=split, shard_lengths=[count], num_bytes=0, filename_template=template.replace(split=split)
                )
                for split, count in SPLITS[name].items()
            ]
        )
    )
    tf.io.gfile.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)


def _fake_examples(self, split, decoders=None, read_config=None, shuffle_files=False):
    """Stands in for ``FileReaderBuilder._as_dataset``; index-coded examples."""
    del decoders, read_config, shuffle_files
    instructions = tfds.core.ReadInstruction.from_spec(str(split)) if isinstance(split, str) else split
    indices = np.concatenate(
        [
            np.arange(i.from_ or 0, self.info.splits[i.splitname].num_examples if i.to is None else i.to)
            for i in instructions.to_absolute(self.info.splits)
        ]
    )
    if self.name.startswith("cifar"):
        images = np.broadcast_to(indices.astype(np.uint8)[:, None, None, None], (len(indices), 32, 32, 3)).copy()
        columns = {"image": images, "label": indices.astype(np.int64), "id": np.asarray([b"x"] * len(indices))}
        if self.name == "cifar100":
            columns["coarse_label"] = indices.astype(np.int64) % 20
        return tf.data.Dataset.from_tensor_slices(columns)
    # ImageNet is read with SkipDecoding: serve JPEG bytes of varied shapes.
    jpegs = [tf.io.encode_jpeg(np.full((48 + 7 * (i % 5), 64, 3), i % 256, np.uint8)).numpy() for i in indices]
    return tf.data.Dataset.from_tensor_slices(
        {
            "image": np.asarray(jpegs, dtype=object),
            "label": indices.astype(np.int64),
            "file_name": np.asarray([b"x"] * len(indices)),
        }
    )


@pytest.fixture(scope="module")
def metadata_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds_metadata")
    for name in SPLITS:
        _write_metadata(data_dir, name)
    return data_dir


@pytest.fixture
def mocked_tfds(metadata_dir):
    # Per test: the missing-dataset tests must see the real, unmocked TFDS.
    with tfds.testing.mock_data(
        policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(metadata_dir), as_dataset_fn=_fake_examples
    ):
        yield metadata_dir


def _config(**fields):
    return ml_collections.ConfigDict(fields)


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reads_both_splits_into_memory(mocked_tfds, name, num_classes):
    del mocked_tfds
    ds = data.get_dataset(_config(dataset=name, data_dir="/unused"))
    assert (ds.num_classes, ds.image_size) == (num_classes, 32)
    assert (ds.num_train, ds.num_test) == (30, 13)
    np.testing.assert_array_equal(ds.train_labels, np.arange(30))
    np.testing.assert_array_equal(ds.train_images[:, 5, 7, 1], np.arange(30))
    np.testing.assert_array_equal(ds.test_labels, np.arange(13))

    batch = next(ds.train_batches(global_batch_size=8, start_step=0, seed=0))
    assert batch["image"].shape == (8, 32, 32, 3)
    assert batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    np.testing.assert_array_equal(batch["label"], np.random.default_rng([0, 0]).permutation(30)[:8])
    out = jax.jit(ds.train_transform)(batch["image"], jax.random.key(0))
    assert out.shape == (8, 32, 32, 3) and out.dtype == np.float32

    batches = list(ds.eval_batches(global_batch_size=8))
    assert len(batches) == 2
    seen = np.concatenate([b["label"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(seen, np.arange(13))


def test_imagenet_train_batches_and_resume(mocked_tfds):
    del mocked_tfds
    ds = data.get_dataset(
        _config(dataset="imagenet2012", imagenet2012={"color_jitter": 0.4, "pca_lighting": 0.1, "shuffle_buffer": 16})
    )
    assert (ds.num_train, ds.num_test, ds.image_size) == (40, 11, 224)
    stream = ds.train_batches(global_batch_size=8, start_step=0, seed=3)
    from_zero = list(itertools.islice(stream, 7))
    batch = from_zero[0]
    assert batch["image"].shape == (8, 224, 224, 3)
    assert batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    # One epoch = 5 batches = all 40 examples once (40 divides evenly).
    np.testing.assert_array_equal(np.sort(np.concatenate([b["label"] for b in from_zero[:5]])), np.arange(40))
    # Each example is a uniform grey JPEG of value index % 256; its crop too.
    np.testing.assert_allclose(batch["image"].mean(axis=(1, 2, 3)), batch["label"], atol=2)

    resumed = list(itertools.islice(ds.train_batches(global_batch_size=8, start_step=4, seed=3), 3))
    for expected, actual in zip(from_zero[4:], resumed):
        np.testing.assert_array_equal(expected["label"], actual["label"])
        np.testing.assert_array_equal(expected["image"], actual["image"])

    other_seed = next(ds.train_batches(global_batch_size=8, start_step=0, seed=4))
    assert not np.array_equal(other_seed["label"], batch["label"])

    out = jax.jit(ds.train_transform)(batch["image"], jax.random.key(0))
    assert out.shape == (8, 224, 224, 3) and out.dtype == np.float32
    assert np.isfinite(np.asarray(out)).all()


def test_imagenet_process_shards_are_disjoint(mocked_tfds):
    del mocked_tfds
    ds = data.get_dataset(_config(dataset="imagenet2012", imagenet2012={"shuffle_buffer": 16}))
    labels = []
    for process in range(2):
        epoch = list(
            itertools.islice(
                ds.train_batches(global_batch_size=8, start_step=0, seed=0, process_index=process, process_count=2), 5
            )
        )
        assert all(b["image"].shape == (4, 224, 224, 3) for b in epoch)
        labels.append(np.concatenate([b["label"] for b in epoch]))
    assert set(labels[0]) == set(range(20))
    assert set(labels[1]) == set(range(20, 40))


@pytest.mark.parametrize("crop", [224, 320, "10crop"])
def test_imagenet_eval_sees_every_example_once(mocked_tfds, crop):
    del mocked_tfds
    ds = data.get_dataset(_config(dataset="imagenet2012"))
    per_process = [
        list(ds.eval_batches(global_batch_size=8, process_index=p, process_count=2, crop=crop)) for p in range(2)
    ]
    # 11 examples: shards of 6 and 5, both padded to 2 batches of 4.
    assert [len(batches) for batches in per_process] == [2, 2]
    seen = []
    shape = (4, 10, 224, 224, 3) if crop == "10crop" else (4, crop, crop, 3)
    for batches in per_process:
        for batch in batches:
            assert batch["image"].shape == shape
            assert batch["image"].dtype == np.uint8
            assert batch["mask"].dtype == bool
            assert not batch["image"][~batch["mask"]].any()
            seen.extend(batch["label"][batch["mask"]])
    np.testing.assert_array_equal(np.sort(seen), np.arange(11))
    normalised = ds.eval_transform(per_process[0][0]["image"])
    assert normalised.shape == shape


def test_imagenet_rejects_other_eval_crops(mocked_tfds):
    del mocked_tfds
    ds = data.get_dataset(_config(dataset="imagenet2012"))
    with pytest.raises(ValueError, match="224, 320, '10crop'"):
        ds.eval_batches(global_batch_size=8, crop=256)


def test_missing_cifar_says_how_to_prepare_it(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.get_dataset(_config(dataset="cifar10", data_dir=str(tmp_path), tfds_download=False))
    message = str(error.value)
    assert "'cifar10'" in message and str(tmp_path) in message
    assert f"python -m resnet_identity.prepare cifar10 --data_dir={tmp_path}" in message
    assert "--archive=FILE" in message
    assert "pip install -e '.[tfds]'" in message


def test_failed_cifar_download_says_how_to_prepare_it(tmp_path, monkeypatch):
    """Offline (a proxy that refuses connections, on any machine), at once: TFDS's downloader
    would retry for minutes."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    for name in ("HTTPS_PROXY", "https_proxy"):  # urllib prefers the lower-case one where both are set
        monkeypatch.setenv(name, proxy)
    started = time.monotonic()
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.get_dataset(_config(dataset="cifar100", data_dir=str(tmp_path)))
    assert time.monotonic() - started < 30
    message = str(error.value)
    assert "could not be downloaded" in message
    assert f"python -m resnet_identity.prepare cifar100 --data_dir={tmp_path}" in message
    assert f"cannot be reached through the proxy {proxy}" in message
    assert isinstance(error.value.__cause__, ConnectionError)


def test_missing_imagenet_says_which_files_go_where(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.get_dataset(_config(dataset="imagenet2012", data_dir=str(tmp_path)))
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar" in message
    assert "ILSVRC2012_img_val.tar" in message
    assert f"{tmp_path}/downloads/manual/" in message
    assert (
        "python -m resnet_identity.prepare imagenet2012 --archive=ILSVRC2012_img_train.tar "
        f"--archive=ILSVRC2012_img_val.tar --data_dir={tmp_path}"
    ) in message


def _gradient_jpeg(height, width):
    rows = np.linspace(0, 255, height)[:, None]
    cols = np.linspace(0, 255, width)[None, :]
    image = np.stack(
        [
            np.broadcast_to(rows, (height, width)),
            np.broadcast_to(cols, (height, width)),
            np.full((height, width), 128.0),
        ],
        axis=-1,
    )
    return tf.io.encode_jpeg(image.astype(np.uint8), quality=100)


def test_random_sized_crop_is_a_function_of_its_seed():
    from resnet_identity.data import imagenet_preprocess

    jpeg = _gradient_jpeg(120, 160)
    crop = lambda seed: imagenet_preprocess.random_sized_crop(jpeg, tf.constant(seed, tf.int64)).numpy()
    first = crop([1, 2])
    assert first.shape == (224, 224, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, crop([1, 2]))
    assert not np.array_equal(first, crop([1, 3]))


def test_random_sized_crop_falls_back_to_a_centre_crop():
    from resnet_identity.data import imagenet_preprocess

    # 10x400: no window of >=8% area has aspect ratio within [3/4, 4/3].
    jpeg = _gradient_jpeg(10, 400)
    out = imagenet_preprocess.random_sized_crop(jpeg, tf.constant([0, 0], tf.int64)).numpy()
    expected = imagenet_preprocess.resize_shorter_center_crop(tf.io.decode_jpeg(jpeg, channels=3), 224, 224).numpy()
    np.testing.assert_array_equal(out, expected)


def test_eval_crop_resizes_the_shorter_side_then_centre_crops():
    from resnet_identity.data import imagenet_preprocess

    jpeg = _gradient_jpeg(120, 240)
    decoded = tf.io.decode_jpeg(jpeg, channels=3)
    for crop, shorter in ((224, 256), (320, 320)):
        out = imagenet_preprocess.eval_crop(jpeg, crop).numpy()
        resized = tf.image.resize(decoded, [shorter, 2 * shorter], method="bicubic")
        left = (2 * shorter - crop) // 2
        top = (shorter - crop) // 2
        expected = np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(out, expected[top : top + crop, left : left + crop])


@pytest.mark.parametrize("height,width", [(120, 160), (160, 90), (40, 300)])
def test_scale_crop_draws_the_shorter_side_from_256_to_480(height, width):
    from resnet_identity.data import imagenet_preprocess

    shape = tf.constant([height, width, 3])
    shorters = []
    for seed in range(40):
        shorter, window = imagenet_preprocess.scale_crop_window(shape, tf.constant([seed, 9], tf.int64))
        shorter, (top, left, side, side_x) = int(shorter), window.numpy()
        shorters.append(shorter)
        # The window is the 224 crop of the image resized to shorter side S.
        assert side == side_x == round(224 * min(height, width) / shorter)
        assert 0 <= top <= height - side and 0 <= left <= width - side
    assert 256 <= min(shorters) and max(shorters) <= 480
    assert max(shorters) - min(shorters) > 100
    # Both ends are included: a 3-value range shows all three values.
    narrow = {
        int(imagenet_preprocess.scale_crop_window(shape, tf.constant([seed, 9], tf.int64), shorter_range=(256, 258))[0])
        for seed in range(40)
    }
    assert narrow == {256, 257, 258}


@pytest.mark.parametrize("height,width", [(120, 160), (160, 90)])
def test_scale_crop_is_the_crop_of_the_resized_image(height, width):
    from resnet_identity.data import imagenet_preprocess

    jpeg = _gradient_jpeg(height, width)
    decoded = tf.io.decode_jpeg(jpeg, channels=3)
    for seed in ([0, 1], [5, 2]):
        seed = tf.constant(seed, tf.int64)
        out = imagenet_preprocess.scale_crop(jpeg, seed).numpy()
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, imagenet_preprocess.scale_crop(jpeg, seed).numpy())
        shorter, window = imagenet_preprocess.scale_crop_window(tf.shape(decoded), seed)
        top, left = window.numpy()[:2]
        scale = int(shorter) / min(height, width)
        resized = tf.image.resize(decoded, [round(height * scale), round(width * scale)], method="bicubic").numpy()
        assert min(resized.shape[:2]) == int(shorter)
        top, left = round(top * scale), round(left * scale)
        expected = np.clip(np.round(resized[top : top + 224, left : left + 224]), 0, 255)
        # Equal up to the window's rounding to whole source pixels.
        difference = np.abs(out - expected)
        assert difference.mean() < 1 and difference.max() <= 6


class _GradientBuilder:
    """The part of a TFDS builder ``ImageNetDataset`` reads, over gradient JPEGs
    (unlike ``_fake_examples``' uniform ones, their crops differ)."""

    def __init__(self, jpegs):
        self.jpegs = jpegs
        splits = {"train": len(jpegs), "validation": 1}
        self.info = type(
            "Info", (), {"splits": {split: type("Split", (), {"num_examples": n})() for split, n in splits.items()}}
        )()

    def as_dataset(self, *, split, shuffle_files, decoders, read_config):
        del split, shuffle_files, decoders, read_config
        return tf.data.Dataset.from_tensor_slices({"image": self.jpegs, "label": np.arange(len(self.jpegs))})


def _streamed(builder, **options):
    from resnet_identity.data import imagenet, normalization, streamed

    return streamed.StreamedDataset(
        name=imagenet.NAME,
        source=imagenet.TfdsSource(builder),
        num_classes=1000,
        image_size=224,
        normalization=normalization.resolve(None, imagenet.NAME, None),
        **options,
    )


def test_imagenet_train_batches_use_the_chosen_crop():
    from resnet_identity.data import imagenet_preprocess, streamed

    jpegs = [_gradient_jpeg(60 + 10 * i, 90 - 5 * i).numpy() for i in range(8)]
    builder = _GradientBuilder(jpegs)
    crop_seed = streamed._epoch_seeds(1, 0, 0)[2]
    batches = {}
    for name, crop in imagenet_preprocess.TRAIN_CROPS.items():
        ds = _streamed(builder, train_crop=name, shuffle_buffer=8)
        batch = next(ds.train_batches(global_batch_size=4, start_step=0, seed=1))
        assert batch["image"].shape == (4, 224, 224, 3)
        # The k-th example of an epoch is cropped with seed (crop_seed, k).
        for k, label in enumerate(batch["label"]):
            expected = crop(jpegs[label], tf.constant([crop_seed, k], tf.int64))
            np.testing.assert_array_equal(batch["image"][k], expected.numpy())
        batches[name] = batch
    np.testing.assert_array_equal(batches["scale"]["label"], batches["scale_aspect"]["label"])
    assert not np.array_equal(batches["scale"]["image"], batches["scale_aspect"]["image"])


def test_imagenet_train_transform_flips_half_the_images():
    ds = _streamed(_GradientBuilder([]))
    images = np.random.default_rng(0).integers(0, 256, (32, 6, 8, 3), np.uint8)
    out = np.asarray(jax.jit(ds.train_transform)(images, jax.random.key(1)))
    normalised = np.asarray(ds.eval_transform(images))
    flipped = [np.allclose(o, n[:, ::-1], atol=1e-4) for o, n in zip(out, normalised)]
    kept = [np.allclose(o, n, atol=1e-4) for o, n in zip(out, normalised)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 8 <= sum(flipped) <= 24


def test_imagenet_refuses_an_unknown_train_crop():
    from resnet_identity.data import crops, imagenet_preprocess
    from resnet_identity.training import config as config_lib

    with pytest.raises(ValueError, match="train_crop='random' must be 'scale'"):
        data.get_dataset(_config(dataset="imagenet2012", imagenet2012={"train_crop": "random"}))
    # The pipeline implements exactly the crops that config.validate accepts.
    assert tuple(imagenet_preprocess.TRAIN_CROPS) == crops.TRAIN_CROPS
    config = config_lib.default_config()
    for name in crops.TRAIN_CROPS:
        config.imagenet2012.train_crop = name
        config_lib.validate(config)


def test_on_several_processes_process_0_prepares_first_and_the_others_reuse_it(tmp_path, monkeypatch):
    """A data_dir shared by every host is written once: process 0 downloads before the
    barrier, and a later process that finds the dataset prepared downloads nothing."""
    from jax.experimental import multihost_utils

    from resnet_identity.data import tfds_access

    events = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: events.append(("barrier", name)))
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "is_prepared", lambda self: ("barrier", "tfds prepare cifar10") in events
    )
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", lambda self, *a, **k: events.append("download")
    )
    monkeypatch.setattr(tfds_access, "unreachable", lambda url: None)  # the order is tested here, not the network
    tfds_access.prepared_builder("cifar10", str(tmp_path), download=True)
    assert events == [("barrier", "tfds prepare cifar10")]  # process 1: no download of its own
    events.clear()
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    tfds_access.prepared_builder("cifar10", str(tmp_path), download=True)
    assert events == ["download", ("barrier", "tfds prepare cifar10")]
