"""`scripts/run_until_done.sh`, the retry loop of docs/tpu.md: it reruns a command that exits 75
(saved, to be resumed) and stops on any other status, or when it is itself signalled."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.train_commands import read_until

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "run_until_done.sh"


def _children(pid: int) -> list[int]:
    return [int(p) for p in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_statuses_other_than_75_end_the_loop_with_that_status(tmp_path):
    runs = tmp_path / "runs"
    # Exits 75 twice, then 0: three runs. The same command exiting 3 runs once.
    command = f"echo run >> {runs}; [ $(wc -l < {runs}) -ge 3 ] && exit 0; exit 75"
    done = subprocess.run([str(SCRIPT), "bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert (done.returncode, runs.read_text().count("run")) == (0, 3), done.stderr
    assert "starting run 3" in done.stderr and "run 3 exited with status 0" in done.stderr
    runs.unlink()
    done = subprocess.run([str(SCRIPT), "bash", "-c", f"echo run >> {runs}; exit 3"], capture_output=True, text=True)
    assert (done.returncode, runs.read_text().count("run")) == (3, 1), done.stderr
    assert subprocess.run([str(SCRIPT)], capture_output=True, text=True).returncode == 2


def test_a_signal_to_the_loop_reaches_the_command_and_stops_the_loop(tmp_path):
    # A command that saves on SIGTERM and exits 75, as train.py does; a SIGINT to the loop
    # (Ctrl-C) reaches it as SIGTERM, and the loop does not rerun it.
    runs = tmp_path / "runs"
    command = textwrap.dedent(f"""
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
        open({str(runs)!r}, "a").write("run\\n")
        print("running", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen(
        [str(SCRIPT), sys.executable, "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines: list[str] = []
        read_until(proc, "running", lines)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 75
    finally:
        proc.kill()
    assert "after SIGINT; stopping, not rerunning" in proc.stdout.read()
    assert runs.read_text() == "run\n"


@pytest.mark.slow
def test_train_py_stopped_by_a_real_sigterm_is_rerun_and_finishes(tmp_path):
    workdir = tmp_path / "run"
    train = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config=configs/quickstart.py",
        f"--workdir={workdir}",
        "--config.model_overrides.depth=8",
        "--config.batch_size=16",
        "--config.num_train_steps=100",
        "--config.schedule.boundaries=(80,)",
        "--config.log_every_steps=20",
        "--config.eval_every_steps=1000",
        "--config.checkpoint_every_steps=1000",
    ]
    proc = subprocess.Popen(
        [str(SCRIPT), *train],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        read_until(proc, "compiled the train step", lines)
        (trainer,) = _children(proc.pid)
        os.kill(trainer, signal.SIGTERM)  # as a preemption does; the loop itself is not signalled
        read_until(proc, "saved step", lines)
        read_until(proc, "starting run 2", lines)
        read_until(proc, "resuming at step", lines)
        lines.extend(proc.stdout)
        code = proc.wait(timeout=300)
    finally:
        proc.kill()
    output = "".join(lines)
    assert code == 0, output[-3000:]
    assert "run 2 exited with status 0; done" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert (workdir / "checkpoints" / "100").is_dir()
