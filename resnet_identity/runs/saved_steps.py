"""Reading what a run saved, without writing to it: its finalised steps, the one check of a
step's state against the digest record saved with it, and the read-only reader.

`Checkpointer.restore` (resume) and `read_saved` (evaluate, predict, convert --to,
init_from) go through the same `verify_saved`: a step whose digest record is missing or
damaged, in a run that saves records, is never used; the error says whether the record or
the data is damaged. How a missing record is noticed: see `_saves_digests`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from resnet_identity.runs import integrity, library_log
from resnet_identity.runs.files import as_path, is_local

STATE_ITEM = "state"
META_ITEM = "meta"
DIGEST_ITEM = "digests"
COMMIT_SUCCESS_FILE = "commit_success.txt"  # Orbax's marker of a finalised step on Cloud Storage
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"  # Orbax's record of a step, naming the items saved with it
DIGEST_FILE = "metadata"  # where `JsonCheckpointHandler` keeps the digest item's JSON


class CheckpointRestoreError(RuntimeError):
    """No checkpoint in the directory could be restored; the message says what to do."""


def finalized_steps(directory: epath.PathLike) -> list[int]:
    """The steps saved in `directory`, local or gs://, without starting a `CheckpointManager`.

    Orbax's default naming: locally a finalised step is a directory named by its number (one
    still being written has a temporary suffix); on Cloud Storage, where a directory cannot
    be renamed atomically, a step counts once its `COMMIT_SUCCESS_FILE` exists.
    """
    directory = as_path(directory)
    if not directory.is_dir():
        return []
    local = is_local(directory)
    return sorted(
        int(step.name)
        for step in directory.iterdir()
        if step.name.isdigit() and (step.is_dir() if local else (step / COMMIT_SUCCESS_FILE).exists())
    )


def _saves_digests(directory: epath.Path, step: int) -> bool:
    """Whether `step` was saved with a digest record, even if the record is gone now.

    Orbax's own step metadata lists the items saved with the step, so it says so whatever
    became of the record. Should that file be unreadable too, the run's other steps decide:
    a run whose other steps have records saves them with every step. (A lone step that lost
    both files cannot be told from one saved before digests existed.)
    """
    try:
        handlers = json.loads((directory / str(step) / STEP_METADATA_FILE).read_text())["item_handlers"]
        if isinstance(handlers, dict):
            return DIGEST_ITEM in handlers
    except Exception:  # missing, not JSON, or another shape: ask the other steps
        pass
    return any((directory / str(other) / DIGEST_ITEM).exists() for other in finalized_steps(directory) if other != step)


def _digest_record(directory: epath.Path, step: int) -> dict[str, Any] | None:
    """The digest record saved with `step` as read; None for a step saved before digests
    were. Raises `integrity.DigestRecordError` if the record is missing or not JSON."""
    path = directory / str(step) / DIGEST_ITEM / DIGEST_FILE
    if not path.exists():
        if not _saves_digests(directory, step):
            return None
        raise integrity.DigestRecordError(
            "its digest record is missing, though the step was saved with one, so its arrays cannot be verified"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # not UTF-8, or not JSON
        raise integrity.DigestRecordError(f"its digest record is damaged: it is not JSON ({e})") from None


def verify_saved(directory: epath.Path, step: int, state: Any, *, complete: bool = False) -> None:
    """The one check of a state read from `step` against the digests saved with it, for
    `Checkpointer.restore` and `read_saved` alike: raises `integrity.DigestRecordError`
    (the record is missing or damaged) or `integrity.DigestMismatchError` (the data is)."""
    record = _digest_record(directory, step)
    if record is not None:
        integrity.verify(state, record, complete=complete)


def read_saved(directory: epath.PathLike, step: int | None = None) -> tuple[dict[str, Any], int]:
    """Checkpoint `step` (None: the newest) of `directory`, read-only, as `(state, step)`: the
    state as saved (nested dicts of numpy arrays, in the saved layout), checked against the
    digests saved with it. Nothing is written, moved or awaited, and no lease is taken, so a
    run that is still training can be read (evaluation, prediction, export, fine-tuning).
    Raises `CheckpointRestoreError`: no checkpoint, no such step, or damaged data."""
    directory = as_path(directory)
    steps = finalized_steps(directory)
    if not steps:
        raise CheckpointRestoreError(f"{directory} holds no checkpoint yet.")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise CheckpointRestoreError(f"{directory} has no checkpoint at step {step}; it has steps {steps}.")
    with _without_orbax_notes(), library_log.suspended():
        state = _read_verified(directory, step, steps)
    return jax.tree.map(np.asarray, state), step


@contextlib.contextmanager
def _without_orbax_notes() -> Iterator[None]:
    """Drops Orbax's log records for the duration: a read-only read makes it note that it will
    not save, and name the items (`meta`) that are not read; none concerns the user."""
    logger = logging.getLogger("absl")

    def keep(record: logging.LogRecord) -> bool:
        return "orbax" not in record.pathname

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _read_verified(directory: epath.Path, step: int, steps: list[int]) -> Any:
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler()},
    )
    try:
        saved = manager.item_metadata(step)[STATE_ITEM]
        cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), getattr(saved, "tree", saved)
        )
        state = manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(target)}))
        state = state[STATE_ITEM]
        verify_saved(directory, step, state, complete=True)
    except Exception as e:  # Orbax/TensorStore raise ValueError, OSError or bare Exception.
        earlier = [s for s in steps if s < step]
        instead = (
            f" Read the previous checkpoint instead with --step={earlier[-1]} (init_from_step={earlier[-1]} for "
            f"init_from); the run has steps {steps}."
            if earlier
            else " The run has no earlier checkpoint."
        )
        raise CheckpointRestoreError(f"Checkpoint {step} in {directory} {why_unusable(e)}.{instead}") from e
    finally:
        manager.close()
    return state


def why_unusable(error: BaseException) -> str:
    """What is wrong with a step, completing "Checkpoint N in DIR ...": a failed digest
    check says whether the record or the data is damaged; anything else is unreadable."""
    if isinstance(error, integrity.DigestRecordError):
        return f"cannot be trusted: {error} (its arrays may be intact, but nothing can vouch for them)"
    if isinstance(error, integrity.DigestMismatchError):
        return f"cannot be trusted: {error}"
    return f"is unreadable ({describe(error)})"


def describe(error: BaseException) -> str:
    """`Type: message` of the innermost cause: TensorStore's outer message omits the file."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text[:300]}"
