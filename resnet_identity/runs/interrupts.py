"""Signals outside the training loop, from a command's first line to its exit.

Inside the loop `preemption.PreemptionWatcher` answers SIGTERM, SIGHUP and SIGINT by saving a
step. Before it is installed (imports, config parsing, the dataset, compiling, restoring) and
after it is removed, the handler here answers them, so that a signal at any moment ends the
command with a line that says what was saved:

- SIGTERM or SIGHUP (a preemption notice, a dropped ssh connection) raises `Stopped` where the
  main thread is; `cli.run` prints the line and exits `EXIT_STOPPED` (75), the status a retry
  loop reruns on. Inside `deferred()` (a config file or JAX being imported, which an exception
  would leave half done; a checkpoint being restored, a record rewritten) it waits for the end
  of the block. An ignored SIGHUP (`nohup`) stays ignored.
- Ctrl-C (SIGINT) raises `KeyboardInterrupt` the same way: `cli.run` exits 130, "interrupted.".
- Once the command is stopping (the first signal acted on, here or by the watcher), a further
  signal changes nothing: it is answered with a line.

`catch_early` installs the handler first thing (in `train.py` before anything else is
imported); until `arm()` (in `cli.run`) a signal is only recorded, then raised. Python drops an
exception raised inside a garbage-collection callback (JAX installs one) and goes on; `check`
raises a recorded signal again where it cannot be swallowed, and the watcher calls it when it
takes over. `blocked()` keeps a signal pending across `train.py`'s re-execution (huge pages),
for the new process's handler. In a `jax.distributed` job the signal is handed to JAX's preemption notifier
instead, which stops every host at the same step of the loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

# sysexits' EX_TEMPFAIL: stopped by a signal, nothing lost, run the same command again.
EXIT_STOPPED = 75
SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

_received: str | None = None  # the first signal's name, until the process exits
_stopping: str | None = None  # once stopping: what a further signal is told
_armed = False
_deferring = 0
_resent = False  # `blocked` sent the recorded signal again: its delivery here is no new signal
_default_unraisable_hook = sys.unraisablehook


class Stopped(BaseException):
    """SIGTERM or SIGHUP outside the training loop. A BaseException, like KeyboardInterrupt, so
    that no `except Exception` (a checkpoint reader's fallback, say) mistakes it for a failure.
    `saved` says what the run has saved, for the exit line; the trainer sets it."""

    def __init__(self, signal_name: str, saved: str = ""):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.saved = saved


def write_line(text: str) -> None:
    """Writes `text` to stdout's file descriptor: a signal handler may interrupt a `print` in
    progress, and re-entering Python's buffered writer would raise."""
    try:
        os.write(sys.stdout.fileno(), (text + "\n").encode())
    except (AttributeError, OSError, ValueError):  # no file descriptor (a notebook, pytest's capture)
        print(text, flush=True)


def _exception(name: str) -> BaseException:
    return KeyboardInterrupt() if name == "SIGINT" else Stopped(name)


def _jax_notifier_active() -> bool:
    # Only if the program has imported JAX (this module must not), and not while it imports it.
    jax = sys.modules.get("jax")
    try:
        return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)
    except AttributeError:
        return False


def _handle(signum: int, frame: Any) -> None:
    global _received, _resent
    name = signal.Signals(signum).name
    if _resent:
        _resent = False
        return
    if _stopping is not None:
        write_line(f"received {name}: {_stopping}")
        return
    if _jax_notifier_active():
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier stops every host at the same step
        return
    _received = name
    stopping("already stopping")
    if _armed and not _deferring:
        raise _exception(name)


def _unraisable(unraisable: Any) -> None:
    """Python's report of an exception it had to drop, except the recorded signal's."""
    if not (_received and isinstance(unraisable.exc_value, KeyboardInterrupt | Stopped)):
        _default_unraisable_hook(unraisable)


def catch_early() -> None:
    """Installs the handler for SIGTERM and SIGHUP (unless ignored) and for SIGINT (unless
    ignored or already handled: a program started in the background ignores Ctrl-C); until
    `arm()` a signal is only recorded. Unblocks the signals `blocked()` held across an exec.
    Main thread only; a second call changes nothing."""
    for sig in SIGNALS:
        current = signal.getsignal(sig)
        if current is signal.SIG_DFL or (sig == signal.SIGINT and current is signal.default_int_handler):
            signal.signal(sig, _handle)
    sys.unraisablehook = _unraisable
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def arm() -> None:
    """From now on a signal raises at once (outside `deferred()`); one recorded before raises now."""
    global _armed
    _armed = True
    check()


def received() -> bool:
    """Whether a signal has arrived since `catch_early`."""
    return _received is not None


def check() -> None:
    """Raises `Stopped` or `KeyboardInterrupt` for a signal received since `catch_early`,
    swallowed or not."""
    if _received is not None:
        raise _exception(_received)


def stopping(answer: str) -> None:
    """The command is stopping: a further signal is answered with `answer` and changes nothing."""
    global _stopping
    _stopping = answer


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal inside the block raises only once it has ended: for work that must not stop
    halfway (a checkpoint restored or moved aside, a record rewritten)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _armed and not _deferring:
        check()


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """The signals wait (pending) until the block ends, or, across an `exec` inside it, until
    the new program's `catch_early`: a program that re-executes itself loses none."""
    global _resent
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    if _received is not None:  # recorded before the block: pending again on this thread, for the new program
        _resent = True
        signal.pthread_kill(threading.get_ident(), signal.Signals[_received])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def ignore_from_now() -> None:
    """The command is exiting: a signal from here to the end changes nothing (not even in the
    last moments, when Python has already put its handlers back to the default)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
