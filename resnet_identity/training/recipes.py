"""The papers' training recipes as config builders, shared by the files in `configs/`.

Each builder returns a locked `ConfigDict` (schema in `config.py`) holding only data; the
presets are the only branches. docs/papers.md "Training recipes" is the source of every number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import ml_collections

from resnet_identity import models
from resnet_identity.data import registry as data_registry
from resnet_identity.training.config import default_config


def cifar(model: str, preset: str | None = None) -> ml_collections.ConfigDict:
    """v2 paper's CIFAR recipe (Appendix; docs/papers.md "CIFAR (v2 paper)"), used for Tables 1-3.

    Batch 128 with BN statistics from groups of 64 (2 GPUs x 64), SGD momentum 0.9, weight
    decay 1e-4, LR 0.1 divided by 10 at 32k and 48k iterations, 64k iterations, LR 0.01 for
    the first 400 iterations, pad-4 crop + flip augmentation. Inputs have v1's per-pixel
    mean subtracted (v1 Sec. 4.2, which v2 follows; `data/normalization.py` says how they
    are scaled): the per-channel mean/std is one of the released code's differences, so
    it is the `released_code` preset's.
    """
    c = default_config()
    c.model = model
    c.model_overrides.bn_group_size = 64
    c.dataset = "cifar10"
    c.batch_size = 128
    c.num_train_steps = 64_000
    c.schedule.learning_rate = 0.1
    c.schedule.boundaries = (32_000, 48_000)
    c.schedule.warmup_steps = 400
    c.schedule.warmup_learning_rate = 0.01
    c.normalization = "per_pixel_mean"
    c.eval_every_steps = 4_000
    c.checkpoint_every_steps = 2_000
    return apply_preset(c, preset)


def imagenet(model: str, preset: str | None = None) -> ml_collections.ConfigDict:
    """v2 ImageNet recipe (docs/papers.md "ImageNet (v2)"), used for Table 5.

    The paper's: batch 256 with BN groups of 32 (8 GPUs x 32), LR 0.1 cut at epochs 30 and
    60, no warm-up, and v1's augmentation: shorter side drawn from [256, 480] ("scale", the
    rows of Table 5 without "aspect"), a random 224 crop, flip, and AlexNet's PCA lighting
    with std 0.1 as v1's colour augmentation. Evaluated at 224 and 320 crops (Table 5).
    fb.resnet.torch's: the 90 epochs (the paper does not state the end) and the per-channel
    mean/std normalisation. v1 subtracts a per-pixel mean image of the training set, which
    we do not have, so this is a deviation from the paper.
    The `fb_resnet_torch` preset switches to fb.resnet.torch's augmentation: random-sized
    crop, colour jitter 0.4 and PCA lighting 0.1. It is the closest setting we have to
    Table 5's "scale + aspect" row (20.1%), which the paper describes no further; beyond
    the aspect, it also adds the colour jitter.
    """
    c = default_config()
    c.model = model
    c.model_overrides.bn_group_size = 32
    # Unrolled: with at most 36 identical units per stage, scanning saves little compile time,
    # and the unrolled step was the faster one on a GPU (docs/performance.md, "GPU defaults").
    c.model_overrides.scan = False
    # No remat, the unrolled default, stated: the configuration the GPU figures measured.
    c.model_overrides.remat = "none"
    c.dataset = "imagenet2012"
    c.imagenet2012.train_crop = "scale"
    c.imagenet2012.color_jitter = 0.0  # not in v1
    c.imagenet2012.pca_lighting = 0.1
    c.batch_size = 256
    c.eval_batch_size = 250
    c.num_train_steps = -1
    c.num_epochs = 90.0
    c.schedule.boundaries = (30, 60)
    c.schedule.boundaries_unit = "epochs"
    c.schedule.warmup_steps = 0
    c.eval_crops = (224, 320)
    c.log_every_steps = 500
    c.eval_every_steps = 25_000
    c.checkpoint_every_steps = 5_000
    return apply_preset(c, preset)


# The paper recipe of each model family (registry.MODELS[name].family), for the commands and
# analyses that start from a model name.
BY_FAMILY = {"cifar": cifar, "imagenet": imagenet}


def apply_preset(c: ml_collections.ConfigDict, preset: str | None) -> ml_collections.ConfigDict:
    """`c` changed by `preset` (one of `PRESETS`; None or "" leaves it as it is).

    Raises:
      ValueError: an unknown preset, or one made for the other paper recipe than the one the
        config's dataset is trained with (its `DatasetSpec.paper_recipe`).
    """
    if preset in (None, ""):
        return c
    if preset not in _PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
    chosen = _PRESETS[preset]
    if chosen.recipe is not None and data_registry.spec(c.dataset).paper_recipe != chosen.recipe:
        raise ValueError(chosen.mismatch)
    chosen.apply(c)
    return c


def _smoke(c: ml_collections.ConfigDict) -> None:
    # A handful of steps on a tiny batch of synthetic images: checks the whole pipeline
    # (model, step, eval, checkpoint, logs) in about a minute on a CPU, with no download.
    # The labels are random, so the test error stays at chance (90% for 10 classes).
    # The images are the network's input size, at most 64: after an ImageNet stem and stages
    # (32x fewer pixels a side), 64 leaves 2x2.
    c.synthetic.image_size = min(models.registry.input_size(c.model), 64)
    c.dataset = "synthetic"
    c.eval_crops = None
    c.batch_size = 8
    c.eval_batch_size = 64
    c.num_train_steps = 6
    c.num_epochs = -1.0
    c.schedule.boundaries = (4,)
    c.schedule.boundaries_unit = "steps"
    c.schedule.warmup_steps = 2
    # BN's running statistics are the last batch's, over the whole batch: after 6 steps,
    # momentum 0.9 would leave them half at their initial (0, 1), and groups of 4 are too
    # noisy; a deep net's eval outputs blow up through either (the smoke row of RESULTS).
    c.model_overrides.bn_group_size = None
    c.model_overrides.bn_momentum = 0.0
    c.log_every_steps = 2
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 6  # one checkpoint: a deep net's state is large


def _released_code(c: ml_collections.ConfigDict) -> None:
    # KaimingHe/resnet-1k-layers on fb.resnet.torch: batch 64 (its 4.62% ResNet-1001 run),
    # Nesterov, weight decay on every parameter, 200 epochs with cuts at epochs 81 and 122
    # counted from 1 (after 80 and 121 completed epochs), per-channel normalisation: the
    # four differences docs/papers.md lists. Two more follow from running that code, and
    # docs/papers.md does not list them: no warm-up (fb.resnet.torch's `Trainer:learningRate`
    # is the step schedule alone), and BN statistics over the whole batch of 64, since
    # docs/papers.md gives no GPU count for that run (our assumption: one GPU).
    c.batch_size = 64
    c.model_overrides.bn_group_size = None
    c.optimizer.nesterov = True
    c.optimizer.decay_bn_and_bias = True
    c.num_train_steps = -1
    c.num_epochs = 200.0
    c.schedule.boundaries = (80, 121)
    c.schedule.boundaries_unit = "epochs"
    c.schedule.warmup_steps = 0
    c.normalization = "per_channel"


def _fb_resnet_torch(c: ml_collections.ConfigDict) -> None:
    # fb.resnet.torch's datasets/imagenet.lua: RandomSizedCrop, ColorJitter 0.4, Lighting
    # 0.1 and mean/std normalisation; the recipe's 90 epochs are already its.
    c.imagenet2012.train_crop = "scale_aspect"
    c.imagenet2012.color_jitter = 0.4
    c.imagenet2012.pca_lighting = 0.1
    c.normalization = "per_channel"


def _finetune(c: ml_collections.ConfigDict) -> None:
    # Fine-tuning on a folder of your images (docs/pretrained.md), which may hold a few dozen:
    # batch 16 with BN over the whole batch (it needs 16 training images; a larger
    # --config.batch_size is yours to set), 10 epochs at LR 0.01 cut at epochs 6 and 9.
    c.dataset = "folder"
    c.batch_size = 16
    c.eval_batch_size = 50
    c.model_overrides.bn_group_size = None
    c.eval_crops = None  # the folder's first crop, whatever its folder.image_size
    c.num_epochs = 10.0
    c.schedule.learning_rate = 0.01
    c.schedule.boundaries = (6, 9)
    c.log_every_steps = 10
    c.eval_every_steps = 1_000
    c.checkpoint_every_steps = 1_000


class _Preset(NamedTuple):
    apply: Callable[[ml_collections.ConfigDict], None]
    recipe: str | None  # the paper recipe whose datasets it is made for; None: any
    mismatch: str = ""  # the message for a config on another dataset


_PRESETS = {
    "smoke": _Preset(_smoke, None),
    "released_code": _Preset(
        _released_code,
        "cifar",
        "The released_code preset is the released CIFAR recipe; use it with CIFAR configs "
        "(for ImageNet, fb_resnet_torch is fb.resnet.torch's setup).",
    ),
    "fb_resnet_torch": _Preset(
        _fb_resnet_torch,
        "imagenet",
        "The fb_resnet_torch preset is fb.resnet.torch's ImageNet augmentation; use it with ImageNet configs.",
    ),
    "finetune": _Preset(
        _finetune,
        "imagenet",
        "The finetune preset fine-tunes ImageNet weights on a folder of your images; use it with ImageNet configs.",
    ),
}
PRESETS = tuple(_PRESETS)
