"""`imagenet2012`: ILSVRC 2012 from TFDS, streamed per process (`streamed.py`).

The TFDS build keeps the JPEGs encoded, so a training crop decodes only its window
(`imagenet_preprocess.py`); the training, order, resume and evaluation rules are
`streamed.py`'s. Options (`config.imagenet.*`): `crops.STREAM_OPTIONS`, the recipe's
augmentation. Evaluation crops: 224 and 320 (v2 Table 5) and fb.resnet.torch's 10crop.

TensorFlow is imported only when `load` runs; the facts below need none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resnet_identity.data import crops, tfds_access
from resnet_identity.data import normalization as normalization_lib
from resnet_identity.data.base import ChannelStats, DatasetSpec, Facts, Settings

NAME = "imagenet2012"
NUM_CLASSES = 1000
IMAGE_SIZE = 224
NUM_TRAIN = 1_281_167
# 'per_channel' normalisation: fb.resnet.torch `datasets/imagenet.lua`'s mean and std, published on
# the 0-1 scale; the folder dataset uses them too (weights trained on ImageNet expect them).
PER_CHANNEL = ChannelStats.from_unit_scale(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
TRAIN_SPLIT = "train"
EVAL_SPLIT = "validation"


class TfdsSource:
    """`streamed.Source` over a prepared TFDS builder whose "image" feature is a JPEG."""

    def __init__(self, builder: Any):
        self.builder = builder
        self._tf, self._tfds = tfds_access.import_tfds()

    @property
    def num_train(self) -> int:
        return self.builder.info.splits[TRAIN_SPLIT].num_examples

    @property
    def num_test(self) -> int:
        return self.builder.info.splits[EVAL_SPLIT].num_examples

    def _files(self, split: str, shuffle_seed: int | None, process_index: int, process_count: int):
        from resnet_identity.data.streamed import read_options

        tfds = self._tfds
        dataset = self.builder.as_dataset(
            split=tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count),
            shuffle_files=shuffle_seed is not None,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, options=read_options()),
        )
        return dataset.map(
            lambda example: {"file": example["image"], "label": self._tf.cast(example["label"], self._tf.int32)}
        )

    def train_files(self, shuffle_seed: int, process_index: int, process_count: int):
        return self._files(TRAIN_SPLIT, shuffle_seed, process_index, process_count)

    def eval_files(self, process_index: int, process_count: int):
        return self._files(EVAL_SPLIT, None, process_index, process_count)

    def eval_count(self, process_index: int, process_count: int) -> int:
        split = self._tfds.split_for_jax_process(EVAL_SPLIT, process_index=process_index, process_count=process_count)
        return self.builder.info.splits[split].num_examples

    def read(self, file):
        return file  # TFDS holds the JPEG bytes themselves

    def describe(self, file: bytes) -> str:
        return f"an image of the TFDS dataset {NAME} in {self.builder.data_dir}"


def load(options: Mapping[str, Any], settings: Settings):
    """Opens the prepared TFDS imagenet2012 (see the module docstring).

    Raises:
      DatasetNotPreparedError: with the manual-download steps, when missing.
      ValueError: an unsupported normalisation (only 'per_channel') or option.
    """
    errors = crops.check_stream_options(options)
    if errors:  # checked first: a bad option should not wait behind a missing dataset
        raise ValueError(" ".join(errors))
    normalizer = normalization_lib.resolve(settings.normalization, NAME, None)
    builder = tfds_access.prepared_builder(NAME, settings.data_dir, download=False)
    from resnet_identity.data import streamed

    return streamed.StreamedDataset(
        name=NAME,
        source=TfdsSource(builder),
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SIZE,
        normalization=normalizer,
        train_crop=options["train_crop"],
        color_jitter=float(options["color_jitter"]),
        pca_lighting=float(options["pca_lighting"]),
        shuffle_buffer=int(options["shuffle_buffer"]),
    )


SPEC = DatasetSpec(
    name=NAME,
    facts=lambda options: Facts(
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SIZE,
        num_train=NUM_TRAIN,
        eval_crops=crops.eval_crops(IMAGE_SIZE),
        drops_remainder=True,
    ),
    load=load,
    options=crops.STREAM_OPTIONS,
    check=crops.check_stream_options,
    per_channel=PER_CHANNEL,
    title="ImageNet",
    paper_recipe="imagenet",  # docs/papers.md "ImageNet (v2)"
)
