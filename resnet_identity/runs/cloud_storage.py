"""What can go wrong between a run and Cloud Storage, said in one line, and waiting out an outage.

A mistake in a gs:// workdir is found before the run writes anything (`check_workdir`), each
within seconds, as a `CloudStorageError` that says what to fix:

- no bucket, or a name Cloud Storage refuses (`gs://`, `gs:///run`, `gs://ab/run`);
- no credentials (the command that sets them);
- a Cloud Storage endpoint, or emulator (`STORAGE_EMULATOR_HOST`), that does not answer;
- a bucket that does not exist, or that this account may not write to.

An outage while a run saves is something else: the run is right, and storage will be back.
`Outage` waits for it with an exponential back-off bounded by `config.storage_retry_s`; if it
stays away, `StorageUnavailableError` stops the run with exit status 75 (EX_TEMPFAIL), so that
a retry loop reruns it, which resumes from the last complete checkpoint.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import urllib.parse

from resnet_identity.runs.files import WriteError

# Cloud Storage's bucket names: 3-63 characters (222 with dots), lowercase letters, digits,
# dashes, underscores and dots, starting and ending with a letter or digit.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_CONNECT_TIMEOUT_S = 5.0
PROBE_EVERY_S = 5.0  # how often a save in flight asks whether storage still answers
_CREDENTIALS_COMMAND = "gcloud auth application-default login"

log = logging.getLogger(__name__)


class CloudStorageError(WriteError):
    """A gs:// workdir that cannot be used as given; the message says what to fix."""


class StorageUnavailableError(RuntimeError):
    """Cloud Storage did not answer for longer than the back-off allows; rerun later."""

    def __init__(self, what: str):
        super().__init__(
            f"{what}. Nothing half-written counts as a checkpoint: rerun the same command once storage answers, "
            "and it resumes from the last complete one."
        )


def split_url(url: str) -> tuple[str, str]:
    """(bucket, object prefix without slashes at its ends) of a gs:// URL, or
    `CloudStorageError` if it names no valid bucket."""
    bucket, _, prefix = url.removeprefix("gs://").partition("/")
    if not bucket:
        raise CloudStorageError(f"{url!r} names no bucket: write gs://BUCKET/PATH, e.g. gs://my-bucket/runs/x.")
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise CloudStorageError(
            f"{url!r}: {bucket!r} is not a valid Cloud Storage bucket name (3-63 lowercase letters, digits, "
            "dashes, underscores or dots, starting and ending with a letter or digit)."
        )
    return bucket, prefix.strip("/")


def _endpoint() -> tuple[str, int, str]:
    """(host, port, how to name it to the user) of the Cloud Storage API this process uses."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if not emulator:
        return "storage.googleapis.com", 443, "Cloud Storage (storage.googleapis.com:443)"
    parsed = urllib.parse.urlsplit(emulator if "://" in emulator else f"http://{emulator}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.hostname or "", port, f"the Cloud Storage emulator at {emulator} (STORAGE_EMULATOR_HOST)"


def check_reachable() -> None:
    """`CloudStorageError` naming the host if a connection to the Cloud Storage endpoint cannot
    be opened within a few seconds (the client libraries would retry for minutes)."""
    host, port, described = _endpoint()
    if not os.environ.get("STORAGE_EMULATOR_HOST") and any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy")):
        return  # the clients go through the proxy: a direct connection proves nothing
    try:
        socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        fix = (
            "start it, or unset STORAGE_EMULATOR_HOST to use Cloud Storage itself"
            if os.environ.get("STORAGE_EMULATOR_HOST")
            else "check this machine's network access to Google APIs"
        )
        raise CloudStorageError(f"Cannot reach {described}: {e.strerror or e}. {fix[0].upper()}{fix[1:]}.") from None


def client():
    """A `google.cloud.storage.Client` with the default credentials (none for an emulator);
    `CloudStorageError` with the command that sets them if there are none."""
    import google.auth.exceptions
    from google.cloud import storage

    try:
        return storage.Client(project=None)  # objects need no project
    except google.auth.exceptions.DefaultCredentialsError:
        raise CloudStorageError(
            f"No Google Cloud credentials found for a gs:// workdir. Set them with `{_CREDENTIALS_COMMAND}` "
            "(on a Cloud VM, give the VM a service account with access to the bucket), or set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service account key file."
        ) from None


def explain(url: str, error: BaseException) -> CloudStorageError | None:
    """The user's mistake behind a Cloud Storage client error on `url`, if it is one."""
    import google.auth.exceptions
    from google.api_core import exceptions

    bucket = url.removeprefix("gs://").partition("/")[0]
    if isinstance(error, exceptions.NotFound):
        return CloudStorageError(
            f"Cloud Storage bucket gs://{bucket} does not exist (or this account cannot see it): create it "
            f"(`gcloud storage buckets create gs://{bucket}`) or name another bucket in --workdir."
        )
    if isinstance(error, exceptions.Forbidden | exceptions.Unauthorized):
        return CloudStorageError(
            f"This account may not write to gs://{bucket} ({error.code}): grant it roles/storage.objectAdmin on "
            f"the bucket, or sign in as another (`{_CREDENTIALS_COMMAND}`)."
        )
    if isinstance(error, google.auth.exceptions.RefreshError):
        return CloudStorageError(
            f"Google Cloud credentials were refused ({error}): renew them with `{_CREDENTIALS_COMMAND}`."
        )
    return None


