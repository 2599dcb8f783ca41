"""Tests of the data layer that need neither TensorFlow nor the network."""

import itertools
import os
import pathlib
import subprocess
import sys
import textwrap
import zlib

import jax
import ml_collections
import numpy as np
import pytest

from resnet_identity import data
from resnet_identity.data import digits, normalization

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _indexed_dataset(num_train=50, num_test=23, size=8, **kwargs):
    """Images whose pixels and labels both equal the example's index."""

    def images(count):
        return np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None], (count, size, size, 3)).copy()

    return data.InMemoryDataset(
        name="indexed",
        num_classes=256,
        train_images=images(num_train),
        train_labels=np.arange(num_train, dtype=np.int32),
        test_images=images(num_test),
        test_labels=np.arange(num_test, dtype=np.int32),
        normalization=normalization.resolve("per_channel", "indexed", images(num_train)),
        **kwargs,
    )


def _take(iterator, count):
    return list(itertools.islice(iterator, count))


@pytest.fixture(scope="module")
def digits_dataset():
    return data.get_dataset(ml_collections.ConfigDict({"dataset": "digits"}))


# ----------------------------------------------------------------- order


def test_start_step_continues_the_stream_bitwise():
    dataset = _indexed_dataset()
    kwargs = dict(global_batch_size=16, seed=3)
    from_zero = _take(dataset.train_batches(start_step=0, **kwargs), 12)
    resumed = _take(dataset.train_batches(start_step=5, **kwargs), 7)
    for expected, actual in zip(from_zero[5:], resumed):
        np.testing.assert_array_equal(expected["image"], actual["image"])
        np.testing.assert_array_equal(expected["label"], actual["label"])


def test_stream_is_the_concatenation_of_seeded_epoch_permutations():
    # 50 examples, batches of 16: batches straddle epoch boundaries.
    dataset = _indexed_dataset(num_train=50)
    labels = np.concatenate(
        [b["label"] for b in _take(dataset.train_batches(global_batch_size=16, start_step=0, seed=7), 10)]
    )
    expected = np.concatenate([np.random.default_rng([7, e]).permutation(50) for e in range(4)])
    np.testing.assert_array_equal(labels, expected[:160])


def test_every_example_appears_once_per_epoch():
    dataset = _indexed_dataset(num_train=48)
    batches = _take(dataset.train_batches(global_batch_size=16, start_step=0, seed=1), 9)
    for epoch in range(3):
        labels = np.concatenate([b["label"] for b in batches[3 * epoch : 3 * epoch + 3]])
        np.testing.assert_array_equal(np.sort(labels), np.arange(48))


def test_different_seeds_give_different_orders():
    dataset = _indexed_dataset()
    first = next(dataset.train_batches(global_batch_size=16, start_step=0, seed=0))
    second = next(dataset.train_batches(global_batch_size=16, start_step=0, seed=1))
    assert not np.array_equal(first["label"], second["label"])


def test_process_slices_concatenate_to_the_global_batch():
    dataset = _indexed_dataset()
    kwargs = dict(global_batch_size=16, start_step=2, seed=5)
    whole = _take(dataset.train_batches(**kwargs), 4)
    shards = [_take(dataset.train_batches(process_index=p, process_count=2, **kwargs), 4) for p in range(2)]
    for step in range(4):
        assert shards[0][step]["image"].shape == (8, 8, 8, 3)
        np.testing.assert_array_equal(
            np.concatenate([shards[0][step]["label"], shards[1][step]["label"]]), whole[step]["label"]
        )
        np.testing.assert_array_equal(
            np.concatenate([shards[0][step]["image"], shards[1][step]["image"]]), whole[step]["image"]
        )


def test_batch_not_divisible_by_process_count_is_rejected():
    dataset = _indexed_dataset()
    with pytest.raises(ValueError, match="not divisible by process_count"):
        dataset.train_batches(global_batch_size=15, start_step=0, seed=0, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="not divisible by process_count"):
        dataset.eval_batches(global_batch_size=15, process_count=2)


