"""Run files (`runs/files.py`): whole-file writes, and write errors explained. A full disk, for
real: a small tmpfs mounted for the test (the suite runs as root). The user must read the
first, clear error, once, at the step where it happened, and find no probe or temporary file
left behind."""

import json
import os
import subprocess
import sys

import pytest

from resnet_identity.runs import checkpointing
from resnet_identity.runs.files import WriteError, check_workdir, write_atomically
from resnet_identity.runs.metric_logging import MetricLogger

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system at tmp_path/disk, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"These tests mount a small tmpfs and need root (CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def _fill(directory):
    """Leaves no free block on `directory`'s file system."""
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_checkpoint_the_disk_cannot_hold_is_refused_at_its_step_with_one_message(small_disk):
    """train.py on a disk with room for one tiny checkpoint: step 2 is saved, step 4 is
    refused at step 4 (before Orbax starts writing), and the run exits 1 with one line."""
    cmd = _smoke_cmd(
        small_disk / "run",
        "--config.checkpoint_every_steps=2",
        "--config.log_every_steps=1",
        "--config.keep_checkpoints=5",
    )
    result = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr[-3000:]  # one line
    assert result.stderr.startswith("error: Cannot write checkpoint 4 to ") and "the disk is full" in result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("step 4/6")  # reported at the step itself
    assert checkpointing.finalized_steps(small_disk / "run" / "checkpoints") == [2]
    assert sorted(os.listdir(small_disk / "run" / "checkpoints")) == ["2"]  # no partial step
    assert not [name for name in os.listdir(small_disk / "run") if name.startswith(".")]  # no probe, no temp


def test_run_records_on_a_full_disk_raise_one_explained_error_and_leave_nothing_behind(small_disk):
    logger = MetricLogger(small_disk, resumed_from=0)
    logger.write(1, "train", {"loss": 1.0})
    _fill(small_disk)
    with pytest.raises(WriteError, match="Cannot write .*metrics.* the disk is full"):
        for step in range(2, 10_000):  # until the last partly used page of each file is full
            logger.write(step, "train", {"loss": 0.5})
    logger.close()  # the first error is the one reported: closing raises no second one
    with pytest.raises(WriteError, match="final_metrics.json: the disk is full"):
        write_atomically(small_disk / "final_metrics.json", "{}" * 4096)
    with pytest.raises(WriteError, match="Cannot write to workdir .*: the disk is full"):
        check_workdir(str(small_disk))
    assert not [name for name in os.listdir(small_disk) if name.startswith(".")]  # no probe, no temporary file
    whole = (small_disk / "metrics.jsonl").read_text().split("\n")[:-1]  # less a torn last record
    assert [json.loads(line)["step"] for line in whole] == list(range(1, len(whole) + 1))


def _smoke_cmd(workdir, *flags: str) -> list[str]:
    """train.py on the quickstart's smoke preset (6 steps), ResNet-8, no evaluation, with `flags`."""
    return [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--config=" + os.path.join(ROOT, "configs", "quickstart.py") + ":smoke",
        f"--workdir={workdir}",
        "--config.model_overrides.depth=8",
        "--config.eval_every_steps=1000",
        *flags,
    ]


@pytest.mark.slow
def test_file_too_large_and_a_removed_manifest_end_in_one_line_without_library_tracebacks(tmp_path):
    """`ulimit -f` (EFBIG) during the asynchronous write of a real run: one `error:` line,
    exit 1, Orbax's and asyncio's tracebacks kept in checkpoints/library.log, no step
    counted. Rerun without the limit, then with the newest step's `state/manifest.ocdbt`
    removed: the fallback to the step before is said in one warning, without tracebacks."""
    workdir, env = tmp_path / "run", {**os.environ, "PYTHONPATH": ROOT}
    cmd = _smoke_cmd(workdir, "--config.checkpoint_every_steps=3")
    command = " ".join(f"'{arg}'" for arg in cmd)
    limited = subprocess.run(
        ["bash", "-c", f"ulimit -f 200; exec {command}"], env=env, capture_output=True, text=True, timeout=300
    )
    assert limited.returncode == 1, limited.stderr[-3000:]
    assert "Traceback" not in limited.stdout + limited.stderr and "Event loop" not in limited.stderr
    [line] = limited.stderr.strip().splitlines()
    assert line.startswith("error: Cannot write checkpoint 3 to ") and "ulimit -f" in line, line
    assert checkpointing.finalized_steps(workdir / "checkpoints") == []  # nothing half-written counts
    assert "Traceback" in (workdir / "checkpoints" / checkpointing.LIBRARY_LOG).read_text()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert checkpointing.finalized_steps(workdir / "checkpoints") == [3, 6]
    (workdir / "checkpoints" / "6" / "state" / "manifest.ocdbt").unlink()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert "Checkpoint at step 6" in resumed.stderr and "unreadable" in resumed.stderr
    assert "resuming at step 3" in resumed.stdout
    assert len(resumed.stderr.strip().splitlines()) <= 3, resumed.stderr  # the fallback, the move, nothing else


def test_write_atomically_replaces_whole_files_with_ordinary_permissions(tmp_path):
    from resnet_identity.runs.files import write_atomically

    path = tmp_path / "record.json"
    write_atomically(str(path), "old")
    write_atomically(str(path), b"\x89PNG new")
    assert path.read_bytes() == b"\x89PNG new"
    assert os.listdir(tmp_path) == ["record.json"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
