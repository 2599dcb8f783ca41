"""`train.py` as a user runs it: bad input (a workdir it cannot write, a damaged config.json or
metrics record) gets one `error:` line with the fix, exit 1 and no traceback, and loses
nothing (flag and config-file mistakes: test_cli.py; the same mistakes met by the trainer
itself: test_trainer.py and test_config.py)."""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from resnet_identity.training import trainer
from tests.train_worker import tiny_config

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
