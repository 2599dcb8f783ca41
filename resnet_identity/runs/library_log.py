"""Orbax's, TensorStore's and asyncio's own reports of a failed checkpoint write, kept in a file.

When a save fails (a full disk, `ulimit -f`, a storage outage), Orbax logs the error from each
of its background threads with its traceback, and at exit Python reports every coroutine of
the abandoned write that could not finish ("Exception ignored in: <coroutine ...>",
`RuntimeError: Event loop is closed`): hundreds of lines, none of which tells the user more
than the one `error:` line the checkpointer raises. `divert_to(path)` sends those records to
`path` instead of the console, for whoever wants the details:

- records logged from Orbax's code (through absl), and by the `gcsfs`, `fsspec` and
  `asyncio` loggers, at WARNING and above;
- unraisable exceptions (`sys.unraisablehook`) raised in Orbax's, TensorStore's or asyncio's
  code, or in a coroutine.

Everything else reaches the console as before. The diversion lasts for the process: the
reports at exit come after the checkpointer has closed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from typing import Any

_LOGGERS = ("gcsfs", "fsspec", "asyncio")
# Code whose unraisable exceptions belong to an abandoned write (TensorStore's callbacks into
# a closed asyncio loop come with asyncio's frames only).
_LIBRARY_PATHS = ("/orbax/", "/asyncio/", "/tensorstore/")
_state: dict[str, Any] = {}


def _from_library(record: logging.LogRecord) -> bool:
    return record.name in _LOGGERS or "/orbax/" in record.pathname


class _Divert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not _from_library(record):
            return True
        if record.levelno < logging.WARNING:
            return True  # INFO and DEBUG reach the console only when --verbosity asks for them
        handler = _state.get("handler")
        if handler is not None:
            handler.handle(record)
        return False


def _unraisable(info: Any) -> None:
    frames = traceback.extract_tb(info.exc_traceback) if info.exc_traceback else []
    in_library = any(part in frame.filename for frame in frames for part in _LIBRARY_PATHS)
    if not (in_library or "coroutine" in repr(info.object)):
        _state["previous_hook"](info)
        return
    handler = _state.get("handler")
    if handler is None:
        return
    try:
        text = "".join(traceback.format_exception(info.exc_type, info.exc_value, info.exc_traceback))
        handler.handle(logging.makeLogRecord({"msg": f"Exception ignored in: {info.object!r}\n{text}", "levelno": 40}))
    except Exception:  # noqa: BLE001, S110 - at interpreter exit even formatting may fail; the console stays clean
        pass


def divert_to(path: str | None) -> None:
    """From now on, sends the libraries' reports to the local file `path` (created at the
    first report), or drops them if None (a gs:// workdir: no local file to keep them in).
    The first call's choice stays."""
    if "previous_hook" in _state:
        return
    if path is not None:
        handler = logging.FileHandler(path, delay=True)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s")
        )
        _state["handler"] = handler
    _state["previous_hook"] = sys.unraisablehook
    for name in ("absl", *_LOGGERS):
        logging.getLogger(name).addFilter(_Divert())
    sys.unraisablehook = _unraisable


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Within the block the libraries' reports are dropped rather than kept: a read-only reader
    writes nothing, even in a process whose training run diverted them to that run's folder."""
    handler = _state.pop("handler", None)
    try:
        yield
    finally:
        if handler is not None:
            _state["handler"] = handler
