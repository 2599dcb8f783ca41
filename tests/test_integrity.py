"""Checkpoints that prove their integrity (issue 18): a real bit flipped in a real
checkpoint's array data is caught, the step moved aside and the previous one restored."""

import logging
import os

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from resnet_identity import integrity, preemption, trainer
from resnet_identity.checkpointing import CORRUPT_SUBDIR, Checkpointer
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
    from resnet_identity import checkpointing, init_from
    from resnet_identity import weights as weights_lib

    trainer.train_and_evaluate(tiny_config(steps=2), str(tmp_path))
    state, step = checkpointing.read_saved(tmp_path / "checkpoints")
    assert step == 2 and set(weights_lib.COLLECTIONS) <= set(state)
    _flip_a_bit_in_the_array_data(tmp_path / "checkpoints" / "2")
    with pytest.raises(checkpointing.CheckpointRestoreError, match="Checkpoint 2 in .* is unreadable: .*damaged"):
        checkpointing.read_saved(tmp_path / "checkpoints")
    with pytest.raises(weights_lib.WeightsError, match="does not match the digest saved with it"):
        weights_lib.load_run_weights(tmp_path)
    with pytest.raises(init_from.InitFromError, match="does not match the digest saved with it"):
        init_from.read_run(str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == ["2"]
