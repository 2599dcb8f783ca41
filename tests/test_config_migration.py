"""Workdirs written by older versions (`training/config_migration.py`): a config.json from
before the schedule config and the dataset registry reads as today's and resumes; a field no
version knows is refused with what to do."""

import json
import pathlib

import numpy as np
import pytest

from resnet_identity.training import config as config_lib
from resnet_identity.training import config_migration, optim, trainer
from tests.test_optim import lr_at

# quickstart.py:smoke as written by commit 12af010, before the registry (flat `synthetic_*`
# and `imagenet_*` fields).
OLD_CONFIG = pathlib.Path(__file__).parent / "data" / "config_12af010_quickstart_smoke.json"


def test_a_workdir_from_before_the_registry_resumes(tmp_path, capsys):
    """The run finishes under today's names, then its config.json is replaced by the one the
    old version wrote for the same config: the rerun resumes, with no refusal."""
    saved = json.loads(OLD_CONFIG.read_text())
    assert saved["synthetic_image_size"] == 32 and "synthetic" not in saved
    config = config_migration.as_config(saved)
    assert (config.synthetic.image_size, config.imagenet2012.train_crop) == (32, "scale")
    config.eval_batch_size = 256
    saved["eval_batch_size"] = 256
    trainer.train_and_evaluate(config, str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(saved))
    result = trainer.train_and_evaluate(config, str(tmp_path))
    assert result["step"] == saved["num_train_steps"]
    assert "resuming at step 6" in capsys.readouterr().out

    saved["synthetic_image_size"] = 64  # a real difference is still refused, named in today's terms
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(config_lib.ConfigError, match=r"synthetic\.image_size: 64 -> 32"):
        trainer.train_and_evaluate(config, str(tmp_path))


def test_a_saved_field_this_version_does_not_know_is_refused_with_what_to_do():
    with pytest.raises(config_lib.ConfigError, match="imagenet_colour_jitter.*config_migration.py RENAMED"):
        config_migration.as_config({"imagenet_colour_jitter": 0.4})


def test_a_config_json_from_before_the_schedule_config_reads_as_today_s():
    """config.json written at 12af010 (`configs/quickstart.py:smoke`), with the flat fields."""
    with open(OLD_CONFIG) as f:
        saved = json.load(f)
    migrated = config_migration.migrate(saved)
    assert migrated["schedule"] == {
        "name": "step",
        "learning_rate": 0.1,
        "boundaries": [4],
        "boundaries_unit": "steps",
        "decay_factor": 0.1,
        "warmup": "constant",
        "warmup_steps": 2,
        "warmup_learning_rate": 0.01,
    }
    assert migrated["optimizer"] == {
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "decay_bn_and_bias": False,
    }
    assert migrated["label_smoothing"] == 0.0  # the behaviour before the field existed
    # The old run's learning rates: 0.01 for 2 warm-up steps, 0.1, then 0.01 from step 4 of 6.
    lrs = optim.build_schedule(migrated["schedule"], total_steps=6, steps_per_epoch=128)
    np.testing.assert_allclose(lr_at(lrs, range(6)), [0.01, 0.01, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    # The same config built today differs in none of these fields.
    today = config_lib.default_config()
    today.schedule = optim.schedule_config("step", learning_rate=0.1, boundaries=(4,), warmup_steps=2)
    today.optimizer.update(momentum=0.9, nesterov=False, weight_decay=1e-4, decay_bn_and_bias=False)
    current = json.loads(today.to_json())
    assert (
        config_lib.differing_fields(
            {k: migrated[k] for k in ("schedule", "optimizer", "label_smoothing")},
            {k: current[k] for k in ("schedule", "optimizer", "label_smoothing")},
        )
        == []
    )
