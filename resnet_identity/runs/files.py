"""Run records on a local disk or on Cloud Storage, and writes that a crash never leaves half done.

Every path the trainer, the logger and the analysis code read or write goes through
`as_path`, an `etils.epath.Path`: the library Orbax and TFDS use, so a `gs://bucket/run`
workdir holds the config, metrics, events and checkpoints alike.

One Cloud Storage client, `gcsfs`, serves real GCS and an emulator alike. With TensorFlow
installed, epath would otherwise route gs:// through TF's own client, which cannot be
pointed at an emulator (its endpoint is compiled in). `as_path` therefore makes
`EPATH_USE_TF=false` the default; a value the user set is kept. etils reads it once, at a
process's first epath operation, local or not: code that handles run files gets its paths
from `as_path`, so that the choice is made before then.
On real GCS the credentials are the usual ones (application default
credentials, or the VM's service account). For an emulator, `STORAGE_EMULATOR_HOST` is
the only setting a user makes: gcsfs reads it, and TensorStore (which writes Orbax's
arrays) is pointed at the same server (`TENSORSTORE_GCS_HTTP_URL`), with a placeholder
token because an emulator checks none.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
from collections.abc import Iterator

from etils import epath


class WriteError(OSError):
    """A run's files cannot be written (permissions, full disk, bad path); the message says
    what to do."""


# (errnos, text TensorStore uses for them, what to tell the user). Python and Orbax report
# local I/O failures as OSError, but TensorStore's as ValueError carrying only the message.
_WRITE_PROBLEMS = (
    (
        {errno.EACCES, errno.EPERM},
        "Permission denied",
        "it is not writable by this user (uid {uid}). Fix its permissions or choose another workdir.",
    ),
    ({errno.EROFS}, "Read-only file system", "it is on a read-only file system. Choose a workdir on a writable disk."),
    (
        {errno.ENOSPC, errno.EDQUOT},
        "No space left on device",
        "the disk is full (or over quota). Free space, lower keep_checkpoints, or choose a "
        "workdir on a larger disk; the last complete checkpoint is intact and a rerun resumes from it.",
    ),
    (
        {errno.EFBIG},
        "File too large",
        "a file grew past the largest this process may write (`ulimit -f`, or the file system's own limit). Raise "
        "the limit (`ulimit -f unlimited`) or choose a workdir on another file system; the last complete checkpoint "
        "is intact and a rerun resumes from it.",
    ),
    (
        {errno.ENOTDIR, errno.EEXIST},
        "Not a directory",
        "part of that path is a file, not a directory. Choose another workdir.",
    ),
    (
        {errno.ENOENT},
        "No such file or directory",
        "a folder on that path cannot be created (a virtual file system such as /proc, or a mount that went "
        "away). Choose another workdir.",
    ),
)


def write_problem(exc: BaseException) -> str | None:
    """What to tell the user about a write failure anywhere in `exc`'s chain, if known."""
    seen = 0
    while exc is not None and seen < 8:
        for errnos, text, advice in _WRITE_PROBLEMS:
            if (isinstance(exc, OSError) and exc.errno in errnos) or text in str(exc):
                return advice.format(uid=os.getuid() if hasattr(os, "getuid") else "?")
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


@contextlib.contextmanager
def explain_write_errors(what: str, error: type[WriteError] = WriteError) -> Iterator[None]:
    """Turns a known write failure inside the block into `error("Cannot write {what}: ...")`.
    An error already explained passes unchanged, so the user reads the first one only."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        advice = write_problem(e)
        if advice is None:
            raise
        raise error(f"Cannot write {what}: {advice} ({e})") from e


def as_path(path: epath.PathLike) -> epath.Path:
    """`path` (local or gs://) as an `epath.Path`, with the gs:// client chosen first. A local
    path is made absolute (and `~` expanded): Orbax and TensorStore refuse a relative one, and
    the README writes `--workdir=runs/x`."""
    _choose_cloud_storage_client()
    if is_local(path):
        return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    return epath.Path(path)


def is_local(path: epath.PathLike) -> bool:
    return "://" not in os.fspath(path)


def _choose_cloud_storage_client() -> None:
    os.environ.setdefault("EPATH_USE_TF", "false")
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        os.environ["TENSORSTORE_GCS_HTTP_URL"] = emulator if "://" in emulator else f"http://{emulator}"
        os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
        # gcsfs asks the storage-control API (which emulators lack) whether a bucket is
        # zonal, with a warning per request when it cannot tell; an emulator's never is.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def write_atomically(path: epath.PathLike, content: str | bytes) -> None:
    """Writes `content` to `path` so that a reader, or the next run after a crash or power
    loss, sees the old file or the new one, never a partial one.

    Locally: a temporary file beside `path`, flushed to disk, then renamed over it (its
    name is unique, so two writers never share it). On Cloud Storage: one upload, which
    GCS makes visible whole or not at all (it has no atomic rename to build on).
    """
    path = as_path(path)
    data = content.encode() if isinstance(content, str) else content
    with explain_write_errors(str(path)):
        if not is_local(path):
            path.write_bytes(data)
            return
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        # os.open with mode 0o666 lets the umask decide the permissions, as open() would.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def append_text(path: epath.PathLike, text: str) -> None:
    """Appends `text` to `path`. A Cloud Storage object cannot grow, so there it is read
    and rewritten whole (in one upload: never half of it); keep this for small records."""
    path = as_path(path)
    if not is_local(path):
        write_atomically(path, (path.read_text() if path.exists() else "") + text)
        return
    with explain_write_errors(str(path)), open(path, "a") as f:
        f.write(text)


def move_directory(source: epath.PathLike, target: epath.PathLike) -> None:
    """Moves the directory `source` to `target`, whose parent need not exist. Locally one
    rename; Cloud Storage has no directories to rename, so there each object is copied,
    then the source deleted (a reader may meanwhile see both, never neither)."""
    source, target = as_path(source), as_path(target)
    if is_local(source):
        target.parent.mkdir(parents=True, exist_ok=True)
        source.rename(target)
        return
    for item in _files_under(source):
        item.copy(target / item.relative_to(source))
    source.rmtree()


def _files_under(directory: epath.Path) -> Iterator[epath.Path]:
    for item in directory.iterdir():  # (epath refuses a recursive glob on Cloud Storage)
        if item.is_dir():
            yield from _files_under(item)
        else:
            yield item


def check_workdir(workdir: str) -> None:
    """Fails early, with what to do, if the workdir (local or gs://) cannot be written or
    the disk is full. The probe file is removed whether or not its write succeeded."""
    path = as_path(workdir)
    # One probe per process: the processes of a multi-host run share the workdir.
    probe = path / f".write_test.{socket.gethostname()}.{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_text("x" * 4096)
        finally:
            probe.unlink(missing_ok=True)
    except OSError as e:
        advice = write_problem(e) or "choose a writable --workdir, fix its permissions, or free disk space."
        raise WriteError(f"Cannot write to workdir {workdir}: {advice} ({e})") from e
