"""Reading what a run saved without writing to it (`runs/saved_steps.py`): its finalised steps,
the read-only reader that evaluate, predict, convert --to and init_from share, and what an
unusable step is said to be (the reader given a damaged step: test_integrity.py)."""

import pytest

from resnet_identity.runs import integrity, saved_steps
from resnet_identity.runs.saved_steps import CheckpointRestoreError


def test_the_reader_names_a_missing_run_or_step_and_counts_only_finalised_steps(tmp_path):
    with pytest.raises(CheckpointRestoreError, match="absent holds no checkpoint yet"):
        saved_steps.read_saved(tmp_path / "absent")
    (tmp_path / "3").mkdir()
    (tmp_path / "5.orbax-checkpoint-tmp").mkdir()  # a save killed mid-write
    (tmp_path / "corrupt").mkdir()
    assert saved_steps.finalized_steps(tmp_path) == [3]
    with pytest.raises(CheckpointRestoreError, match=r"has no checkpoint at step 5; it has steps \[3\]"):
        saved_steps.read_saved(tmp_path, 5)


def test_an_unusable_step_is_said_to_be_damaged_data_a_damaged_record_or_unreadable():
    try:
        try:
            raise OSError("No such file or directory: .../d/0a1b\nsecond line")
        except OSError as inner:
            raise ValueError("NOT_FOUND: error reading array") from inner
    except ValueError as outer:
        error = outer
    assert saved_steps.describe(error) == "OSError: No such file or directory: .../d/0a1b"
    assert saved_steps.why_unusable(error) == "is unreadable (OSError: No such file or directory: .../d/0a1b)"
    assert saved_steps.why_unusable(integrity.DigestMismatchError("params/fc/kernel differs")) == (
        "cannot be trusted: params/fc/kernel differs"
    )
    assert saved_steps.why_unusable(integrity.DigestRecordError("the record is torn")).startswith(
        "cannot be trusted: the record is torn (its arrays may be intact"
    )
