"""The dataset registry (`data/registry.py`): facts in one place, options nested in the config,
and a dataset added in one line (workdirs whose config.json predates the registry:
test_config_migration.py)."""

import dataclasses
import json

import ml_collections
import numpy as np
import pytest

from resnet_identity.data import InMemoryDataset, get_dataset, registry
from resnet_identity.data.base import DatasetSpec, Facts, Option
from resnet_identity.data.normalization import resolve
from resnet_identity.training import config as config_lib
from resnet_identity.training import config_migration, trainer


def test_the_facts_are_those_of_the_loaded_datasets():
    for name in ("digits", "synthetic"):
        config = ml_collections.ConfigDict({"dataset": name})
        facts, dataset = registry.facts(config), get_dataset(config)
        assert (facts.num_classes, facts.image_size, facts.num_train) == (
            dataset.num_classes,
            dataset.image_size,
            dataset.num_train,
        )
    assert registry.facts(ml_collections.ConfigDict({"dataset": "digits"})).class_names[3] == "3"
    imagenet = registry.facts(ml_collections.ConfigDict({"dataset": "imagenet2012"}))
    assert (imagenet.num_classes, imagenet.num_train, imagenet.eval_crops) == (1000, 1_281_167, (224, 320, "10crop"))
    assert registry.facts(ml_collections.ConfigDict({"dataset": "cifar10"})).class_names[0] == "airplane"


def test_the_epoch_length_is_the_datasets():
    """Streamed data drop each epoch's partial batch; in-memory batches span epochs."""
    config = config_lib.default_config()
    config.batch_size = 256
    config.dataset = "imagenet2012"
    assert config_lib.steps_per_epoch(config) == 1_281_167 // 256 == 5004
    config.dataset = "cifar10"
    assert config_lib.steps_per_epoch(config) == 196  # ceil(50000 / 256)
    config.dataset, config.synthetic.image_size = "synthetic", 8
    assert config_lib.steps_per_epoch(config) == 4  # 1024 / 256


def test_each_datasets_options_are_nested_under_its_name():
    config = config_lib.default_config()
    assert (config.imagenet2012.train_crop, config.synthetic.image_size, config.folder.path) == ("scale", 32, None)
    assert "imagenet_train_crop" not in config
    config.synthetic.num_classes = 0
    config.dataset = "synthetic"
    with pytest.raises(config_lib.ConfigError, match=r"synthetic\.num_classes=0 must be an int >= 1"):
        config_lib.validate(config)


@pytest.fixture
def tiny_dataset():
    """A dataset of 24 random 8x8 images in 3 classes, with one option, `shift`."""

    def load(options, settings):
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (32, 8, 8, 3), np.uint8) + np.uint8(options["shift"])
        labels = rng.integers(0, 3, 32).astype(np.int32)
        return InMemoryDataset(
            "tiny",
            3,
            images[:24],
            labels[:24],
            images[24:],
            labels[24:],
            resolve(settings.normalization, "tiny", images[:24]),
            crop_padding=0,
        )

    yield DatasetSpec(
        "tiny",
        facts=lambda options: Facts(num_classes=3, image_size=8, num_train=24),
        load=load,
        options={"shift": Option(0, int)},
    )
    registry.SPECS.pop("tiny", None)


def test_a_dataset_registered_in_one_line_trains(tiny_dataset, tmp_path):
    registry.register(tiny_dataset)  # the one line

    # Built from a config.json-style dict, so that the schedule's fields are named as in
    # any version (config_migration.RENAMED).
    config = config_migration.as_config(
        {
            "dataset": "tiny",
            "tiny": {"shift": 1},
            "model": "cifar_resnet20",
            "batch_size": 8,
            "eval_batch_size": 8,
            "num_train_steps": -1,
            "num_epochs": 1.0,  # 24 / 8 = 3 steps, from the facts
            "lr_boundaries": [2],
            "warmup_steps": 0,
            "log_every_steps": 3,
            "eval_every_steps": 3,
            "checkpoint_every_steps": 3,
        }
    )
    result = trainer.train_and_evaluate(config, str(tmp_path))
    assert result["step"] == 3 and result["test_examples"] == 8
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["dataset"] == "tiny" and saved["tiny"] == {"shift": 1}


def test_a_dataset_declares_its_normalisation_constants_and_its_paper_recipe(tiny_dataset):
    """`resolve` reads a dataset's per-channel constants from its spec, not from a table of names,
    and a recipe's presets follow the dataset's `paper_recipe`."""
    from resnet_identity.data import imagenet
    from resnet_identity.data.base import ChannelStats
    from resnet_identity.training import recipes

    images = np.full((4, 8, 8, 3), 7, np.uint8)
    computed = resolve("per_channel", "tiny", images)  # not registered yet: from the images
    np.testing.assert_allclose(computed.mean, [7, 7, 7])
    registry.register(dataclasses.replace(tiny_dataset, per_channel=ChannelStats((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))))
    declared = resolve("per_channel", "tiny", images)
    np.testing.assert_allclose((declared.mean, declared.std), [(1, 2, 3), (4, 5, 6)])
    assert resolve("per_pixel_mean", "tiny", images).name == "per_pixel_mean"  # the constants are per-channel only
    folder = resolve(None, "folder", None)  # ImageNet's, which weights trained on ImageNet expect; no data read
    np.testing.assert_allclose(folder.mean, imagenet.PER_CHANNEL.mean)

    config = recipes.cifar("cifar_resnet110")
    config.dataset = "cifar100"  # a CIFAR dataset too: the released code's recipe applies
    assert recipes.apply_preset(config, "released_code").normalization == "per_channel"
    config.dataset = "tiny"
    with pytest.raises(ValueError, match="use it with CIFAR configs"):
        recipes.apply_preset(config, "released_code")
