"""TensorBoard events and metrics that survive kills; a resume on another device count warns;
a damaged metrics.jsonl is repaired at resume. (On a gs:// workdir: test_cloud_storage.py.)"""

import json
import os
import signal
import subprocess
import sys

import jax
import pytest

from resnet_identity.runs.metric_logging import DAMAGED_FILE, EVENTS_PATTERN, MetricLogger, read_metrics
from resnet_identity.training import trainer
from tests.test_trainer import _run_until_killed, _worker_cmd
from tests.train_worker import tiny_config


def test_event_files_are_what_tensorflow_reads(tmp_path):
    """The records `EventFile` frames by hand pass TensorFlow's own reader, CRCs included."""
    tf = pytest.importorskip("tensorflow")
    logger = MetricLogger(tmp_path, resumed_from=0)
    logger.write(1, "train", {"loss": 2.5, "error": 0.75})
    logger.write(2, "test", {"error": 0.5})
    [path] = tmp_path.glob(EVENTS_PATTERN)
    events = list(tf.compat.v1.train.summary_iterator(str(path)))
    assert events[0].file_version == "brain.Event:2"
    values = {(e.step, v.tag): v.simple_value for e in events[1:] for v in e.summary.value}
    assert values == {(1, "train/loss"): 2.5, (1, "train/error"): 0.75, (2, "test/error"): 0.5}


def test_a_run_killed_before_logging_leaves_no_event_file(tmp_path):
    MetricLogger(tmp_path, resumed_from=0)  # never written to, never closed: as a SIGKILL leaves it
    assert list(tmp_path.glob(EVENTS_PATTERN)) == []


@pytest.mark.slow
def test_a_sigkilled_run_keeps_its_curves_and_a_resume_on_other_devices_warns(tmp_path, caplog, capsys, monkeypatch):
    """Two devices, SIGKILLed after logging step 5: every logged step is in the events.
    Resumed here on one device, the run says that it is no longer bitwise reproducible."""
    assert jax.device_count() == 1  # this process's backend starts before the worker's flag is set
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
    code, output = _run_until_killed(
        _worker_cmd(tmp_path, tmp_path / "out.npz", 6, "checkpoint_every_steps=2"), 5, signal.SIGKILL
    )
    assert code == -signal.SIGKILL and "2 device(s)" in output, output[-3000:]
    assert sorted(read_metrics(tmp_path)["train/loss"]) == [1, 2, 3, 4, 5]
    assert all(path.stat().st_size > 0 for path in tmp_path.glob(EVENTS_PATTERN))

    config = tiny_config(steps=6)
    config.checkpoint_every_steps = 2
    result = trainer.train_and_evaluate(config, str(tmp_path))
    assert result["step"] == 6 and "resuming at step" in capsys.readouterr().out
    assert "written on 2 devices and is resumed on 1" in caplog.text
    assert sorted(read_metrics(tmp_path)["train/loss"]) == [1, 2, 3, 4, 5, 6]
    logged = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl") if "train/loss" in line]
    assert logged == [1, 2, 3, 4, 5, 6]


def test_lines_that_are_not_records_are_moved_aside_at_resume(tmp_path, caplog):
    logger = MetricLogger(tmp_path, resumed_from=0)
    for step in (1, 2, 3):
        logger.write(step, "train", {"loss": step / 10})
    lines = (tmp_path / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    undecodable = lines[1].replace(b'"step"', b'"st\xffep"')  # one byte that is not UTF-8
    torn = lines[2][:-9]  # a killed run's half-written last record, without its newline
    (tmp_path / "metrics.jsonl").write_bytes(lines[0] + undecodable + torn)
    resumed = MetricLogger(tmp_path, resumed_from=1)
    resumed.write(2, "train", {"loss": 0.25})
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        {"step": 1, "train/loss": 0.1},
        {"step": 2, "train/loss": 0.25},
    ]
    assert (tmp_path / DAMAGED_FILE).read_bytes() == undecodable + torn + b"\n"  # byte for byte
    assert "line 2" in caplog.text and "not UTF-8" in caplog.text and "line 3" in caplog.text


def test_train_py_resumes_a_workdir_whose_metrics_have_an_undecodable_byte(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [
        sys.executable,
        os.path.join(root, "train.py"),
        f"--config={os.path.join(root, 'configs', 'quickstart.py')}:smoke",
        f"--workdir={tmp_path}",
        "--config.model_overrides.depth=8",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=1000",
    ]
    env = {**os.environ, "PYTHONPATH": root}
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    data = (tmp_path / "metrics.jsonl").read_bytes()
    (tmp_path / "metrics.jsonl").write_bytes(data.replace(b'"train/loss"', b'"train/lo\xa7s"', 1))
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "not UTF-8" in again.stderr and DAMAGED_FILE in again.stderr
    assert b"\xa7" in (tmp_path / DAMAGED_FILE).read_bytes()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [2, 3, 4, 5, 6]


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    """A run killed while appending leaves half a JSON line; the next start drops it (it
    would otherwise make every resume fail) and keeps the whole records up to its step."""
    from resnet_identity.runs.metric_logging import MetricLogger

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/loss": 1.5}\n{"step": 3, "train/lo')
    logger = MetricLogger(str(tmp_path), resumed_from=2, is_main=True)
    logger.write(3, "train", {"loss": 1.25})
    logger.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    # Whole records of redone steps (a fallback to an older checkpoint) are moved, not deleted.
    logger = MetricLogger(str(tmp_path), resumed_from=1, is_main=True)
    logger.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1]
    superseded = (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in superseded] == [2, 3]
