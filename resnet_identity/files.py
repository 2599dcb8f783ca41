"""Writing run records so that a reader, or a crash, never sees half a file."""

from __future__ import annotations

import os


def write_atomically(path: str, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`: another
    process reading `path` sees the old file or the new one, never a partial one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
