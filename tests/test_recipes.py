"""The papers' recipes (`training/recipes.py`) and the configs/ files built from them: every
config and preset validates, and the CIFAR and ImageNet recipes are the papers' (v1 Sec. 3.4
and 4.2, v2 Sec. 5; docs/papers.md, "Training recipes")."""

import importlib.util
import os

import pytest

from resnet_identity.training import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CONFIGS = [
    "cifar_preact1001",
    "cifar_preact164",
    "cifar_resnet110",
    "cifar_resnet164",
    "imagenet_preact200",
    "imagenet_resnet50",
    "quickstart",
]


def _load(name, preset=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_validates_with_its_presets(name):
    config = _load(name)
    config_lib.validate(config)
    for field in (
        "model",
        "model_overrides",
        "dataset",
        "batch_size",
        "num_train_steps",
        "schedule",
        "optimizer",
        "seed",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
    ):
        assert field in config
    smoke = _load(name, "smoke")
    config_lib.validate(smoke)
    assert smoke.num_train_steps <= 10 and smoke.batch_size <= 8
    assert "python train.py --config=configs/" in open(os.path.join(ROOT, "configs", f"{name}.py")).read()


def test_cifar_recipe_is_the_papers():
    c = _load("cifar_preact1001")
    optimizer, schedule = c.optimizer, c.schedule
    assert (c.batch_size, c.model_overrides.bn_group_size, optimizer.momentum, optimizer.weight_decay) == (
        128,
        64,
        0.9,
        1e-4,
    )
    assert (schedule.name, schedule.learning_rate, tuple(schedule.boundaries), schedule.decay_factor) == (
        "step",
        0.1,
        (32_000, 48_000),
        0.1,
    )
    assert c.num_train_steps == 64_000
    assert (schedule.warmup, schedule.warmup_steps, schedule.warmup_learning_rate) == ("constant", 400, 0.01)
    assert (optimizer.nesterov, optimizer.decay_bn_and_bias, c.label_smoothing) == (False, False, 0.0)
    assert c.normalization == "per_pixel_mean"  # v1 Sec. 4.2; per-channel is the released code's
    released = _load("cifar_preact1001", "released_code")
    assert (released.batch_size, released.optimizer.nesterov, released.num_epochs) == (64, True, 200.0)
    assert released.optimizer.decay_bn_and_bias  # the released code decays BN and biases too
    assert (tuple(released.schedule.boundaries), released.schedule.boundaries_unit) == ((80, 121), "epochs")
    assert released.schedule.warmup_steps == 0
    assert config_lib.total_steps(released) == 200 * 782
    assert released.normalization == "per_channel"
    imagenet = _load("imagenet_preact200")
    assert not imagenet.optimizer.decay_bn_and_bias
    assert (tuple(imagenet.schedule.boundaries), imagenet.schedule.boundaries_unit) == ((30, 60), "epochs")
    assert (imagenet.batch_size, imagenet.model_overrides.bn_group_size, tuple(imagenet.eval_crops)) == (
        256,
        32,
        (224, 320),
    )


def test_cifar100_is_one_override_away():
    c = _load("cifar_preact164")
    c.dataset = "cifar100"
    config_lib.validate(c)


def test_imagenet_recipe_augments_as_the_paper_and_presets_fb_resnet_torch():
    from resnet_identity.training import recipes

    paper = recipes.imagenet("resnet50")
    augment = paper.imagenet2012
    assert (augment.train_crop, augment.pca_lighting, augment.color_jitter) == ("scale", 0.1, 0.0)
    fb = _load("imagenet_resnet50", "fb_resnet_torch")
    config_lib.validate(fb)
    assert (fb.imagenet2012.train_crop, fb.imagenet2012.color_jitter, fb.imagenet2012.pca_lighting) == (
        "scale_aspect",
        0.4,
        0.1,
    )
    assert (fb.normalization, fb.num_epochs) == ("per_channel", 90.0)
    with pytest.raises(ValueError, match="use it with ImageNet configs"):
        recipes.cifar("cifar_preact164", "fb_resnet_torch")
    paper.imagenet2012.train_crop = "random_sized"
    with pytest.raises(
        config_lib.ConfigError,
        match=r"imagenet2012\.train_crop='random_sized' must be 'scale' \(v1: .*\) or 'scale_aspect'",
    ):
        config_lib.validate(paper)
