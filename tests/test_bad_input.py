"""Bad input gets one clear message that says what to do, and loses nothing: configs,
workdirs, datasets, and resumes that do not fit the workdir."""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from resnet_identity.data import DatasetNotPreparedError
from resnet_identity.training import config as config_lib
from resnet_identity.training import trainer
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


def test_conflicting_saved_config_is_refused_unless_allowed(tmp_path):
    trainer.train_and_evaluate(tiny_config(steps=2), str(tmp_path))
    changed = _config(schedule__learning_rate=0.05)
    changed.num_train_steps = 2
    changed.schedule.boundaries = (1,)
    with pytest.raises(config_lib.ConfigError, match=r"(?s)schedule.learning_rate: 0.1 -> 0.05.*--allow_config_change"):
        trainer.train_and_evaluate(changed, str(tmp_path))
    trainer.train_and_evaluate(changed, str(tmp_path), allow_config_change=True)


def test_fields_that_only_decide_what_is_recorded_change_without_the_flag(tmp_path):
    trainer.train_and_evaluate(tiny_config(steps=2), str(tmp_path))
    changed = tiny_config(steps=2)
    changed.log_every_steps, changed.diagnostics_every_steps, changed.keep_checkpoints = 2, 2, 1
    assert trainer.train_and_evaluate(changed, str(tmp_path))["step"] == 2
    changed.seed = 1  # what is trained still binds
    with pytest.raises(config_lib.ConfigError, match=r"seed: 0 -> 1"):
        trainer.train_and_evaluate(changed, str(tmp_path))


def test_unwritable_workdir_is_reported_with_what_to_do(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="Cannot write to workdir.*is a file, not a directory. Choose another workdir"):
        trainer.train_and_evaluate(tiny_config(steps=2), str(blocker / "run"))


def test_missing_dataset_is_reported_with_what_to_do(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    config = tiny_config(steps=2)
    config.dataset = "cifar10"
    config.data_dir = str(tmp_path / "no_data")
    config.tfds_download = False
    with pytest.raises(DatasetNotPreparedError, match="cifar10"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_refused_resume_leaves_the_saved_config_as_it_was(tmp_path):
    """Even with --allow_config_change, a checkpoint of another model is refused, and the
    workdir must still accept the config that wrote it, as the error advises."""
    trainer.train_and_evaluate(tiny_config(steps=2), str(tmp_path))
    saved = (tmp_path / "config.json").read_text()
    deeper = tiny_config(steps=2)
    deeper.model_overrides.depth = 14
    with pytest.raises(trainer.checkpointing.CheckpointLayoutError, match="Resume with that run's config"):
        trainer.train_and_evaluate(deeper, str(tmp_path), allow_config_change=True)
    assert (tmp_path / "config.json").read_text() == saved
    assert not (tmp_path / "config_history.jsonl").exists()
    assert trainer.train_and_evaluate(tiny_config(steps=2), str(tmp_path))["step"] == 2


# The same mistakes met on the command line: the real train.py prints one `error:` line with
# the fix, exits 1 and shows no traceback (flag and config-file mistakes: test_cli.py).

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _train_py(workdir, *flags, tmp_path):
    config = tmp_path / "tiny_config.py"
    config.write_text(
        "from tests.train_worker import tiny_config\n\n\ndef get_config():\n    return tiny_config(steps=2)\n"
    )
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"--config={config}", f"--workdir={workdir}", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _assert_user_error(done, message):
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A finished two-step run; each test works on a copy."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    trainer.train_and_evaluate(tiny_config(steps=2), str(workdir))
    return workdir


def test_workdir_that_is_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "run"
    blocker.write_text("a file, not a folder")
    _assert_user_error(_train_py(blocker, tmp_path=tmp_path), f"Cannot write to workdir {blocker}")
    assert blocker.read_text() == "a file, not a folder"


def test_workdir_that_cannot_be_created_is_one_line(tmp_path):
    _assert_user_error(
        _train_py("/proc/resnet_identity_test/run", tmp_path=tmp_path),
        "Cannot write to workdir /proc/resnet_identity_test/run",
    )


def test_damaged_config_json_is_refused_then_kept_aside_with_allow_config_change(trained_workdir, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    (workdir / "config.json").write_text('{"model": "cifar_pre')
    _assert_user_error(_train_py(workdir, tmp_path=tmp_path), "--allow_config_change")
    done = _train_py(workdir, "--allow_config_change", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "step 2: evaluating on 360 examples..." in done.stdout  # the finished run evaluates again
    (aside,) = workdir.glob("config.json.damaged-*")
    assert aside.read_text() == '{"model": "cifar_pre'
    assert json.loads((workdir / "config.json").read_text())["model"] == "cifar_preact20"


def test_metrics_line_without_step_is_moved_aside_not_fatal(trained_workdir, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"note": "written by hand"}\n')
    done = _train_py(workdir, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "has no step" in done.stderr
    # The resumed run is quiet: no library INFO lines (absl's "I1203 12:00:00 ... checkpoint_manager.py]").
    assert not re.search(r"^I\d{4} ", done.stderr, re.MULTILINE), done.stderr
    assert '{"note": "written by hand"}' in (workdir / "metrics.superseded.jsonl").read_text()
    assert all("step" in json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines())
