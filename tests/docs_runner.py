"""Running a docs command for tests/test_docs_commands.py: a copy of the checkout, bash in a
session of its own that is waited for to the end (background jobs included), and a file lock
that the xdist workers share."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.docs_commands import ROOT
from tests.docs_standins import inputs


@contextlib.contextmanager
def locked(path: Path):
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def copy_repository(target: Path) -> None:
    """The checkout's tracked and untracked-but-not-ignored files, as a git repository of one commit
    (docs/tpu.md archives HEAD), so the copy holds the working tree as it is now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a deleted tracked file is listed but gone
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    git = ["git", "-c", "user.name=docs", "-c", "user.email=docs@localhost", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the checkout's working tree"]):
        subprocess.run([*git, *args], cwd=target, check=True, capture_output=True)


@dataclasses.dataclass
class Done:
    returncode: int
    output: str


def run_bash(text: str, cwd: Path, env: dict[str, str], output: Path, timeout_s: float) -> Done:
    """Runs `text` with bash in the state's repository copy, in a session of its own, and waits
    also for what it left running in the background (nohup, &)."""
    with open(output, "w") as out:
        process = subprocess.Popen(
            ["bash", "-c", text],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=timeout_s)
            _wait_for_session(process.pid, timeout_s=timeout_s)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
    return Done(returncode, output.read_text())


def _wait_for_session(session_id: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _session_members(session_id):
            return
        time.sleep(0.5)
    pytest.fail(f"processes left running after {timeout_s} s: {_session_members(session_id)}")


def _session_members(session_id: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                if int(fields[3]) == session_id and fields[0] != "Z":  # sid; a zombie has ended
                    members.append(int(entry))
    return members


class Shared:
    """What the session's docs commands share, under `root` (one folder for all xdist workers):
    each made once, behind a file lock."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def once(self, name: str, make: Callable[[Path], None]) -> Path:
        path = self.root / name
        with locked(self.root / f"{name}.lock"):
            if not (path / ".done").exists():
                shutil.rmtree(path, ignore_errors=True)
                path.mkdir(parents=True)
                make(path)
                (path / ".done").touch()
        return path

    def torch_home(self) -> Path:
        return self.root / "torch"

    def hf_home(self) -> Path:
        return self.root / "huggingface"

    def pretrained(self, source: str, model: str, tag: str) -> None:
        """Stand-in weights in torchvision's or timm's cache, where their loaders look."""
        if source == "torchvision":
            self.once(f"torchvision-{model}-{tag}", lambda _: inputs.torchvision_weights(self.torch_home(), model, tag))
        else:
            self.once(f"timm-{model}-{tag}", lambda _: inputs.timm_weights(self.hf_home(), model, tag))

    def tiny_cifar(self) -> Path:
        return self.once("tfds_cifar", inputs.tiny_cifar)

    def tiny_imagenet(self) -> Path:
        return self.once("tfds_imagenet", inputs.tiny_imagenet)


@dataclasses.dataclass
class State:
    """One command's world: the repository copy it runs in, HOME, the cloud stand-in's records
    and worker homes, and the Cloud Storage emulator's objects."""

    root: Path
    session: Shared

    repo = property(lambda self: self.root / "repo")
    home = property(lambda self: self.root / "home")
    cloud = property(lambda self: self.root / "cloud")
    gcs = property(lambda self: self.root / "gcs")


def environment(state: State, standins: Path) -> dict[str, str]:
    """The suite's environment, with the stand-in programs and the suite's Python first on PATH."""
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(standins), os.path.dirname(sys.executable), os.environ["PATH"]]),
        "HOME": str(state.home),
        "DOCS_SUITE_PREFIX": sys.prefix,
        "TORCH_HOME": str(state.session.torch_home()),
        "HF_HOME": str(state.session.hf_home()),
        "HF_HUB_OFFLINE": "1",  # no internet: the hub's client would retry for half a minute
    }
