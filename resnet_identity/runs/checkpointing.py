"""Checkpoints that survive preemption, interrupted writes and corrupt files.

`Checkpointer` wraps one Orbax `CheckpointManager` (orbax-checkpoint 0.12.x) whose policies
decide when to save and what to keep: `FixedIntervalPolicy(every_steps)` to save (asked
through `should_save`; `preemption.PreemptionWatcher` handles preemption), `LatestN(keep)` to
keep. Each step directory
holds three items: `state` (the `TrainState`, `StandardSave`), `meta` (a small JSON) and
`digests` (a JSON of the digest of every array shard, `integrity.py`).

Why a checkpoint is never half-taken, as Orbax 0.12.8 does it on local and NFS disks:
- a save writes into `<dir>/<step>.orbax-checkpoint-tmp`, writes `commit_success.txt`
  there, then renames it to `<dir>/<step>`; a step counts only once renamed, so a save
  killed mid-write is invisible to `latest_step`/`restore` (on GCS, where rename is not
  atomic, the step counts only once `commit_success.txt` exists);
- `cleanup_tmp_directories=True` deletes such leftovers when the next run starts;
- old steps are deleted only after the newer save has been renamed into place, so a
  failed or killed save never costs a good checkpoint.
An unwritable, read-only or full workdir, a file over `ulimit -f`, or any other failure of a
save raises `CheckpointWriteError` saying what to do; Orbax's own tracebacks of it go to
`<dir>/library.log` (`library_log`). On Cloud Storage an outage is waited out for
`storage_retry_s`, then raises `cloud_storage.StorageUnavailableError` (`checkpoint_outage`).

What Orbax does not do is notice a finalised checkpoint whose files were later damaged (a
truncated or deleted file); it then fails inside `restore`. `Checkpointer.restore` tries the
steps newest first, logs a warning naming each unreadable step and the error, and returns
the newest one that restores. A state whose arrays differ from their saved digests (bit
rot, which TensorStore's chunks do not detect) counts as unreadable, and so does one whose
digest record is missing or damaged (`saved_steps.verify_saved`, shared with the read-only
`read_saved`). Unreadable steps are moved, not deleted, to `<dir>/corrupt/<step>`: left in
place, a bad step `N` would stay `latest_step()`, and Orbax would refuse to save any step up
to `N` again, leaving the resumed run unprotected.

A checkpoint written by the same model under other `scan`/`remat` values holds the same
numbers in another layout (`models/stack.py`). With `relayout`, `restore` reads such a step
in the layout it was saved in (from its tree metadata) and converts it, so these execution
choices can change on resume.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from resnet_identity.runs import checkpoint_outage, cloud_storage, integrity, library_log, saved_steps
from resnet_identity.runs.files import WriteError, as_path, explain_write_errors, is_local, move_directory

# Part of this module's interface, kept in `saved_steps` with the read-only reader.
from resnet_identity.runs.saved_steps import DIGEST_ITEM, META_ITEM, STATE_ITEM, describe, why_unusable
from resnet_identity.runs.saved_steps import CheckpointRestoreError as CheckpointRestoreError
from resnet_identity.runs.saved_steps import finalized_steps as finalized_steps
from resnet_identity.runs.saved_steps import read_saved as read_saved

CORRUPT_SUBDIR = "corrupt"
LIBRARY_LOG = "library.log"  # Orbax's and asyncio's reports of a failed write (`library_log`)

log = logging.getLogger(__name__)
policies = ocp.checkpoint_managers


class CheckpointWriteError(WriteError):
    """The checkpoint directory cannot be written (permissions, full disk, bad path)."""


class CheckpointLayoutError(CheckpointRestoreError):
    """A readable checkpoint whose state cannot be converted to the target's layout."""


@contextlib.contextmanager
def _explain_write_errors(what: str, manager: ocp.CheckpointManager | None = None) -> Iterator[None]:
    try:
        with explain_write_errors(what, CheckpointWriteError):
            yield
    except Exception as e:
        # A failed save has already dropped the older steps it meant to replace from
        # Orbax's in-memory list, though they are still on disk: list them again. Not after
        # an outage that outlasted storage_retry_s: the listing would only meet the clients'
        # own retries (about 30 s) before the run stops with exit status 75.
        if manager is not None and not isinstance(e, cloud_storage.StorageUnavailableError):
            with contextlib.suppress(Exception):
                manager.reload()
        raise


