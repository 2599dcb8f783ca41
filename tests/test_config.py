"""The config (`training/config.py`): its schema is locked and typed, and `validate` turns a bad
value into one message that names the field and says what to do, before anything is compiled
or written (the same mistakes through `train.py`: test_cli.py and test_train.py)."""

import pytest

from resnet_identity.training import config as config_lib
from tests.train_worker import tiny_config


def _config(**fields):
    config = tiny_config(steps=4)
    for key, value in fields.items():
        target = config
        *parents, leaf = key.split("__")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


def test_unknown_key_is_refused():
    config = tiny_config(steps=4)
    with pytest.raises(AttributeError, match="label_smothing"):
        config.label_smothing = 0.1  # the schema is locked: a typo fails at once
    import ml_collections

    loose = ml_collections.ConfigDict(tiny_config(steps=4).to_dict(), type_safe=False)
    loose.label_smothing = 0.1
    with pytest.raises(config_lib.ConfigError, match="Did you mean 'label_smoothing'"):
        config_lib.validate(loose)


def test_wrong_type_is_refused():
    config = tiny_config(steps=4)
    with pytest.raises(TypeError):
        config.batch_size = "sixteen"
    import ml_collections

    loose = ml_collections.ConfigDict(tiny_config(steps=4).to_dict(), type_safe=False)
    loose.batch_size = 16.0
    with pytest.raises(config_lib.ConfigError, match="batch_size must be an int"):
        config_lib.validate(loose)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"batch_size": 18}, "does not split evenly over 4 devices"),
        ({"model_overrides__bn_group_size": 3}, "bn_group_size=3 does not divide batch_size=16"),
        ({"model_overrides__depth": 21}, "6n\\+2"),
        ({"model_overrides__unit": "gated_magic"}, "unit"),
        ({"model": "resnet_1001"}, "is not a model"),
        ({"schedule__boundaries": (2, 9)}, "beyond the end of training"),
        ({"dataset": "cifar11"}, "cifar10"),
        # Caught here, not by the optimiser after config.json is written or at the first eval.
        ({"schedule__decay_factor": 0.0}, "schedule: decay_factor must be in"),
        ({"optimizer__nesterov": True, "optimizer__momentum": 0.0}, "optimizer: nesterov=True needs momentum"),
        ({"schedule__warmup_steps": -5}, r"schedule: warmup_steps must be an integer in \[0, 4\)"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
        ({"eval_crops": (32,)}, "set it to None for digits"),
    ],
)
def test_invalid_values_get_one_clear_message(fields, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(_config(**fields), num_devices=4)


def test_eval_crops_none_from_the_command_line_is_the_advised_none():
    # `--config.eval_crops=None`, as the message above advises, reaches the tuple field as (None,).
    config_lib.validate(_config(eval_crops=(None,)), num_devices=4)


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_label_smoothing_outside_0_1_is_refused(value):
    config = config_lib.default_config()
    config.label_smoothing = value
    with pytest.raises(config_lib.ConfigError, match=r"label_smoothing must be in \[0, 1\)"):
        config_lib.validate(config)
