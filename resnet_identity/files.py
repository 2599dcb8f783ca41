"""Writing run records so that a reader, or a crash, never sees half a file."""

from __future__ import annotations

import os
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomically(path: str, content: str | bytes) -> None:
    """Writes `content` to a temporary file beside `path`, flushes it to disk, then renames
    it over `path`: a reader, or the next run after a crash or power loss, sees the old file
    or the new one, never a partial one. The temporary name is unique, so two writers never
    share it."""
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would create it; mkstemp makes it 0600
        with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
