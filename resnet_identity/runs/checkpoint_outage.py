"""A checkpoint write on Cloud Storage that meets an outage (`cloud_storage.Outage`).

TensorStore and gcsfs retry a request for many minutes, and Orbax 0.12.8's threads of a
failed asynchronous save wait 5 minutes for signals that the failed step never sends, holding
the process's exit as long. So `Checkpointer` asks storage every few seconds whether it
answers while a save is in flight (`wait_while_storage_answers`), gives the write up after
`storage_retry_s` of silence, and ends the abandoned write's threads
(`release_abandoned_threads`).
"""

from __future__ import annotations

import contextlib
import threading
import time

import orbax.checkpoint as ocp

from resnet_identity.runs import cloud_storage


def wait_while_storage_answers(manager: ocp.CheckpointManager, outage: cloud_storage.Outage, step: int | None) -> None:
    """`manager.wait_until_finished()`, given up with `StorageUnavailableError` once storage
    has not answered for `outage.budget_s`."""
    silent_since, next_probe = None, time.monotonic() + cloud_storage.PROBE_EVERY_S
    while manager.is_saving_in_progress():
        time.sleep(0.2)
        if time.monotonic() < next_probe:
            continue
        next_probe = time.monotonic() + cloud_storage.PROBE_EVERY_S
        if outage.answers():
            silent_since = None
            continue
        silent_since = silent_since or time.monotonic()
        if time.monotonic() - silent_since > outage.budget_s:
            raise cloud_storage.StorageUnavailableError(
                f"Cloud Storage did not answer for {outage.budget_s:.0f} s (storage_retry_s) while checkpoint {step} "
                "was being written"
            )
    manager.wait_until_finished()


def release_abandoned_threads() -> None:
    """Ends the threads of a write abandoned to an outage: each of Orbax 0.12.8's
    `_SignalingThread`s still waiting is cancelled and its signals set, so that it returns at
    once. (On another Orbax version without that class, nothing happens.)"""
    from orbax.checkpoint._src.futures import future

    for thread in threading.enumerate():
        if isinstance(thread, getattr(future, "_SignalingThread", ())) and thread.is_alive():
            with contextlib.suppress(Exception):
                thread.cancel()
                future.set_signals(thread._receive_signals, operation_id=thread._operation_id)
