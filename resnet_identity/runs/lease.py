"""One writer per workdir: a run holds a lease on its workdir for as long as it runs.

Two runs on one workdir would interleave their checkpoints, metrics and `config.json`.
`hold(workdir)` takes the workdir's lease before anything else is written there, and a
second run exits at once with `WorkdirInUseError`, naming the holder (host, pid, start
time). The lease is `<workdir>/lease.json`, which also says who holds it:

- On a local or network disk: an OS lock (`fcntl.flock`) on that file, held by an open
  descriptor. The OS drops it when the process ends, however it ends (even SIGKILL), so
  a dead run never blocks the rerun. The file is emptied when the lease is given back.
- On Cloud Storage (`gs://`), which has no locks: the object is created only if absent
  (`ifGenerationMatch=0`) and renewed every `heartbeat_s` seconds by a thread, each
  renewal conditional on the generation it last wrote. A lease not renewed for
  `STALE_HEARTBEATS` periods is stale: its holder died without giving it back, and the
  next run takes it over, again conditional on that generation, so that of two runs
  racing for it one wins. A lease written on this very machine (same host and boot) by
  a process that no longer exists is taken over at once; one that has missed a renewal
  (its holder's VM was most likely preempted) is waited for until it is stale, so the
  rerun of a preempted pod slice is not refused. Given back, it is deleted.

The hosts of a multi-host job share the job's lease: process 0 takes it, and every process
learns the outcome before any of them writes.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from resnet_identity.runs import cloud_storage
from resnet_identity.runs.files import as_path, explain_write_errors, is_local

LEASE_FILE = "lease.json"
# Renewal period of a Cloud Storage lease; tests shorten it through the environment.
HEARTBEAT_S = float(os.environ.get("RESNET_IDENTITY_LEASE_HEARTBEAT_S", "30"))
STALE_HEARTBEATS = 3  # missed renewals after which a lease is stale
REQUEST_TIMEOUT_S = 10.0  # one request to Cloud Storage: a mistake is said in seconds, not after minutes of retries

log = logging.getLogger(__name__)


class WorkdirInUseError(RuntimeError):
    """Another run holds the workdir's lease; the message names it and says what to do."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _boot_id() -> str:
    try:
        return open("/proc/sys/kernel/random/boot_id").read().strip()
    except OSError:
        return ""


def _holder() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "boot_id": _boot_id(),
        "started": _now().isoformat(timespec="seconds"),
    }


def _in_use(workdir: str, holder: dict[str, Any] | None, expires_in: float | None = None) -> WorkdirInUseError:
    if holder:
        who = f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"
        stop = f"stop it (kill {holder.get('pid')} on {holder.get('host')})"
    else:
        who, stop = "a run that is starting", "stop it"
    dead = (
        f" If that run is no longer running, its lease expires in {expires_in:.0f} s: rerun then."
        if expires_in is not None
        else ""
    )
    return WorkdirInUseError(
        f"{workdir} is in use by another run ({who}); two runs on one workdir would overwrite each other's "
        f"checkpoints and metrics. Wait for it to finish, {stop}, or choose another --workdir.{dead}"
    )


class LocalLease:
    """An OS lock on `<workdir>/lease.json`, held until `release()` or the process ends."""

    def __init__(self, workdir: str):
        path = as_path(workdir)
        with explain_write_errors(f"to workdir {workdir}"):
            path.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path / LEASE_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(self._fd, 4096, 0))
            os.close(self._fd)
            raise _in_use(workdir, holder) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(_holder()).encode(), 0)

    def release(self) -> None:
        os.ftruncate(self._fd, 0)  # an empty lease file: nobody holds the workdir
        os.close(self._fd)  # closing the only descriptor drops the lock


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        holder = json.loads(data)
    except ValueError:  # empty: being written, or given back
        return None
    return holder if isinstance(holder, dict) else None