def is_outage(error: BaseException | None) -> bool:
    """Whether `error` (or anything in its chain) says that storage did not answer: refused or
    reset connections, timeouts, 5xx answers, as raised by gcsfs (aiohttp), the google client
    (requests) and TensorStore (Orbax's arrays), or Orbax waiting on a write that failed so."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, ConnectionError | TimeoutError | socket.timeout):
            return True
        name = type(error).__name__
        if name in ("ClientConnectorError", "ClientOSError", "ServerDisconnectedError", "ServerTimeoutError"):
            return True  # aiohttp's, raised through gcsfs
        if name in ("ServiceUnavailable", "InternalServerError", "GatewayTimeout", "BadGateway", "RetryError"):
            return True  # google.api_core's
        if getattr(error, "code", None) in (500, 502, 503, 504) and "HttpError" in name:
            return True  # gcsfs's own
        if isinstance(error, FileNotFoundError) and "upload_id=" in str(error):
            return True  # a resumable upload that the server lost while it was away
        text = str(error)
        if any(mark in text for mark in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "Connection refused", "Timeout waiting")):
            return True  # TensorStore's status codes; Orbax's wait for a failed step
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


class Outage:
    """Waits for Cloud Storage to answer again, for at most `budget_s` seconds per outage."""

    def __init__(self, url: str, budget_s: float):
        self.url, self.budget_s = url, budget_s

    def answers(self) -> bool:
        """Whether Cloud Storage answers a request about this URL now."""
        try:
            check_reachable()
            bucket, prefix = split_url(self.url)
            client().bucket(bucket).blob(f"{prefix}/").exists(timeout=_CONNECT_TIMEOUT_S, retry=None)
        except Exception as e:  # noqa: BLE001 - whatever a probe meets, storage is not back
            log.debug("Cloud Storage probe failed: %s", e)
            return False
        return True

    def wait(self, what: str, cause: BaseException) -> None:
        """Returns once storage answers; raises `StorageUnavailableError` naming `what` failed
        if it has not after `budget_s` (back-off 1, 2, 4, ... s, at most 30 s apart)."""
        started, delay = time.monotonic(), 1.0
        log.warning(
            "Cloud Storage did not answer while %s (%s); retrying for up to %.0f s.",
            what,
            _first_line(cause),
            self.budget_s,
        )
        while True:
            if self.answers():
                log.warning("Cloud Storage answers again after %.0f s.", time.monotonic() - started)
                return
            left = self.budget_s - (time.monotonic() - started)
            if left <= 0:
                raise StorageUnavailableError(
                    f"Cloud Storage did not answer for {self.budget_s:.0f} s (storage_retry_s) while {what} "
                    f"({_first_line(cause)})"
                ) from cause
            time.sleep(min(delay, left))
            delay = min(2 * delay, 30.0)


def _first_line(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"
