"""Ctrl-C before the training loop's own handler (`preemption.PreemptionWatcher`) is installed.

Python turns SIGINT into a `KeyboardInterrupt` raised wherever the main thread happens to be.
While a program starts, that is often inside a garbage-collection callback (JAX installs one),
where the exception is only printed as "Exception ignored ..." and the program goes on: the
Ctrl-C would be lost and the run would train to its end. `catch_early` (called by
`cli.run` before anything heavy is imported) installs a handler that also records the
interrupt, and `check` raises it again where it cannot be swallowed; the watcher calls it
when it takes over the signals.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

_received = False
_default_unraisable_hook = sys.unraisablehook


def _handle(signum: int, frame: Any) -> None:
    global _received
    _received = True
    raise KeyboardInterrupt


def _unraisable(unraisable: Any) -> None:
    """Python's report of an exception it had to drop, except the recorded Ctrl-C's."""
    if not (_received and isinstance(unraisable.exc_value, KeyboardInterrupt)):
        _default_unraisable_hook(unraisable)


def catch_early() -> None:
    """Records every Ctrl-C from now on, if SIGINT still has Python's default handler (a
    program started in the background ignores SIGINT, and that is kept). Main thread only.
    A swallowed one is not reported as "Exception ignored": `check` acts on it."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _handle)
        sys.unraisablehook = _unraisable


def check() -> None:
    """Raises `KeyboardInterrupt` if a Ctrl-C arrived since `catch_early`, swallowed or not."""
    if _received:
        raise KeyboardInterrupt