class CloudLease:
    """`<workdir>/lease.json` on Cloud Storage, created only if absent and renewed by a
    heartbeat thread, each write conditional on the object's generation."""

    def __init__(self, workdir: str, *, heartbeat_s: float = HEARTBEAT_S):
        from google.api_core import exceptions
        from google.cloud import storage

        self._precondition_failed = exceptions.PreconditionFailed
        # The lease is the run's first contact with the bucket: a mistake in the workdir, the
        # credentials or the endpoint is said here, in one line (`cloud_storage`).
        bucket, prefix = cloud_storage.split_url(workdir)
        name = f"{prefix}/{LEASE_FILE}" if prefix else LEASE_FILE
        self._blob = cloud_storage.client().bucket(bucket).blob(name)
        cloud_storage.check_reachable()
        self._retry = storage.retry.DEFAULT_RETRY.with_timeout(REQUEST_TIMEOUT_S)
        self._heartbeat_s, self._holder = heartbeat_s, _holder()
        try:
            self._generation = self._take(workdir)
        except (WorkdirInUseError, self._precondition_failed):
            raise
        except Exception as e:
            mistake = cloud_storage.explain(workdir, e)
            if mistake is None:
                raise
            raise mistake from e
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="workdir-lease", daemon=True)
        self._thread.start()

    def _write(self, generation: int) -> int:
        body = json.dumps(
            {**self._holder, "renewed": _now().isoformat(timespec="seconds"), "heartbeat_s": self._heartbeat_s}
        )
        self._blob.upload_from_string(
            body,
            content_type="application/json",
            if_generation_match=generation,
            timeout=REQUEST_TIMEOUT_S,
            retry=self._retry,
        )
        return int(self._blob.generation)

    def _take(self, workdir: str) -> int:
        try:
            return self._write(0)  # 0: only if there is no such object
        except self._precondition_failed:
            pass
        try:
            current = self._blob.bucket.get_blob(self._blob.name)
            holder = _parse(current.download_as_bytes(if_generation_match=current.generation)) if current else None
        except Exception:  # given back or replaced meanwhile: describe it as unknown, try again below
            current, holder = None, None
        if current is None:
            return self._write(0)
        heartbeat = float((holder or {}).get("heartbeat_s", self._heartbeat_s))
        stale_after = STALE_HEARTBEATS * heartbeat
        age = (_now() - current.updated).total_seconds()
        if age < stale_after and not _died_here(holder) and age > 1.5 * heartbeat:
            # A missed renewal: most likely a holder on a preempted VM. Rather than refuse the
            # rerun that a retry loop makes, wait the rest of the stale period, once.
            log.warning(
                "The lease on %s was last renewed %.0f s ago by %s; waiting %.0f s for it to expire.",
                workdir,
                age,
                holder,
                stale_after - age,
            )
            time.sleep(stale_after - age)
            latest = self._blob.bucket.get_blob(self._blob.name)
            if latest is None:
                return self._write(0)
            if latest.generation != current.generation:  # renewed after all: its holder lives
                raise _in_use(workdir, holder, expires_in=stale_after)
            age = (_now() - latest.updated).total_seconds()
        if age < stale_after and not _died_here(holder):
            raise _in_use(workdir, holder, expires_in=stale_after - age)
        log.warning(
            "Taking over the lease on %s: its holder (%s) %s.",
            workdir,
            holder,
            "no longer runs" if age < stale_after else f"has not renewed it for {age:.0f} s",
        )
        try:
            return self._write(current.generation)
        except self._precondition_failed:  # another run took it first
            raise _in_use(workdir, None) from None

    def _renew(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                self._generation = self._write(self._generation)
            except self._precondition_failed:
                log.error(
                    "The lease on this workdir was taken over by another run: both now write to it. Stop one of them."
                )
                return
            except Exception as e:  # a network blip: the next heartbeat tries again
                log.warning("Could not renew the workdir lease (%s); retrying.", e)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):  # taken over, or unreachable: it expires by itself
            self._blob.delete(if_generation_match=self._generation, timeout=REQUEST_TIMEOUT_S, retry=None)


def _died_here(holder: dict[str, Any] | None) -> bool:
    """Whether `holder` ran on this machine since its last boot and its process is gone."""
    if not holder or holder.get("host") != socket.gethostname() or holder.get("boot_id") != _boot_id():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, ValueError):
        return False
    return False


def _describe_holder(workdir: str) -> WorkdirInUseError:
    """The refusal as a process other than 0 states it, reading the holder itself."""
    try:
        holder = _parse((as_path(workdir) / LEASE_FILE).read_bytes())
    except Exception:
        holder = None
    return _in_use(workdir, holder)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds the workdir's lease inside the block; raises `WorkdirInUseError` at once, on
    every process, if another run holds it."""
    lease, error = None, None
    if jax.process_index() == 0:
        try:
            lease = LocalLease(workdir) if is_local(workdir) else CloudLease(workdir)
        except Exception as e:  # every process must reach the agreement below
            error = e
    taken = error is None
    if jax.process_count() > 1:
        taken = bool(multihost_utils.broadcast_one_to_all(np.int32(taken)))
    if not taken:
        raise error if error is not None else _describe_holder(workdir)
    try:
        yield
    finally:
        if lease is not None:
            lease.release()
