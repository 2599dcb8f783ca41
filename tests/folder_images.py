"""Writes small folder datasets (`data/folder.py` layout) of random JPEG and PNG images for tests."""

import pathlib

import numpy as np

CLASSES = ("cat", "dog", "eel")


def write_folder(root: pathlib.Path, *, per_class=(4, 2), classes=CLASSES, size=(40, 48), seed=0) -> pathlib.Path:
    """root/train/<class>/<i>.jpg|.png and root/val/...: `per_class` (train, val) images per
    class, alternating JPEG and PNG, each a random image brightened by 60 x its class index (mod 128) so the
    classes differ."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.integers(0, 128, (*size, 3), np.uint8) + np.uint8(60 * label % 128)
                encoded = tf.io.encode_png(image) if i % 2 else tf.io.encode_jpeg(image, quality=95)
                (folder / f"{i}.{'png' if i % 2 else 'jpg'}").write_bytes(encoded.numpy())
    return root
