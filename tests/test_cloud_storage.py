"""Cloud Storage (`runs/cloud_storage.py`, `runs/files.py`): a gs:// workdir, end to end,
against a real Cloud Storage emulator (tests/gcs_emulator.py).

The only client setting is `STORAGE_EMULATOR_HOST`, as a user would make it; the code
under test chooses gcsfs for epath and points TensorStore (Orbax's arrays) at the same
server. What the emulator cannot serve: TFDS reading TFRecords through tf.data, whose
Cloud Storage client has its endpoint compiled in (see docs/tpu.md).
"""

import json
import os
import random
import signal
import subprocess

import numpy as np
import pytest

from resnet_identity.runs import checkpointing
from resnet_identity.runs.files import append_text, as_path, write_atomically
from resnet_identity.runs.metric_logging import MetricLogger, read_metrics
from resnet_identity.training import config as config_lib
from resnet_identity.training import trainer
from tests.gcs_emulator import list_objects, read_object
from tests.test_trainer import _npz, _run_until_killed, _worker_cmd
from tests.train_worker import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_records_land_in_the_bucket_whole(gcs_bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a gs:// path mistaken for a local one would land
    run = f"{gcs_bucket}/run"
    write_atomically(f"{run}/record.json", "old")
    write_atomically(f"{run}/record.json", b"new")
    append_text(f"{run}/history.jsonl", "1\n")
    append_text(f"{run}/history.jsonl", "2\n")
    assert read_object(f"{run}/record.json") == b"new"
    assert read_object(f"{run}/history.jsonl") == b"1\n2\n"

    logger = MetricLogger(run, resumed_from=0)
    for step in (1, 2, 3):
        logger.write(step, "train", {"loss": step / 10})
    # No close(): each write is in the bucket when it returns, as a SIGKILL would leave it.
    resumed = MetricLogger(run, resumed_from=2)  # steps past 2 move to metrics.superseded.jsonl
    resumed.write(3, "train", {"loss": 0.5})
    resumed.close()
    lines = [json.loads(line) for line in read_object(f"{run}/metrics.jsonl").decode().splitlines()]
    assert [(r["step"], r["train/loss"]) for r in lines] == [(1, 0.1), (2, 0.2), (3, 0.5)]
    assert json.loads(read_object(f"{run}/metrics.superseded.jsonl"))["step"] == 3
    assert read_metrics(run)["train/loss"] == pytest.approx({1: 0.1, 2: 0.2, 3: 0.5})
    assert read_metrics(run)["resumed_from_step"] == {2: 2.0}
    events = [name for name in list_objects(run) if "tfevents" in name]
    assert len(events) == 2 and all(read_object(f"{gcs_bucket}/{name}") for name in events)
    assert not (tmp_path / "gs:").exists()


def test_a_corrupt_checkpoint_in_the_bucket_falls_back_to_the_previous_one(gcs_bucket, caplog):
    import jax.numpy as jnp

    directory = f"{gcs_bucket}/run/checkpoints"
    state = {"w": jnp.arange(64.0)}
    with checkpointing.Checkpointer(directory, every_steps=1, keep=3) as checkpointer:
        for step in (1, 2):
            checkpointer.maybe_save(step, {"w": state["w"] + step})
    assert checkpointing.finalized_steps(directory) == [1, 2]
    data = [name for name in list_objects(f"{directory}/2/state") if "/d/" in name]
    for name in data:  # every array chunk of step 2 cut in half, as a torn upload would leave it
        as_path(f"{gcs_bucket}/{name}").write_bytes(read_object(f"{gcs_bucket}/{name}")[:10])
    with checkpointing.Checkpointer(directory, every_steps=1, keep=3) as checkpointer:
        restored, step = checkpointer.restore({"w": jnp.zeros(64)})
    assert step == 1 and np.array_equal(restored["w"], np.arange(64.0) + 1)
    assert "step 2" in caplog.text and "unreadable" in caplog.text
    assert any(name.startswith("run/checkpoints/corrupt/2/") for name in list_objects(gcs_bucket))
    assert checkpointing.finalized_steps(directory) == [1]


def _env(cache_dir):
    # Compiled programs shared between the runs: each rerun skips most of its compile.
    return {
        **os.environ,
        "PYTHONPATH": ROOT,
        "PYTHONUNBUFFERED": "1",
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


@pytest.mark.slow
def test_a_run_on_gcs_killed_three_times_ends_bitwise_equal_to_a_local_one(gcs_bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, value in _env(tmp_path / "jax_cache").items():
        monkeypatch.setenv(key, value)
    steps, every = 10, "checkpoint_every_steps=2"
    run = f"{gcs_bucket}/run"
    reference = subprocess.run(
        _worker_cmd(tmp_path / "local", tmp_path / "local.npz", steps, every),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    cmd = _worker_cmd(run, tmp_path / "gcs.npz", steps, every)
    for kill_at in sorted(random.Random(0).sample(range(3, steps), 3)):
        code, output = _run_until_killed(cmd, kill_at, signal.SIGKILL)
        assert code == -signal.SIGKILL, output[-3000:]
    # The newest checkpoint damaged: the rerun must fall back to the one before it.
    newest = checkpointing.finalized_steps(f"{run}/checkpoints")[-1]
    for name in list_objects(f"{run}/checkpoints/{newest}/state"):
        if "/d/" in name:
            as_path(f"{gcs_bucket}/{name}").write_bytes(b"torn")
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"Checkpoint at step {newest}" in final.stderr and "unreadable" in final.stderr
    assert "resuming at step" in final.stdout

    local, remote = _npz(tmp_path / "local.npz"), _npz(tmp_path / "gcs.npz")
    assert local.keys() == remote.keys()
    for key in local:
        np.testing.assert_array_equal(local[key], remote[key], err_msg=key)
    names = list_objects(run)
    for record in ("config.json", "metrics.jsonl", "final_metrics.json"):
        assert f"run/{record}" in names
    assert any(name.startswith(f"run/checkpoints/corrupt/{newest}/") for name in names)
    assert json.loads(read_object(f"{run}/final_metrics.json"))["step"] == steps
    logged = [
        json.loads(line)["step"]
        for line in read_object(f"{run}/metrics.jsonl").decode().splitlines()
        if "train/loss" in line
    ]
    assert logged == list(range(1, steps + 1))
    # Every killed run's curves reached the bucket up to its last logged step: no step is
    # missing from the events, and no event object is empty.
    assert sorted(read_metrics(run)["train/loss"]) == list(range(1, steps + 1))
    assert all(read_object(f"{gcs_bucket}/{name}") for name in names if "tfevents" in name)
    assert not (tmp_path / "gs:").exists()

    changed = tiny_config(steps)
    changed.checkpoint_every_steps = 2
    changed.seed = 1
    with pytest.raises(config_lib.ConfigError, match="different config"):
        trainer.train_and_evaluate(changed, run)
    assert json.loads(read_object(f"{run}/config.json"))["seed"] == 0


def test_a_gs_data_dir_is_read_by_tfds_through_the_same_client(gcs_bucket):
    """TFDS finds, or misses, a dataset in a gs:// data_dir through epath. Its records are
    read by tf.data, whose Cloud Storage client cannot be pointed at an emulator: that last
    step is not tested here (docs/tpu.md)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from resnet_identity.data.tfds_access import DatasetNotPreparedError, prepared_builder

    data_dir = f"{gcs_bucket}/tensorflow_datasets"
    with pytest.raises(DatasetNotPreparedError, match=f"resnet_identity.prepare cifar10 --data_dir={data_dir}"):
        prepared_builder("cifar10", data_dir, download=False)
    builder = tfds.builder("cifar10", data_dir=data_dir)
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name="cifar10", split="train", filetype_suffix="tfrecord"
    )
    builder.info.set_splits(
        tfds.core.SplitDict(
            [tfds.core.SplitInfo(name="train", shard_lengths=[2], num_bytes=0, filename_template=template)]
        )
    )
    builder.info.write_to_directory(builder.data_dir)  # what `tfds build` leaves beside the records
    assert f"tensorflow_datasets/cifar10/{builder.version}/dataset_info.json" in "\n".join(list_objects(gcs_bucket))
    prepared = prepared_builder("cifar10", data_dir, download=False)
    assert prepared.info.splits["train"].num_examples == 2
