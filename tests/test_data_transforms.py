"""Tests of on-device transforms: augmentation, colour ops, normalisation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resnet_identity import data
from resnet_identity.data import augment, color, normalization


@pytest.fixture(scope="module")
def digits_dataset():
    return data.get_dataset(ml_collections.ConfigDict({"dataset": "digits"}))


# ----------------------------------------------------------- augmentation


def _normalised_batch(count=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(count, size, size, 3)), jnp.float32)


def test_crop_offsets_cover_exactly_the_padded_range():
    offsets = np.asarray(augment.crop_offsets(jax.random.key(0), 4000, 4))
    assert offsets.min() == 0 and offsets.max() == 8
    assert set(np.unique(offsets)) == set(range(9))


def test_centred_crop_without_flip_returns_the_normalised_image():
    images = _normalised_batch()
    centred = jnp.full((6, 2), 4, jnp.int32)
    np.testing.assert_array_equal(augment.crop_padded(images, centred, 4), images)


def test_padding_is_exactly_zero_and_content_shifts():
    images = _normalised_batch()
    corner = augment.crop_padded(images, jnp.zeros((6, 2), jnp.int32), 4)
    assert not np.asarray(corner[:, :4]).any()
    assert not np.asarray(corner[:, :, :4]).any()
    np.testing.assert_array_equal(corner[:, 4:, 4:], images[:, :28, :28])


def test_flip_is_a_mirror():
    images = _normalised_batch()
    mask = jnp.asarray([True, False] * 3)
    flipped = np.asarray(augment.flip_horizontally(images, mask))
    np.testing.assert_array_equal(flipped[0], np.asarray(images)[0, :, ::-1])
    np.testing.assert_array_equal(flipped[1], np.asarray(images)[1])


def test_pad_crop_flip_outputs_are_windows_of_the_padded_image():
    images = _normalised_batch(count=8, size=12)
    out = np.asarray(augment.pad_crop_flip(images, jax.random.key(3), pad=4, flip=True))
    padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
    flips = 0
    for index in range(8):
        matches = [
            (dy, dx, mirrored)
            for dy in range(9)
            for dx in range(9)
            for mirrored in (False, True)
            if np.array_equal(
                out[index],
                (
                    padded[index, dy : dy + 12, dx : dx + 12][:, ::-1]
                    if mirrored
                    else padded[index, dy : dy + 12, dx : dx + 12]
                ),
            )
        ]
        assert matches, f"image {index} is not a window of its padded input"
        flips += matches[0][2]
    assert 0 < flips < 8


def test_train_transform_is_deterministic_and_jittable(digits_dataset):
    images = digits_dataset.train_images[:32]
    jitted = jax.jit(digits_dataset.train_transform)
    first = jitted(images, jax.random.key(0))
    np.testing.assert_array_equal(first, jitted(images, jax.random.key(0)))
    np.testing.assert_array_equal(first, digits_dataset.train_transform(images, jax.random.key(0)))
    assert not np.array_equal(first, jitted(images, jax.random.key(1)))
    assert first.dtype == jnp.float32 and first.shape == images.shape


def test_digits_are_never_flipped(digits_dataset):
    # Every output is an unmirrored window of its padded input: no flip.
    images = jnp.asarray(digits_dataset.train_images[:64])
    normalised = digits_dataset.eval_transform(images)
    out = np.asarray(digits_dataset.train_transform(images, jax.random.key(2)))
    padded = np.pad(np.asarray(normalised), ((0, 0), (4, 4), (4, 4), (0, 0)))
    for index in range(64):
        assert any(
            np.array_equal(out[index], padded[index, dy : dy + 32, dx : dx + 32]) for dy in range(9) for dx in range(9)
        )


def test_color_ops_with_zero_strength_are_identity_and_keep_grey_grey():
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 6, 6, 3)), jnp.float32)
    key = jax.random.key(0)
    np.testing.assert_allclose(color.color_jitter(images, key, 0.0), images, rtol=1e-6)
    np.testing.assert_array_equal(color.pca_lighting(images, key, 0.0), images)
    grey = jnp.repeat(images[..., :1], 3, axis=-1)
    jittered = np.asarray(jax.jit(color.color_jitter, static_argnums=2)(grey, key, 0.4))
    np.testing.assert_allclose(jittered[..., 0], jittered[..., 2], atol=1e-5)
    assert not np.allclose(jittered, grey)


def test_pca_lighting_adds_one_colour_offset_per_image():
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(5, 4, 4, 3)), jnp.float32)
    shifted = np.asarray(color.pca_lighting(images, jax.random.key(4), 0.1))
    delta = shifted - np.asarray(images)
    np.testing.assert_allclose(delta, delta[:, :1, :1, :] + 0 * delta, atol=1e-6)
    # |rgb| <= |eigvec| |alpha * eigval|: a few hundredths at std 0.1.
    assert 0 < np.abs(delta).max() < 0.2


# ----------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "name,mean,std",
    [
        ("cifar10", [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]),
        ("cifar100", [129.3, 124.1, 112.4], [68.2, 65.4, 70.4]),
    ],
)
def test_cifar_per_channel_constants_are_the_released_ones(name, mean, std):
    norm = normalization.resolve(None, name, None)
    pixel = np.asarray([0, 255, 100], np.uint8)
    out = np.asarray(norm(pixel.reshape(1, 1, 1, 3)))[0, 0, 0]
    np.testing.assert_allclose(out, (pixel - np.asarray(mean)) / std, rtol=1e-6)


def test_imagenet_constants_are_on_the_unit_scale():
    norm = normalization.resolve("per_channel", "imagenet2012", None)
    np.testing.assert_allclose(norm.mean / 255, [0.485, 0.456, 0.406], rtol=1e-6)
    np.testing.assert_allclose(norm.std / 255, [0.229, 0.224, 0.225], rtol=1e-6)
    with pytest.raises(ValueError, match="per_channel"):
        normalization.resolve("per_pixel_mean", "imagenet2012", None)


def test_per_pixel_mean_centres_every_pixel_and_scales_to_unit_std(digits_dataset):
    norm = normalization.resolve("per_pixel_mean", "digits", digits_dataset.train_images)
    assert norm.mean.shape == (32, 32, 3) and norm.std.shape == ()
    out = np.asarray(norm(digits_dataset.train_images), np.float64)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(), 1, rtol=1e-4)


def test_digits_per_channel_statistics_standardise_the_train_split(digits_dataset):
    out = np.asarray(digits_dataset.eval_transform(digits_dataset.train_images), np.float64)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1, rtol=1e-4)


def test_unknown_normalization_lists_the_choices():
    config = ml_collections.ConfigDict({"dataset": "digits", "normalization": "zca"})
    with pytest.raises(ValueError, match="per_channel, per_pixel_mean"):
        data.get_dataset(config)
