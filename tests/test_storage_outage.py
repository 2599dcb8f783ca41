"""A Cloud Storage outage during a real run: fake-gcs-server, on a filesystem backend so that
its objects survive, is stopped around a save for longer than a short `storage_retry_s`, and
started again (tests/gcs_emulator.py)."""

import os
import subprocess
import sys
import time

import pytest

from tests.gcs_emulator import Emulator, list_objects
from tests.train_commands import quickstart_train_py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def emulator(tmp_path):
    server = Emulator(filesystem_root=str(tmp_path / "objects"))
    try:
        yield server
    finally:
        server.stop()


def _complete_steps(workdir):
    """The steps Orbax has finalised on Cloud Storage (those with their commit marker), read
    through the emulator's own API."""
    names = list_objects(f"{workdir}/checkpoints")
    return sorted(
        int(name.split("/")[2]) for name in names if name.count("/") == 3 and name.endswith("/commit_success.txt")
    )


def _train_cmd(workdir, *overrides):
    return quickstart_train_py(
        workdir,
        "--config.log_every_steps=100000",  # no metrics write: the outage meets a save first
        "--config.eval_every_steps=100000",
        "--config.checkpoint_every_steps=25",
        "--config.storage_retry_s=4",
        "--config.schedule.boundaries=(10,20)",  # within the rerun's few steps
        *overrides,
    )


@pytest.mark.slow
def test_an_outage_longer_than_the_back_off_stops_with_exit_75_and_the_rerun_resumes(emulator, tmp_path, monkeypatch):
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "PYTHONUNBUFFERED": "1",
        "STORAGE_EMULATOR_HOST": emulator.url,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    workdir = emulator.create_bucket("outage") + "/run"
    run = subprocess.Popen(
        _train_cmd(workdir, "--config.num_train_steps=100000"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in run.stdout:
            if "compiled the train step" in line:
                break
        time.sleep(1.0)  # a save or two in; the outage meets the next one
        emulator.pause()
        stopped = time.monotonic()
        out, err = run.communicate(timeout=240)
    finally:
        run.kill()
    waited = time.monotonic() - stopped
    print(f"{waited:.0f} s from the outage to the exit")
    assert run.returncode == 75, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors == err.strip().splitlines()[-1:], err[-3000:]
    assert "Cloud Storage did not answer for 4 s (storage_retry_s)" in errors[0]
    assert "rerun the same command" in errors[0]
    assert waited < 120, f"{waited:.0f} s from the outage to the exit"  # the back-off plus the clients' retries

    emulator.resume()
    saved = _complete_steps(workdir)
    assert all(step % 25 == 0 for step in saved), saved
    last = (saved or [0])[-1]
    rerun = subprocess.run(
        _train_cmd(workdir, f"--config.num_train_steps={last + 25}", "--allow_config_change"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stderr[-3000:]
    if last:
        assert f"resuming at step {last}" in rerun.stdout
    assert _complete_steps(workdir)[-1] == last + 25


_SHORT_OUTAGE = """
import logging, sys
import jax.numpy as jnp
import numpy as np
from resnet_identity.runs.checkpointing import Checkpointer, finalized_steps

logging.basicConfig(level=logging.WARNING, force=True)
directory = sys.argv[1]
state = {"w": jnp.arange(100_000.0)}
with Checkpointer(directory, every_steps=1, keep=3, storage_retry_s=90) as checkpointer:
    checkpointer.maybe_save(1, state)
    checkpointer.wait()
    print("saved 1", flush=True)
    sys.stdin.readline()  # the server is stopped now, and started again in a few seconds
    checkpointer.maybe_save(2, {"w": state["w"] + 1})
    checkpointer.wait()
    assert finalized_steps(directory) == [1, 2], finalized_steps(directory)
with Checkpointer(directory, every_steps=1, keep=3) as checkpointer:
    restored, step = checkpointer.restore({"w": jnp.zeros(100_000)})
assert step == 2 and np.array_equal(restored["w"], state["w"] + 1)
print("written once storage answered", flush=True)
"""


@pytest.mark.slow
def test_a_save_that_meets_an_outage_shorter_than_the_back_off_is_written(emulator, monkeypatch):
    """The server stopped when a save starts, and started again 40 s later (longer than gcsfs's
    own retries, about 30 s), with a 90 s back-off: the checkpointer waits, then writes the
    step, complete once `wait` returns. (In a process of its own: the Cloud Storage clients
    keep their endpoint for the process.)"""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    directory = emulator.create_bucket("short-outage") + "/checkpoints"
    child = subprocess.Popen(
        [sys.executable, "-c", _SHORT_OUTAGE, directory],
        env={**os.environ, "PYTHONPATH": ROOT},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "saved 1"
        emulator.pause()
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(40)
        emulator.resume()
        out, err = child.communicate(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "written once storage answered" in out
    assert "Cloud Storage did not answer while saving checkpoint 2" in err and "answers again after" in err


def test_the_back_off_must_be_a_positive_number_of_seconds():
    from resnet_identity.training import config as config_lib

    config = config_lib.default_config()
    assert config.storage_retry_s == 300.0
    config.storage_retry_s = 0.0
    with pytest.raises(config_lib.ConfigError, match="storage_retry_s must be a positive number of seconds, got 0.0"):
        config_lib.validate(config)
