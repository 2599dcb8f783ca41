"""Times the CIFAR input pipeline: host batch delivery and the on-device augmentation.

    python -m benchmarks.input_pipeline [--batch=128] [--batches=200] [--repeats=20]

prints ONE JSON line with two rates, each against issue 4's target of 20,000 images/s
(10x what the model consumes on a GPU): the host side, `InMemoryDataset.train_batches`
gathering uint8 batches (median over `--repeats` rounds of `--batches` batches of one
continuous stream, epoch reshuffles included), and the device side, the jitted
`train_transform` (normalisation, pad-4 crop, flip; median over `--repeats` calls on a
device-resident batch). That split is the design (`resnet_identity/data/base.py`): the
host only gathers rows, the augmentation runs on the device inside the train step. The
data is random uint8 in CIFAR-10's shapes and recipe (no TensorFlow/TFDS); gathering
does not depend on pixel values. The load averages say how far a shared machine skews it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import numpy as np

from benchmarks.step_time import load_average
from resnet_identity.data import cifar, in_memory
from resnet_identity.data import normalization as normalization_lib
from resnet_identity.training import xla_config

TARGET_IMAGES_PER_S = 20_000
NUM_TRAIN, NUM_TEST, IMAGE_SHAPE = 50_000, 10_000, (32, 32, 3)


def cifar10_shaped(seed: int = 0) -> in_memory.InMemoryDataset:
    """Random uint8 images in CIFAR-10's shapes, normalised and augmented as `cifar.load` does."""
    rng = np.random.default_rng(seed)
    num_classes = cifar.NUM_CLASSES["cifar10"]
    train_images = rng.integers(0, 256, (NUM_TRAIN, *IMAGE_SHAPE), dtype=np.uint8)
    return in_memory.InMemoryDataset(
        name="cifar10",
        num_classes=num_classes,
        train_images=train_images,
        train_labels=rng.integers(0, num_classes, NUM_TRAIN, dtype=np.int32),
        test_images=rng.integers(0, 256, (NUM_TEST, *IMAGE_SHAPE), dtype=np.uint8),
        test_labels=rng.integers(0, num_classes, NUM_TEST, dtype=np.int32),
        normalization=normalization_lib.resolve(None, "cifar10", train_images),
        crop_padding=4,
        random_flip=True,
    )


def host_images_per_s(dataset: in_memory.InMemoryDataset, batch: int, batches: int, rounds: int) -> float:
    """Median over `rounds` of the rate at which `train_batches` yields `batches` batches."""
    stream = dataset.train_batches(global_batch_size=batch, start_step=0, seed=0)
    next(stream)  # the first epoch's permutation, outside the timing
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        rates.append(batch * batches / (time.perf_counter() - start))
    return statistics.median(rates)


def device_images_per_s(dataset: in_memory.InMemoryDataset, batch: int, repeats: int) -> float:
    """Median rate of the jitted `train_transform` on a uint8 batch already on the device."""
    import jax

    transform = jax.jit(dataset.train_transform)
    images = jax.device_put(next(dataset.train_batches(global_batch_size=batch, start_step=0, seed=0))["image"])
    keys = list(jax.random.split(jax.random.key(0), repeats + 1))
    jax.block_until_ready(transform(images, keys[0]))  # compile
    timings = []
    for key in keys[1:]:
        start = time.perf_counter()
        jax.block_until_ready(transform(images, key))
        timings.append(time.perf_counter() - start)
    return batch / statistics.median(timings)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=200, help="host batches per timed round")
    parser.add_argument("--repeats", type=int, default=20, help="host rounds and device calls (medians reported)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import jax

    args = parse_args(argv)
    dataset = cifar10_shaped()
    host_rate = host_images_per_s(dataset, args.batch, args.batches, args.repeats)
    device_rate = device_images_per_s(dataset, args.batch, args.repeats)
    device = jax.devices()[0]
    result = {
        "batch": args.batch,
        "batches_per_round": args.batches,
        "repeats": args.repeats,
        "host_images_per_s": round(host_rate, 1),
        "device_augment_images_per_s": round(device_rate, 1),
        "target_images_per_s": TARGET_IMAGES_PER_S,
        "host_exceeds_target": host_rate > TARGET_IMAGES_PER_S,
        "device_augment_exceeds_target": device_rate > TARGET_IMAGES_PER_S,
        "device": f"{device.platform}:{device.device_kind}",
        "cpu_count": os.cpu_count(),
        "loadavg_1m_5m": load_average(),
        "jax": jax.__version__,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    xla_config.use_huge_pages()  # as train.py runs
    main()
