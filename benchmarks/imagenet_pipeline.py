"""Times the ImageNet host pipeline: JPEG decoding, training crops and batching.

    python -m benchmarks.imagenet_pipeline [--train_crop=scale|scale_aspect] [--batch=256]
        [--batches=10] [--rounds=3] [--images=512] [--shuffle_buffer=10000]

prints ONE JSON line: the steady rate at which `StreamedDataset.train_batches` (the
training path of `resnet_identity/data/streamed.py` over `imagenet.py`'s TFDS source,
unchanged: shuffle buffer of encoded
JPEGs, the recipe's crop decoding only its window, 224x224 uint8 batches) yields
images on this host, the CPU time it spends per image, and from that the number of such
cores that would keep up with the ResNet-50 step measured on one H200
(`H200_RESNET50_IMAGES_PER_S`, target 7a in benchmarks/RESULTS.md). The flip and colour
augmentation are not in it: they run on the device inside the train step.

The JPEGs are synthetic, so no dataset is needed: `--images` distinct pictures at
ImageNet's common sizes (long side 500, short side 333-375, either orientation), smooth
random fields plus pixel noise, encoded at quality 90. A stand-in for the TFDS builder
serves them in a loop as a 1,281,167-example train split. Decoding cost depends on a
JPEG's size and content; the mean bytes per JPEG is printed (ImageNet's train JPEGs
average about 110 KB), and the figure estimates, not measures, real ImageNet on the same
cores. Unlike the other benchmarks this one needs TensorFlow and TFDS (the `tfds` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import types
from typing import Any

import numpy as np

from benchmarks.step_time import cpu_seconds, load_average

NUM_TRAIN = 1_281_167  # ImageNet-1k train split
H200_RESNET50_IMAGES_PER_S = 8_046  # benchmarks/RESULTS.md, target 7a: bf16, batch 1024
LONG_SIDE, SHORT_SIDES = 500, (333, 375)


def synthetic_jpegs(count: int, seed: int = 0, noise: float = 28.0) -> list[bytes]:
    """`count` JPEGs (quality 90) at ImageNet-like sizes: a bicubic-upsampled 8x8 random
    field (large smooth regions) plus Gaussian pixel noise of std `noise` (texture); the
    default gives ~110 KB per JPEG, the average of ImageNet's train set."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    jpegs = []
    for _ in range(count):
        short = int(rng.integers(SHORT_SIDES[0], SHORT_SIDES[1] + 1))
        height, width = (LONG_SIDE, short) if rng.random() < 0.5 else (short, LONG_SIDE)
        field = tf.image.resize(rng.uniform(0, 255, (8, 8, 3)).astype(np.float32), (height, width), "bicubic")
        pixels = np.clip(field.numpy() + rng.normal(0, noise, (height, width, 3)), 0, 255).astype(np.uint8)
        jpegs.append(tf.io.encode_jpeg(pixels, quality=90).numpy())
    return jpegs


class SyntheticImageNetBuilder:
    """The part of a TFDS `imagenet2012` builder that `imagenet.TfdsSource` uses: `info.splits`
    and `as_dataset`, serving `jpegs` (still encoded) in a loop with random labels."""

    def __init__(self, jpegs: list[bytes], num_train: int = NUM_TRAIN, seed: int = 0):
        split = lambda n: types.SimpleNamespace(num_examples=n)
        self.info = types.SimpleNamespace(splits={"train": split(num_train), "validation": split(50_000)})
        self._jpegs = jpegs
        self._labels = np.random.default_rng(seed).integers(0, 1000, len(jpegs)).astype(np.int64)

    def as_dataset(self, *, split: Any, shuffle_files: bool, decoders: Any, read_config: Any):
        import tensorflow as tf

        del split, shuffle_files, decoders, read_config  # one in-memory "file"
        return tf.data.Dataset.from_tensor_slices({"image": self._jpegs, "label": self._labels}).repeat()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--train_crop",
        default="scale",
        choices=("scale", "scale_aspect"),
        help="the training crop: v1's scale augmentation (the recipe's) or fb.resnet.torch's",
    )
    parser.add_argument("--batch", type=int, default=256, help="examples per batch (one process)")
    parser.add_argument("--batches", type=int, default=10, help="batches per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches after the first")
    parser.add_argument("--images", type=int, default=512, help="distinct synthetic JPEGs")
    parser.add_argument(
        "--shuffle_buffer",
        type=int,
        default=None,
        help="encoded JPEGs in the shuffle buffer (default: the pipeline's, 10,000)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import tensorflow as tf

    from resnet_identity.data import crops, imagenet, streamed
    from resnet_identity.data import normalization as normalization_lib

    args = parse_args(argv)
    jpegs = synthetic_jpegs(args.images)
    dataset = streamed.StreamedDataset(
        name=imagenet.NAME,
        source=imagenet.TfdsSource(SyntheticImageNetBuilder(jpegs)),
        num_classes=imagenet.NUM_CLASSES,
        image_size=imagenet.IMAGE_SIZE,
        normalization=normalization_lib.resolve(None, imagenet.NAME, None),
        shuffle_buffer=args.shuffle_buffer or crops.STREAM_OPTIONS["shuffle_buffer"].default,
        train_crop=args.train_crop,
    )
    stream = dataset.train_batches(global_batch_size=args.batch, start_step=0, seed=0)

    start = time.perf_counter()
    first = next(stream)  # fills the shuffle buffer, then the first batch
    first_batch_s = time.perf_counter() - start
    expected = (args.batch, imagenet.IMAGE_SIZE, imagenet.IMAGE_SIZE, 3)
    if first["image"].shape != expected or first["image"].dtype != np.uint8:
        raise AssertionError(f"batch images {first['image'].shape} {first['image'].dtype}, expected {expected} uint8")
    for _ in range(args.warmup):
        next(stream)
    rates, cpu_per_image = [], []
    for _ in range(args.rounds):
        cpu, start = cpu_seconds(), time.perf_counter()
        for _ in range(args.batches):
            next(stream)
        images = args.batch * args.batches
        rates.append(images / (time.perf_counter() - start))
        cpu_per_image.append((cpu_seconds() - cpu) / images)
    rate, cpu_s = statistics.median(rates), statistics.median(cpu_per_image)
    result = {
        "train_crop": args.train_crop,
        "batch": args.batch,
        "batches_per_round": args.batches,
        "rounds": args.rounds,
        "distinct_jpegs": len(jpegs),
        "mean_jpeg_kb": round(float(np.mean([len(j) for j in jpegs])) / 1e3, 1),
        "shuffle_buffer": dataset.shuffle_buffer,
        "first_batch_s": round(first_batch_s, 2),
        "images_per_s": round(rate, 1),
        "cpu_ms_per_image": round(1e3 * cpu_s, 2),
        "cores_to_feed_h200_resnet50": round(H200_RESNET50_IMAGES_PER_S * cpu_s, 1),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_5m": load_average(),
        "tensorflow": tf.__version__,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
