"""One writer per workdir (issue 18): real processes compete for a workdir's lease, on a
local disk and on a Cloud Storage emulator (tests/gcs_emulator.py)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from resnet_identity.runs import lease
from tests.gcs_emulator import list_objects, read_object
from tests.train_commands import quickstart_train_py, read_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(tmp_path, **extra):
    # Compiled programs shared between the runs: each later run skips most of its compile.
    return {
        **os.environ,
        "PYTHONPATH": ROOT,
        "PYTHONUNBUFFERED": "1",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        **extra,
    }


def _train_cmd(workdir, *overrides):
    return quickstart_train_py(
        workdir,
        "--config.num_train_steps=100000",
        "--config.log_every_steps=5",
        "--config.eval_every_steps=100000",
        "--config.checkpoint_every_steps=100000",
        *overrides,
    )


def _start(cmd, env):
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _refused(cmd, env, holder_pid):
    """Runs `cmd` to its end; asserts that it was refused at once, with one clear message."""
    started = time.perf_counter()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    output = second.stdout + second.stderr
    assert second.returncode == 1, output[-3000:]
    assert f"host {socket.gethostname()}, pid {holder_pid}, started " in output, output[-3000:]
    assert "choose another --workdir" in output and "Traceback" not in output
    assert "compiled" not in output and time.perf_counter() - started < 60
    return output


def _files(directory):
    return sorted(os.path.relpath(os.path.join(d, f), directory) for d, _, fs in os.walk(directory) for f in fs)


@pytest.mark.slow
def test_a_second_run_on_a_local_workdir_exits_at_once_and_a_killed_holder_blocks_nothing(tmp_path):
    workdir, env = tmp_path / "run", _env(tmp_path)
    first, lines = _start(_train_cmd(workdir), env), []
    try:
        read_until(first, "step 5/", lines)
        before = (_files(workdir), (workdir / "config.json").read_text())
        # The same workdir with another learning rate: the mix-up the issue saw in config.json.
        _refused(_train_cmd(workdir, "--config.schedule.learning_rate=0.05"), env, first.pid)
        assert (_files(workdir), (workdir / "config.json").read_text()) == before  # wrote nothing
        refused_at = len(lines)
        read_until(first, "/100000: loss", lines)  # the first run goes on
        first.send_signal(signal.SIGTERM)
        rest, _ = first.communicate(timeout=120)
        assert first.returncode == 75, "".join(lines) + rest
        assert "Traceback" not in "".join(lines[refused_at:]) + rest
    finally:
        first.kill()
    assert (workdir / lease.LEASE_FILE).read_text() == ""  # given back

    # A holder killed with SIGKILL leaves the file, but its lock died with it.
    killed, lines = _start(_train_cmd(workdir), env), []
    read_until(killed, "resuming at step", lines)
    killed.kill()
    killed.wait()
    assert json.loads((workdir / lease.LEASE_FILE).read_text())["pid"] == killed.pid
    rerun, lines = _start(_train_cmd(workdir), env), []
    try:
        read_until(rerun, "resuming at step", lines)
        assert "in use" not in "".join(lines)
    finally:
        rerun.kill()
        rerun.wait()


_HOLDER = textwrap.dedent("""
    import sys, time
    from resnet_identity.runs import lease
    with lease.hold(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


def _holder(workdir, env):
    proc, lines = _start([sys.executable, "-c", _HOLDER, workdir], env), []
    read_until(proc, "held", lines)
    return proc


def _lease_object(workdir):
    return json.loads(read_object(f"{workdir}/{lease.LEASE_FILE}"))


@pytest.mark.slow
def test_a_cloud_storage_lease_refuses_a_second_run_and_is_taken_over_once_its_holder_is_gone(gcs_bucket, tmp_path):
    workdir = f"{gcs_bucket}/run"
    env = _env(tmp_path, RESNET_IDENTITY_LEASE_HEARTBEAT_S="1")  # stale after 3 s
    holder = _holder(workdir, env)
    try:
        time.sleep(2.5)  # renewed at least once
        assert _lease_object(workdir)["pid"] == holder.pid and _lease_object(workdir)["renewed"]
        output = _refused(_train_cmd(workdir), env, holder.pid)
        assert "lease expires in" in output
        assert list_objects(workdir) == [f"run/{lease.LEASE_FILE}"]  # the refused run wrote nothing

        # A holder frozen (like a host cut off from the network, or a preempted VM) stops
        # renewing: a run started once a renewal is missed, before the lease is stale, waits
        # for it to go stale rather than being refused, then takes it over; woken up, the
        # old holder finds it lost.
        holder.send_signal(signal.SIGSTOP)
        time.sleep(2)
        taker = _holder(workdir, env)
        assert _lease_object(workdir)["pid"] == taker.pid
        holder.send_signal(signal.SIGCONT)
        time.sleep(2)
        assert _lease_object(workdir)["pid"] == taker.pid  # the old holder's renewal was refused
    finally:
        holder.kill()
        holder.wait()
    holder_output = holder.stdout.read()
    assert "taken over by another run" in holder_output, holder_output

    # A holder killed with SIGKILL on this machine is taken over at once, long before it is stale.
    taker.kill()
    taker.wait()
    assert _lease_object(workdir)["pid"] == taker.pid
    rerun = _holder(workdir, _env(tmp_path, RESNET_IDENTITY_LEASE_HEARTBEAT_S="600"))
    try:
        assert _lease_object(workdir)["pid"] == rerun.pid
    finally:
        rerun.send_signal(signal.SIGTERM)
        rerun.wait()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_gs_workdir_mistakes_get_one_line_each_within_seconds(gcs_emulator, tmp_path):
    """train.py against the real emulator (or a closed port, or no credentials at all): each
    mistake is one `error:` line naming what to fix, before anything is compiled or written."""
    closed = f"http://127.0.0.1:{_closed_port()}"
    no_credentials = {
        "HOME": str(tmp_path / "home"),  # no gcloud application-default credentials there
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "GCE_METADATA_HOST": f"127.0.0.1:{_closed_port()}",  # not on a Cloud VM
        "GCE_METADATA_IP": f"127.0.0.1:{_closed_port()}",
    }
    cases = {  # workdir, environment changes (None: unset), what the line must say
        "no bucket": ("gs://", {}, "names no bucket: write gs://BUCKET/PATH"),
        "empty bucket": ("gs:///run", {}, "names no bucket"),
        "bad name": ("gs://ab/run", {}, "'ab' is not a valid Cloud Storage bucket name"),
        "missing bucket": (
            "gs://no-such-bucket-here/run",
            {},
            "bucket gs://no-such-bucket-here does not exist (or this account cannot see it): create it "
            "(`gcloud storage buckets create gs://no-such-bucket-here`)",
        ),
        "emulator down": (
            "gs://some-bucket/run",
            {"STORAGE_EMULATOR_HOST": closed},
            f"Cannot reach the Cloud Storage emulator at {closed} (STORAGE_EMULATOR_HOST): Connection refused. "
            "Start it, or unset STORAGE_EMULATOR_HOST",
        ),
        "no credentials": (
            "gs://some-bucket/run",
            {"STORAGE_EMULATOR_HOST": None, "GOOGLE_APPLICATION_CREDENTIALS": None, **no_credentials},
            "No Google Cloud credentials found for a gs:// workdir. Set them with "
            "`gcloud auth application-default login`",
        ),
    }
    runs = {}
    for name, (workdir, changes, _) in cases.items():
        env = {k: v for k, v in {**_env(tmp_path), **changes}.items() if v is not None}
        cmd = _train_cmd(workdir)
        runs[name] = (
            time.perf_counter(),
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        )
    for name, (started, proc) in runs.items():
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        elapsed = time.perf_counter() - started
        assert proc.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, f"{name}: {err}"
        [line] = err.strip().splitlines() or [""]
        assert line.startswith("error: ") and cases[name][2] in line, f"{name}: {line}"
        assert "compiled" not in out and elapsed < 60, f"{name}: {elapsed:.0f} s"  # six at once on two cores
    assert not (tmp_path / "gs:").exists()
