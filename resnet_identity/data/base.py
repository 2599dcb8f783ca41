"""The interface every data source implements, what the registry knows of each
(``DatasetSpec``, ``Facts``), and the argument checks they share.

Split of work (the design the trainer relies on):
  * the host yields numpy batches of uint8 NHWC images and int32 labels;
  * augmentation that can run on the accelerator does, in ``train_transform``,
    inside the jitted step, driven by a JAX key.

For the in-memory sources the host stream is then a pure function of
(seed, step), and the trainer derives the augmentation key from (seed, step)
too, so a resumed run reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import numpy as np

Batch = dict[str, np.ndarray]


class DatasetError(RuntimeError):
    """Data that cannot be read as configured; the message says what to fix."""


class Dataset(Protocol):
    """What ``get_dataset`` returns.

    Attributes:
      name: the ``config.dataset`` value that built it.
      num_classes: number of labels; labels lie in ``[0, num_classes)``.
      image_size: height = width of the training inputs.
      num_train: examples in the training split (all processes together).
      num_test: examples in the evaluation split (all processes together).
    """

    name: str
    num_classes: int
    image_size: int
    num_train: int
    num_test: int

    def train_batches(
        self, *, global_batch_size: int, start_step: int, seed: int, process_index: int = 0, process_count: int = 1
    ) -> Iterator[Batch]:
        """Infinite iterator over this process's slice of each global batch.

        Yields ``{'image': uint8 [b, H, W, 3], 'label': int32 [b]}`` with
        ``b = global_batch_size // process_count``; the first item is the batch of
        step ``start_step``.
        """
        ...

    def eval_batches(
        self, *, global_batch_size: int, process_index: int = 0, process_count: int = 1, crop: int | None = None
    ) -> Iterator[Batch]:
        """One pass over the whole evaluation split, each example exactly once.

        Yields ``{'image', 'label', 'mask'}``; ``mask`` (bool [b]) is False on the
        padding rows that fill the last batch. Every process yields the same
        number of batches.
        """
        ...

    def train_transform(self, images: jax.Array, rng: jax.Array) -> jax.Array:
        """Training augmentation + normalisation: uint8 in, float32 out; jittable."""
        ...

    def eval_transform(self, images: jax.Array) -> jax.Array:
        """Normalisation only: uint8 in, float32 out; jittable."""
        ...


def local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    """Rows of each global batch that one process yields.

    Raises:
      ValueError: on a non-positive size, a process index out of range, or a
        global batch that does not split evenly over the processes (uneven
        slices would make the processes disagree on the global batch shape).
    """
    if process_count < 1:
        raise ValueError(f"process_count must be >= 1, got {process_count}.")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}.")
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}.")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}.")
    return global_batch_size // process_count


def check_stream_start(start_step: int, seed: int) -> None:
    """Rejects a negative step or seed (NumPy seeds must be non-negative)."""
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")


@dataclasses.dataclass(frozen=True)
class Option:
    """One dataset option: its default and type (a config field `config.<dataset>.<name>`)."""

    default: Any
    type: type


@dataclasses.dataclass(frozen=True)
class Settings:
    """The dataset-independent fields: TFDS's data directory and whether TFDS may download a
    missing dataset, and the normalisation (None: the dataset's default)."""

    data_dir: str | None = None
    download: bool = True
    normalization: str | None = None


def steps_per_epoch(num_train: int, global_batch_size: int, drops_remainder: bool) -> int:
    """Optimiser steps in one epoch. A stream that drops each epoch's remainder (tf.data)
    has floor(N / B); a source that lets a batch span two epochs (in memory) has ceil.
    For a stream read in P shards, floor(floor(N / P) / (B / P)) = floor(N / B): the same."""
    if drops_remainder:
        return num_train // global_batch_size
    return math.ceil(num_train / global_batch_size)


@dataclasses.dataclass(frozen=True)
class Facts:
    """What is known of a dataset before its data are read.

    Attributes:
      num_classes: labels lie in [0, num_classes).
      image_size: height = width of the training inputs.
      num_train: examples in the training split (all processes together).
      eval_crops: the values `eval_batches(crop=)` takes (the config's `eval_crops`);
        () for a dataset evaluated on whole images only (crop None).
      drops_remainder: whether each epoch drops its last partial batch (see `steps_per_epoch`).
      class_names: one name per class, where known.
    """

    num_classes: int
    image_size: int
    num_train: int
    eval_crops: tuple[int | str, ...] = ()
    drops_remainder: bool = False
    class_names: tuple[str, ...] | None = None

    def steps_per_epoch(self, global_batch_size: int) -> int:
        return steps_per_epoch(self.num_train, global_batch_size, self.drops_remainder)


@dataclasses.dataclass(frozen=True)
class ChannelStats:
    """Fixed per-channel statistics that a dataset declares (``DatasetSpec.per_channel``).

    Attributes:
      mean: one value per RGB channel, 0-255 scale.
      std: one value per RGB channel, 0-255 scale.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_unit_scale(cls, mean: tuple[float, ...], std: tuple[float, ...]) -> ChannelStats:
        """Statistics published on the 0-1 scale (ImageNet's), stored on the 0-255 scale."""
        return cls(tuple(255.0 * m for m in mean), tuple(255.0 * s for s in std))


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset as the registry knows it.

    Attributes:
      name: the `config.dataset` value.
      facts: options -> `Facts`; may read a listing (the folder dataset), never the images.
        Raises `DatasetError` for data that cannot be used.
      load: (options, settings) -> `Dataset`.
      options: the dataset's config fields, `config.<name>.<field>`, with defaults.
      check: options -> messages for invalid values ([] when all are valid); run before
        `facts`, so a bad value is reported without touching any data.
      per_channel: the fixed statistics of `config.normalization='per_channel'`
        (`normalization.resolve`); None: computed from the training split.
      title: the name the papers print ("CIFAR-10"); "" where they do not use it.
      paper_recipe: the `recipes` builder the papers train on it with ("cifar", "imagenet"),
        which its presets and `reproduce`'s rows follow; None where the papers do not use it.
    """

    name: str
    facts: Callable[[Mapping[str, Any]], Facts]
    load: Callable[[Mapping[str, Any], Settings], Dataset]
    options: Mapping[str, Option] = dataclasses.field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], list[str]] = lambda options: []
    per_channel: ChannelStats | None = None
    title: str = ""
    paper_recipe: str | None = None
