"""Devices, meshes and processes (`training/parallel.py`): a run sharded over 8 devices or
split over 2 processes ends where one device ends, and `jax.distributed` starts when the
flag or the environment says so."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "train_worker.py")


def _run_worker(workdir, out, *extra, env=None, timeout=600):
    cmd = [sys.executable, WORKER, str(workdir), str(out), *extra]
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def _load_npz(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path):
    """Same global batch and BN groups of 2: sharding over 8 devices changes nothing but rounding."""
    one = _run_worker(tmp_path / "one", tmp_path / "one.npz")
    eight = _run_worker(
        tmp_path / "eight", tmp_path / "eight.npz", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert eight.returncode == 0, eight.stderr[-3000:]
    assert "8 device(s)" in eight.stdout and "1 device(s)" in one.stdout
    a, b = _load_npz(tmp_path / "one.npz"), _load_npz(tmp_path / "eight.npz")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=2e-4, atol=2e-5, err_msg=key)
    loss = lambda out: [json.loads(line)["train/loss"] for line in open(out / "metrics.jsonl") if "train/loss" in line]
    np.testing.assert_allclose(loss(tmp_path / "one"), loss(tmp_path / "eight"), rtol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree(tmp_path):
    """Two local processes joined by jax.distributed train three steps on one global batch."""
    port = str(_free_port())
    procs = []
    for pid in range(2):
        cmd = [
            sys.executable,
            WORKER,
            str(tmp_path / "multi"),
            str(tmp_path / f"p{pid}.npz"),
            "--process_id",
            str(pid),
            "--num_processes",
            "2",
            "--port",
            port,
        ]
        procs.append(
            subprocess.Popen(
                cmd, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n\n".join(
        f"process {i} exited {p.returncode}:\n{err[-2500:]}" for i, (p, (_, err)) in enumerate(zip(procs, outputs))
    )
    assert "2 device(s)" in outputs[0][0]
    single = _run_worker(tmp_path / "single", tmp_path / "single.npz")
    assert single.returncode == 0, single.stderr[-3000:]
    p0, p1, ref = (_load_npz(tmp_path / f) for f in ("p0.npz", "p1.npz", "single.npz"))
    for key in p0:
        np.testing.assert_array_equal(p0[key], p1[key], err_msg=key)  # replicated: bitwise equal
        np.testing.assert_allclose(p0[key], ref[key], rtol=2e-4, atol=2e-5, err_msg=key)


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, False),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"SLURM_NTASKS": "4"}, True),
        ({"SLURM_NTASKS": "1"}, False),  # a one-task SLURM job is single-process
        ({"TPU_WORKER_HOSTNAMES": "a,b", "SLURM_NTASKS": "1"}, False),
    ],
)
def test_multi_host_environments_start_jax_distributed(monkeypatch, env, expected):
    import jax

    from resnet_identity.training import parallel

    for key in parallel._MULTIHOST_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda: calls.append("init"))
    assert parallel.maybe_initialize_distributed(None) is expected  # no --distributed flag: the environment decides
    assert calls == (["init"] if expected else [])
    assert parallel.maybe_initialize_distributed(False) is False  # --nodistributed: never, whatever the environment
    assert calls == (["init"] if expected else [])
    assert parallel.maybe_initialize_distributed(True) and calls[-1:] == ["init"]