def _agree_all(ok: bool) -> bool:
    """True only if `ok` on every process, so that hosts never take different branches."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


class Checkpointer:
    """Saves every `every_steps` steps (and when forced), keeps the newest `keep` steps.

    `maybe_save` returns as soon as the arrays are copied off the accelerator when
    `async_save`; call `wait()` (or `close()`) before exiting so the last write completes.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        every_steps: int,
        keep: int,
        async_save: bool = True,
        storage_retry_s: float = 300.0,
    ):
        if every_steps < 1 or keep < 1:
            raise ValueError(f"every_steps={every_steps} and keep={keep} must both be >= 1.")
        directory = os.fspath(directory)
        self.directory = os.path.abspath(directory) if is_local(directory) else directory
        self._options = ocp.CheckpointManagerOptions(
            save_decision_policy=policies.FixedIntervalPolicy(every_steps),
            preservation_policy=policies.LatestN(keep),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._in_flight: int | None = None  # the step whose asynchronous write may still be running
        self._pending: tuple[int, Any] | None = None  # that step and its save's arguments, to redo after an outage
        self._library_log = os.path.join(self.directory, LIBRARY_LOG) if is_local(self.directory) else None
        self._outage = None if is_local(self.directory) else cloud_storage.Outage(self.directory, storage_retry_s)
        self._failed = False  # whether a CheckpointWriteError has been raised
        self._storage_lost = False  # whether Cloud Storage stayed away: the manager's write is abandoned
        with _explain_write_errors(f"checkpoints to {self.directory}"):
            if as_path(self.directory).exists() and not as_path(self.directory).is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", self.directory)
            self._manager = self._new_manager()
            self._check_writable()
        library_log.divert_to(self._library_log)

    def _new_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=self._options,
            # Handlers named up front, so that a new manager can read a step's metadata
            # (`item_metadata`) before it has saved or restored anything.
            item_handlers={
                STATE_ITEM: ocp.StandardCheckpointHandler(),
                META_ITEM: ocp.JsonCheckpointHandler(),
                DIGEST_ITEM: ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """The newest finalised step (including one whose async write is still running)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether the save policy asks for `step` (and it is not saved yet)."""
        return step not in self._manager.all_steps() and self._manager.should_save(step)

    def maybe_save(
        self, step: int, state: Any, *, force: bool = False, metadata: Mapping[str, Any] | None = None
    ) -> bool:
        """Saves `state` as `step` if the policies say so (or `force`); returns whether it did.

        A step that already exists is never rewritten (the trainer may ask twice for the same
        step: once on schedule, once on preemption). `metadata` must be JSON-serialisable;
        it is stored next to the state with the step.
        """
        if step in self._manager.all_steps() or not (force or self._manager.should_save(step)):
            return False
        args = ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardSave(state),
                META_ITEM: ocp.args.JsonSave({"step": int(step), **(metadata or {})}),
                # On the device, before the step's donated buffers are reused; Orbax writes the
                # JSON from process 0, whose shards cover the trainer's replicated state.
                DIGEST_ITEM: ocp.args.JsonSave(integrity.digests(state)),
            }
        )
        self.wait()  # Orbax would wait too; here a failure of that save names its own step
        with self._writing(step):
            self._check_writable()
            self._check_space(state, step)
            saved = self._save(step, args)
        self._in_flight = step if saved else None
        self._pending = (step, args) if saved else None
        return saved

    def _save(self, step: int, args: Any) -> bool:
        """Starts the save; on Cloud Storage, an outage is waited out (`cloud_storage.Outage`)
        and the save started again on a new manager (Orbax's is left waiting on the failed write)."""
        try:
            return self._manager.save(step, args=args, force=True)
        except Exception as e:
            if self._outage is None or not cloud_storage.is_outage(e):
                raise
            self._outage.wait(f"saving checkpoint {step}", e)
            checkpoint_outage.release_abandoned_threads()
            self._manager = self._new_manager()
            return self._manager.save(step, args=args, force=True)

    def _finish_remote(self, step: int | None, pending: tuple[int, Any] | None) -> None:
        """Waits for the save of `step` on Cloud Storage; after an outage it is written again if
        its arrays still exist (the trainer's last save), or else left to the next save."""
        try:
            checkpoint_outage.wait_while_storage_answers(self._manager, self._outage, step)
            return
        except Exception as e:
            if not cloud_storage.is_outage(e):
                raise
            self._outage.wait(f"writing checkpoint {step}", e)
        checkpoint_outage.release_abandoned_threads()
        self._manager = self._new_manager()  # the old one would wait on the failed write
        if step in finalized_steps(self.directory):
            return  # its last object was written before storage went away
        alive = pending is not None and not any(
            getattr(leaf, "is_deleted", lambda: False)() for leaf in jax.tree.leaves(pending[1])
        )
        if not alive:
            log.warning(
                "Checkpoint %s was not written while Cloud Storage was away; the next save writes a newer step.", step
            )
            return
        log.warning("Checkpoint %d was not written while Cloud Storage was away; writing it again.", step)
        self._manager.save(pending[0], args=pending[1], force=True)
        checkpoint_outage.wait_while_storage_answers(self._manager, self._outage, step)

    def _check_writable(self) -> None:
        # Fail fast: when an async save cannot create its step directory, Orbax 0.12.8 raises
        # but leaves threads waiting ~5 minutes for that directory before the process can exit.
        if is_local(self.directory):
            os.rmdir(tempfile.mkdtemp(prefix=".write-probe-", dir=self.directory))

    def _check_space(self, state: Any, step: int) -> None:
        """Refuses, at `step` itself, a save the local disk has no room for: a write that
        fails midway is only noticed later, after pages of Orbax tracebacks. At least the
        state's raw size must be free (Orbax stores arrays uncompressed)."""
        if not is_local(self.directory):
            return
        needed = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(state))
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise OSError(
                errno.ENOSPC,
                f"No space left on device: checkpoint {step} needs "
                f"{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free",
            )

    @contextlib.contextmanager
    def _writing(self, step: int | None) -> Iterator[None]:
        """Any failure inside raises `CheckpointWriteError`, naming `step` if given: a known
        cause (`files.write_problem`) with what to do, any other with its first line. The
        libraries' own reports of it are in `LIBRARY_LOG` (`library_log`), not on the console."""
        what = f"checkpoint {step} to {self.directory}" if step is not None else f"checkpoints to {self.directory}"
        try:
            with _explain_write_errors(what, self._manager):
                yield
        except CheckpointWriteError:
            self._failed = True
            raise
        except cloud_storage.StorageUnavailableError:
            self._failed = self._storage_lost = True
            checkpoint_outage.release_abandoned_threads()
            raise
        except Exception as e:
            self._failed = True
            details = f"; the libraries' reports are in {self._library_log}" if self._library_log else ""
            raise CheckpointWriteError(
                f"Cannot write {what} ({describe(e)}). The last complete checkpoint is intact and a rerun resumes "
                f"from it{details}."
            ) from e

    def restore(
        self, target_state: Any, *, relayout: Callable[[Any, Any], Any] | None = None
    ) -> tuple[Any, int] | None:
        """The newest readable checkpoint as `(state, step)`, or None if there is none.

        `target_state` fixes structure, dtypes and shardings: a concrete `TrainState` (e.g.
        from `create_train_state`) or its `jax.eval_shape`, ideally with `sharding` set.
        A step saved with another tree (the same model under other `scan`/`remat` values) is
        read in its own layout and converted with `relayout(state, like)`, which must return
        `state` rearranged into the layout of `like` (a state or a checkpoint's tree
        metadata; `train_state.convert_layout`). With `relayout`, every leaf of
        `target_state` must carry one and the same sharding (the trainer replicates the
        state), which the converted state takes; a step that cannot be converted raises
        `CheckpointLayoutError` at once. Without `relayout`, such a step fails to restore.
        Unreadable newer steps are logged and moved to `<dir>/corrupt/`. If no step can be
        restored, raises CheckpointRestoreError listing why (often a changed model or optimiser
        config).
        """
        self.wait()
        self._manager.reload()
        abstract = jax.tree.map(ocp.tree.to_shape_dtype_struct, target_state)
        shardings = {getattr(leaf, "sharding", None) for leaf in jax.tree.leaves(abstract)}
        if relayout is not None and (len(shardings) != 1 or None in shardings):
            raise ValueError(
                "restore(relayout=...) needs a target state with one sharding set on every leaf, "
                f"got {sorted(map(str, shardings))}."
            )
        failures: list[tuple[int, Exception]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._restore_step(step, abstract, relayout)
                error = None
            except CheckpointLayoutError:
                raise
            except Exception as e:  # Orbax/TensorStore raise ValueError, OSError or bare Exception.
                restored, error = None, e
            if not _agree_all(error is None):
                error = error or RuntimeError("another process could not read this checkpoint")
                log.warning(
                    "Checkpoint at step %d in %s %s; trying the previous one.",
                    step,
                    self.directory,
                    why_unusable(error),
                )
                failures.append((step, error))
                continue
            for bad_step, _ in failures:
                self._quarantine(bad_step)
            return restored, step
        if failures:
            reasons = "; ".join(f"step {s}: {describe(e)}" for s, e in failures)
            raise CheckpointRestoreError(
                f"No checkpoint in {self.directory} could be restored ({reasons}). If every step "
                "fails the same way, the model or optimiser config probably differs from the run "
                "that wrote them (only the parameter layout, model_overrides.scan, .remat and "
                ".unroll, may change on resume); otherwise move the directory aside to start afresh."
            )
        return None

    def _restore_step(self, step: int, abstract: Any, relayout: Callable[[Any, Any], Any] | None) -> Any:
        """One step restored into `abstract`, through its saved layout if that differs. A
        failure to convert raises `CheckpointLayoutError`: the step is not unreadable, the
        model differs, so `restore` must not fall back to an older step and move this one."""

        def restore(target: Any) -> Any:
            args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(target)})
            state = self._manager.restore(step, args=args)[STATE_ITEM]
            saved_steps.verify_saved(as_path(self.directory), step, state)  # before a relayout changes the arrays
            return state

        if relayout is None:
            return restore(abstract)
        try:
            saved = self._manager.item_metadata(step)[STATE_ITEM]
        except Exception:  # no readable tree metadata: nothing to convert from, restore as is
            saved = None
        if saved is None or _shapes_by_path(saved) == _shapes_by_path(abstract):
            return restore(abstract)
        sharding = jax.tree.leaves(abstract)[0].sharding
        try:
            saved_layout = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                jax.eval_shape(lambda state: relayout(state, saved), abstract),
            )
        except Exception as e:
            raise CheckpointLayoutError(
                f"Checkpoint {step} in {self.directory} holds another model's state, not only another layout "
                f"({describe(e)}): beyond model_overrides.scan, .remat and .unroll, the model or optimiser differs "
                "from the run that wrote it. Resume with that run's config, or use a new workdir."
            ) from e
        state = jax.jit(lambda s: relayout(s, abstract), out_shardings=sharding)(restore(saved_layout))
        if jax.process_index() == 0:
            log.warning(
                "Checkpoint at step %d in %s was saved in another parameter layout (model_overrides.scan or "
                ".remat differed); converted it to this model's.",
                step,
                self.directory,
            )
        return state

    def metadata(self, step: int) -> dict[str, Any]:
        """The JSON stored with `step` by `maybe_save`; {} with a warning if it is missing or
        unreadable. It only annotates the step, so a damaged one must not cost the state."""
        try:
            return dict(
                self._manager.restore(step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))[META_ITEM]
            )
        except Exception as e:  # Orbax raises FileNotFoundError, JSONDecodeError, ValueError...
            log.warning(
                "The metadata beside checkpoint %d in %s is unreadable (%s); its state is intact and "
                "is used without it.",
                step,
                self.directory,
                describe(e),
            )
            return {}

    def _quarantine(self, step: int) -> None:
        # Default Orbax step naming: the step directory is just the number. `corrupt` does not
        # parse as a step, so Orbax neither lists nor garbage-collects what is moved there.
        source = as_path(self.directory) / str(step)
        target = as_path(self.directory) / CORRUPT_SUBDIR / str(step)
        if jax.process_index() == 0 and source.exists():
            if target.exists():
                target = target.parent / f"{step}.{time.strftime('%Y%m%d-%H%M%S')}"
            move_directory(source, target)
            log.warning("Moved checkpoint step %d to %s for inspection; it is not deleted.", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpointing_quarantine_{step}")
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until any asynchronous save has been written and renamed into place; one
        that failed raises `CheckpointWriteError` naming its step. Once such an error has
        been raised, `wait` and `close` raise no more: the user reads the first one only."""
        step, self._in_flight = self._in_flight, None
        pending, self._pending = self._pending, None
        if self._storage_lost:
            return
        with contextlib.suppress(Exception) if self._failed else self._writing(step):
            if self._outage is None:
                self._manager.wait_until_finished()
            else:
                self._finish_remote(step, pending)

    def close(self) -> None:
        self.wait()
        if self._storage_lost:
            return  # closing would wait on the abandoned write's threads
        with contextlib.suppress(Exception) if self._failed else self._writing(None):
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _shapes_by_path(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    """The shapes of `tree`'s leaves by their paths, named whatever kind of node holds them,
    so that a `TrainState` and the dicts and lists of a checkpoint's metadata compare equal
    (layouts "block" and "nested" differ in shapes only)."""

    def name(key: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    return {
        tuple(name(k) for k in path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