@pytest.mark.parametrize(
    "global_batch_size,process_count", [(23, 1), (10, 1), (7, 1), (64, 1), (8, 2), (6, 2), (64, 2)]
)
def test_eval_sees_every_test_example_exactly_once(global_batch_size, process_count):
    dataset = _indexed_dataset(num_test=23)
    local = global_batch_size // process_count
    per_process = [
        list(dataset.eval_batches(global_batch_size=global_batch_size, process_index=p, process_count=process_count))
        for p in range(process_count)
    ]
    num_batches = -(-23 // global_batch_size)
    seen = []
    for batches in per_process:
        assert len(batches) == num_batches
        for batch in batches:
            assert batch["image"].shape == (local, 8, 8, 3)
            assert batch["image"].dtype == np.uint8
            assert batch["label"].dtype == np.int32
            assert batch["mask"].dtype == bool
            mask = batch["mask"]
            # Images encode their index: real rows match their label.
            np.testing.assert_array_equal(batch["image"][mask, 0, 0, 0], batch["label"][mask])
            assert not batch["image"][~mask].any()
            seen.extend(batch["label"][mask])
    np.testing.assert_array_equal(np.sort(seen), np.arange(23))
    total_mask = sum(b["mask"].sum() for bs in per_process for b in bs)
    assert total_mask == 23


def test_eval_rejects_a_crop_for_whole_images():
    with pytest.raises(ValueError, match="crop"):
        _indexed_dataset().eval_batches(global_batch_size=4, crop=24)


# ----------------------------------------------------------------- sources


def test_digits_shapes_counts_and_balance(digits_dataset):
    ds = digits_dataset
    assert (ds.name, ds.num_classes, ds.image_size) == ("digits", 10, 32)
    assert (ds.num_train, ds.num_test) == (1437, 360)
    assert ds.train_images.shape == (1437, 32, 32, 3)
    assert ds.train_images.dtype == np.uint8
    assert ds.train_images.max() == 255
    np.testing.assert_array_equal(ds.train_images[..., 0], ds.train_images[..., 2])
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [36, 36, 35, 37, 36, 37, 36, 36, 35, 36])
    assert np.bincount(ds.train_labels).min() >= 139


def test_digits_split_is_fixed(digits_dataset):
    test_labels = digits_dataset.test_labels.astype(np.uint8).tobytes()
    train_labels = digits_dataset.train_labels.astype(np.uint8).tobytes()
    assert zlib.crc32(test_labels) == 2853748815
    assert zlib.crc32(train_labels) == 1209067740


def test_digits_upsampling_matches_jax_bilinear_resize():
    with np.load(REPO_ROOT / "resnet_identity/data/digits.npz") as arrays:
        raw = arrays["images"][:50]
    reference = jax.image.resize(raw.astype(np.float32), (50, 32, 32), "bilinear")
    np.testing.assert_allclose(digits.upsample(raw, 32)[..., 0], reference, atol=0.5 + 1e-4)


def test_synthetic_follows_its_config_and_only_normalises():
    config = ml_collections.ConfigDict({"dataset": "synthetic", "synthetic": {"image_size": 20, "num_classes": 7}})
    ds = data.get_dataset(config)
    assert (ds.image_size, ds.num_classes) == (20, 7)
    assert (ds.num_train, ds.num_test) == (1024, 256)
    assert ds.train_labels.max() < 7
    batch = next(ds.train_batches(global_batch_size=64, start_step=0, seed=0))
    assert batch["image"].shape == (64, 20, 20, 3)
    np.testing.assert_array_equal(
        ds.train_transform(batch["image"], jax.random.key(0)), ds.eval_transform(batch["image"])
    )
    again = data.get_dataset(config)
    np.testing.assert_array_equal(again.train_images, ds.train_images)


def test_config_without_optional_fields_works():
    ds = data.get_dataset(ml_collections.ConfigDict({"dataset": "synthetic"}))
    assert (ds.image_size, ds.num_classes) == (32, 10)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="digits, synthetic, cifar10, cifar100, imagenet2012, folder"):
        data.get_dataset(ml_collections.ConfigDict({"dataset": "mnist"}))


def test_works_without_tensorflow():
    """Digits and synthetic run with TensorFlow and TFDS unimportable."""
    script = textwrap.dedent("""
        import sys

        sys.modules["tensorflow"] = None
        sys.modules["tensorflow_datasets"] = None
        import jax
        import ml_collections

        from resnet_identity import data

        for name in ("digits", "synthetic"):
            ds = data.get_dataset(ml_collections.ConfigDict({"dataset": name}))
            batch = next(ds.train_batches(global_batch_size=32, start_step=3, seed=0))
            out = ds.train_transform(batch["image"], jax.random.key(0))
            assert out.shape == (32, 32, 32, 3), out.shape
            evaluated = sum(b["mask"].sum() for b in ds.eval_batches(global_batch_size=100))
            assert evaluated == ds.num_test, evaluated
        try:
            data.get_dataset(ml_collections.ConfigDict({"dataset": "cifar10"}))
        except ImportError as error:
            assert "pip install -e '.[tfds]'" in str(error), error
        else:
            raise AssertionError("cifar10 loaded without TensorFlow")
        loaded = [m for m, v in sys.modules.items()
                  if m.split(".")[0] in ("tensorflow", "tensorflow_datasets") and v is not None]
        assert not loaded, loaded
        print("ok")
        """)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
