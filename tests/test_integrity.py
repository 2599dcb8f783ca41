"""Checkpoints that prove their integrity: a real bit flipped in a real checkpoint's array
data is caught, the step moved aside and the previous one restored; a digest record that is
missing or damaged is told apart from damaged data, by the trainer's restore and the
read-only reader alike."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from resnet_identity.runs import checkpointing, integrity, preemption
from resnet_identity.runs.checkpointing import CORRUPT_SUBDIR, Checkpointer
from resnet_identity.training import trainer
from tests.train_worker import tiny_config


def _state(seed):
    rng = np.random.default_rng(seed)
    return {
        "kernel": jnp.asarray(rng.standard_normal((64, 64), np.float32)),
        "half": jnp.asarray(rng.standard_normal(300, np.float32), jnp.bfloat16),
        "count": jnp.asarray(rng.integers(0, 1000, 7), jnp.int32),
        "flag": jnp.asarray(True),
    }


def _flip_a_bit_in_the_array_data(step_dir):
    """Flips one bit in the middle of the largest TensorStore data file of the step's state
    (its array chunks, past any header)."""
    files = [
        os.path.join(d, f)
        for d, _, fs in os.walk(os.path.join(step_dir, "state"))
        if os.path.basename(d) == "d"
        for f in fs
    ]
    data_file = max(files, key=os.path.getsize)
    data = bytearray(open(data_file, "rb").read())
    data[len(data) // 2] ^= 0x08
    open(data_file, "wb").write(bytes(data))


@pytest.mark.parametrize("algorithm", sorted(integrity.ALGORITHMS))
def test_every_single_bit_flip_changes_the_digest(algorithm):
    state = _state(0)
    clean = integrity.digests(state, algorithm)
    assert clean["algorithm"] == algorithm
    assert set(clean["shards"]) == {"['kernel'][0:64,0:64]", "['half'][0:300]", "['count'][0:7]", "['flag'][]"}
    words = np.asarray(state["kernel"]).view(np.uint32).copy()
    for index, bit in [(0, 0), (17, 31), (4095, 13), (2000, 22)]:
        flipped = words.copy()
        flipped[np.unravel_index(index, flipped.shape)] ^= np.uint32(1 << bit)
        damaged = {**state, "kernel": jnp.asarray(flipped.view(np.float32))}
        with pytest.raises(integrity.DigestMismatchError, match=r"\['kernel'\]"):
            integrity.verify(damaged, clean)
    integrity.verify(state, clean)


def test_a_flipped_bit_is_quarantined_and_the_previous_step_restored(tmp_path, caplog):
    directory = tmp_path / "checkpoints"
    with Checkpointer(directory, every_steps=1, keep=3) as checkpointer:
        for step in (1, 2):
            checkpointer.maybe_save(step, _state(step))
    with Checkpointer(directory, every_steps=1, keep=3) as checkpointer:  # a clean checkpoint verifies
        restored, step = checkpointer.restore(_state(0))
    assert step == 2 and not caplog.records
    np.testing.assert_array_equal(restored["kernel"], _state(2)["kernel"])

    _flip_a_bit_in_the_array_data(directory / "2")
    # Orbax alone restores the damaged step without a word, with a wrong value in it.
    with ocp.StandardCheckpointer() as plain:
        damaged = plain.restore(directory / "2" / "state", _state(0))
    assert any(not np.array_equal(damaged[k], v) for k, v in _state(2).items())

    with caplog.at_level(logging.WARNING), Checkpointer(directory, every_steps=1, keep=3) as checkpointer:
        restored, step = checkpointer.restore(_state(0))
    assert step == 1
    for key, value in _state(1).items():
        np.testing.assert_array_equal(restored[key], value)
    assert "step 2" in caplog.text and "does not match the digest saved with it" in caplog.text
    assert os.listdir(directory / CORRUPT_SUBDIR) == ["2"]


@pytest.mark.slow
def test_a_run_resumes_from_the_step_before_a_damaged_one(tmp_path, monkeypatch, caplog, capsys):
    config = tiny_config(steps=3)
    config.checkpoint_every_steps = 1
    with monkeypatch.context() as m:
        m.setattr(preemption.PreemptionWatcher, "should_stop", lambda self, step: step == 2)
        assert trainer.train_and_evaluate(config, str(tmp_path))["preempted_at_step"] == 2
    _flip_a_bit_in_the_array_data(tmp_path / "checkpoints" / "2")
    with caplog.at_level(logging.WARNING):
        result = trainer.train_and_evaluate(config, str(tmp_path), return_state=True)
    assert result["step"] == 3
    assert "Checkpoint at step 2" in caplog.text and "digest" in caplog.text
    assert os.listdir(tmp_path / "checkpoints" / CORRUPT_SUBDIR) == ["2"]
    assert "resuming at step 1" in capsys.readouterr().out


def test_read_only_readers_refuse_a_damaged_checkpoint_and_change_nothing(tmp_path):
    """evaluate, predict, convert --to and init_from read a run's checkpoint without
    restoring it into a trainer: they check the same digests, and refuse rather than use
    damaged weights; the damaged step stays where it is (they never write)."""
    from resnet_identity.training import init_from
    from resnet_identity.training import weights as weights_lib

    trainer.train_and_evaluate(tiny_config(steps=2), str(tmp_path))
    state, step = checkpointing.read_saved(tmp_path / "checkpoints")
    assert step == 2 and set(weights_lib.COLLECTIONS) <= set(state)
    _flip_a_bit_in_the_array_data(tmp_path / "checkpoints" / "2")
    with pytest.raises(
        checkpointing.CheckpointRestoreError,
        match=r"Checkpoint 2 in .* cannot be trusted: .*its data is damaged \(the digest record itself is intact\)",
    ):
        checkpointing.read_saved(tmp_path / "checkpoints")
    with pytest.raises(weights_lib.WeightsError, match="does not match the digest saved with it"):
        weights_lib.load_run_weights(tmp_path)
    with pytest.raises(init_from.InitFromError, match="does not match the digest saved with it"):
        init_from.read_run(str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == ["2"]


def _record_path(step_dir):
    return step_dir / checkpointing.DIGEST_ITEM / "metadata"


def _edit_record(step_dir, edit):
    path = _record_path(step_dir)
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def _rename_kernel(record):
    key = next(k for k in record["shards"] if k.startswith("['kernel']"))
    record["shards"][key.replace("['kernel']", "['kernal']")] = record["shards"].pop(key)


def _change_a_hex_digit(record):
    key = sorted(record["shards"])[0]
    digest = record["shards"][key]
    record["shards"][key] = ("1" if digest[0] != "1" else "2") + digest[1:]


def _unknown_algorithm_sealed(record):
    """`crc33` with a checksum that matches it: as a newer version might write."""
    record["algorithm"] = "crc33"
    record[integrity.RECORD_CHECKSUM] = integrity._record_checksum("crc33", record["shards"])


# How a step's record is damaged, and what the error must say (all on real saved steps).
RECORD_DAMAGE = {
    "deleted_and_data_flipped": (
        lambda step_dir: (shutil.rmtree(step_dir / checkpointing.DIGEST_ITEM), _flip_a_bit_in_the_array_data(step_dir)),
        "digest record is missing, though the step was saved with one",
    ),
    "deleted_with_orbax_step_metadata": (
        lambda step_dir: (
            shutil.rmtree(step_dir / checkpointing.DIGEST_ITEM),
            (step_dir / "_CHECKPOINT_METADATA").unlink(),
        ),
        "digest record is missing",  # the other steps' records say the run saves them
    ),
    "key_renamed": (lambda d: _edit_record(d, _rename_kernel), "digest record is damaged: the record's own"),
    "key_renamed_unsealed": (
        lambda d: _edit_record(d, lambda r: (r.pop(integrity.RECORD_CHECKSUM), _rename_kernel(r))),
        r"digest record is damaged: it names 1 array\(s\) the state lacks, the first \['kernal'\]",
    ),
    "field_renamed": (
        lambda d: _edit_record(d, lambda r: r.update(shardz=r.pop("shards"))),
        r"digest record is damaged: unknown field\(s\) \['shardz'\]",
    ),
    "hex_digit_changed": (lambda d: _edit_record(d, _change_a_hex_digit), "record's own checksum is"),
    "algorithm_crc33": (lambda d: _edit_record(d, lambda r: r.update(algorithm="crc33")), "record's own checksum"),
    "algorithm_crc33_sealed": (
        lambda d: _edit_record(d, _unknown_algorithm_sealed),
        "names the algorithm 'crc33', which this version does not know",
    ),
    "not_utf8": (
        lambda d: _record_path(d).write_bytes(b'{"algorithm": "\xff'),
        "digest record is damaged: it is not JSON",
    ),
}


@pytest.mark.parametrize("damage", sorted(RECORD_DAMAGE))
def test_a_damaged_digest_record_is_named_and_the_previous_verified_step_used(tmp_path, caplog, damage):
    directory = tmp_path / "checkpoints"
    with Checkpointer(directory, every_steps=1, keep=3) as checkpointer:
        for step in (1, 2):
            checkpointer.maybe_save(step, _state(step))
    damage_step, says = RECORD_DAMAGE[damage]
    damage_step(directory / "2")

    with pytest.raises(checkpointing.CheckpointRestoreError) as refused:
        checkpointing.read_saved(directory)
    message = str(refused.value)
    assert message.startswith(f"Checkpoint 2 in {directory} cannot be trusted: its ")
    assert re.search(says, message), message
    assert "--step=1" in message and len(message.splitlines()) == 1
    state, step = checkpointing.read_saved(directory, 1)  # the suggested step reads
    assert step == 1 and np.array_equal(state["kernel"], _state(1)["kernel"])

    with caplog.at_level(logging.WARNING), Checkpointer(directory, every_steps=1, keep=3) as checkpointer:
        restored, step = checkpointer.restore(_state(0))
    assert step == 1
    for key, value in _state(1).items():
        np.testing.assert_array_equal(restored[key], value)
    assert f"Checkpoint at step 2 in {directory} cannot be trusted: its " in caplog.text
    assert re.search(says, caplog.text) and "trying the previous one" in caplog.text
    assert os.listdir(directory / CORRUPT_SUBDIR) == ["2"]


def test_a_step_saved_before_digest_records_restores_unchecked(tmp_path, caplog):
    """A step whose Orbax metadata lists no digest item (an older version's), in a directory
    of such steps, restores as it always did."""
    directory = tmp_path / "checkpoints"
    with Checkpointer(directory, every_steps=1, keep=3) as checkpointer:
        checkpointer.maybe_save(1, _state(1))
    shutil.rmtree(directory / "1" / checkpointing.DIGEST_ITEM)
    metadata = json.loads((directory / "1" / "_CHECKPOINT_METADATA").read_text())
    del metadata["item_handlers"][checkpointing.DIGEST_ITEM]
    (directory / "1" / "_CHECKPOINT_METADATA").write_text(json.dumps(metadata))
    assert checkpointing.read_saved(directory)[1] == 1
    with caplog.at_level(logging.WARNING), Checkpointer(directory, every_steps=1, keep=3) as checkpointer:
        assert checkpointer.restore(_state(0))[1] == 1
    assert not caplog.records


@pytest.mark.slow
def test_a_missing_record_and_a_flipped_bit_are_refused_by_evaluate_and_skipped_by_resume(tmp_path):
    """The tester's case, through the real commands: the newest step's record deleted and a
    bit of its data flipped. `evaluate` refuses it with one line suggesting --step;
    `train.py` resumes from the step before, saying why."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    train = [
        sys.executable,
        os.path.join(root, "train.py"),
        f"--config={os.path.join(root, 'configs', 'quickstart.py')}:smoke",  # 6 steps
        f"--workdir={tmp_path}",
        "--config.model_overrides.depth=8",
        "--config.checkpoint_every_steps=3",
        "--config.eval_every_steps=1000",
    ]
    first = subprocess.run(train, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    step_dir = tmp_path / "checkpoints" / "6"
    shutil.rmtree(step_dir / checkpointing.DIGEST_ITEM)
    _flip_a_bit_in_the_array_data(step_dir)

    evaluate = [
        sys.executable,
        "-m",
        "resnet_identity.evaluate",
        f"--workdir={tmp_path}",
        f"--config={os.path.join(root, 'configs', 'quickstart.py')}",
    ]
    refused = subprocess.run(evaluate, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: ") and "digest record is missing" in line and "--step=3" in line

    resumed = subprocess.run(train, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert "Checkpoint at step 6" in resumed.stderr and "digest record is missing" in resumed.stderr
    assert "resuming at step 3" in resumed.stdout
    assert os.listdir(tmp_path / "checkpoints" / CORRUPT_SUBDIR) == ["6"]
