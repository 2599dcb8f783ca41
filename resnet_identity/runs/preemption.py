"""Stopping inside a preemption's grace period: signals, the hosts' agreement, run-ahead.

Cloud TPU VMs give about 30 s between SIGTERM and SIGKILL; a dropped ssh connection sends
SIGHUP, which is answered the same way (unless `nohup` ignores it). The training loop asks
`PreemptionWatcher.should_stop(step)` once a step; when it says so, the loop saves that
step, waits for the write and returns, and `train.py` exits 75 for a rerun. From the
signal to the exit that takes at most `MAX_STEPS_AHEAD + 1` step times plus the write:

- the handler runs when the main thread next executes Python, at the latest when the step
  it is waiting on completes (one step time);
- JAX dispatches asynchronously, so without a bound the loop runs tens of steps ahead of
  the device, and the state it saves is ready only once all of them have run.
  `RunAheadBound` keeps the loop at most `MAX_STEPS_AHEAD` steps in front.

A second (or third) signal while the checkpoint is being written is caught and answered
with a line saying the save goes on; it never interrupts the write. After the save, one is
answered with a line too, here and (once the watcher is gone) by `interrupts`, until the
process exits: the exit status stays 75. Outside the loop `interrupts` answers signals.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.experimental import multihost_utils

from resnet_identity.runs import interrupts

# Two steps queued behind the one running: the device never idles while the host fetches
# and transfers the next batch, as long as that takes less than two step times (one would
# leave no slack for a slow batch), and a stop costs at most three step times.
MAX_STEPS_AHEAD = 2


class RunAheadBound:
    """Keeps the host at most `steps_ahead` steps in front of the device: `dispatched(out)`
    is called with each step's (small, non-donated) outputs and blocks until the outputs
    of the step `steps_ahead` earlier are ready."""

    def __init__(self, steps_ahead: int = MAX_STEPS_AHEAD):
        if steps_ahead < 0:
            raise ValueError(f"steps_ahead={steps_ahead} must be >= 0.")
        self._outputs: collections.deque[Any] = collections.deque()
        self._steps_ahead = steps_ahead

    def dispatched(self, outputs: Any) -> None:
        self._outputs.append(outputs)
        while len(self._outputs) > self._steps_ahead:
            jax.block_until_ready(self._outputs.popleft())


write_line = interrupts.write_line


def _jax_preemption_service_active() -> bool:
    # `jax.distributed.initialize` starts the preemption sync manager unless disabled; that
    # manager installs its own (C++) SIGTERM handler, which a Python handler would replace.
    return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class PreemptionWatcher:
    """Context manager: after SIGTERM, SIGHUP or SIGINT, `should_stop(step)` says when to save and stop.

    The handler never raises: it fixes the step to stop at (the next one the loop checks after
    `start_step`, at most `last_step`; inside `between_steps()`, the step just checked, whose state is whole),
    says so on `console` at once ("received SIGTERM: saving step N, please wait"), and answers
    any further signal with "still saving step N" or, after `saved(step)`, "step N is saved".
    The loop calls `saved(step)` once the checkpoint is durable. Enter it from the main thread:
    Python installs and runs signal handlers only there. A SIGHUP that `nohup` ignores stays
    ignored.

    In a `jax.distributed` job, acting on one host's local flag would leave the others
    waiting in a collective. There SIGTERM is left to JAX's preemption notifier, SIGINT and
    SIGHUP are forwarded to it as SIGTERM, and `should_stop` is
    `multihost_utils.reached_preemption_sync_point(step)`: True on every host at the same
    step. That protocol requires calling `should_stop` once per step, with the same step
    numbers, on every host. Previous handlers are restored on exit (a handler installed
    from C rather than Python cannot be restored and becomes SIG_DFL).
    """

    def __init__(
        self,
        signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT),
        *,
        start_step: int = 0,
        last_step: int | None = None,
        console: Callable[[str], None] | None = write_line,
    ):
        self._signals = signals
        self._previous: dict[int, Any] = {}
        self._use_jax_sync = False
        self._last_step = last_step
        self._say = console or (lambda text: None)
        self._checked_step = start_step  # the last step passed to should_stop, or the step resumed from
        self._between_steps = False
        self._saved_step: int | None = None
        self.stop_step: int | None = None
        self.signal_name: str | None = None

    def __enter__(self) -> PreemptionWatcher:
        interrupts.check()  # a signal before now that Python swallowed: stop before training
        self._use_jax_sync = _jax_preemption_service_active()
        for sig in self._signals:
            if sig == signal.SIGTERM and self._use_jax_sync:
                continue
            if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
                continue  # nohup: the run is meant to outlive the terminal
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    @property
    def stop_requested(self) -> bool:
        """Whether this process has been told to stop (always False under JAX's sync point,
        whose notifier receives the signals)."""
        return self.stop_step is not None

    @contextlib.contextmanager
    def between_steps(self) -> Iterator[None]:
        """The loop saves or evaluates the step it has just checked: a first signal inside
        stops the run at that step, which costs no further step."""
        self._between_steps = True
        try:
            yield
        finally:
            self._between_steps = False

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._saved_step is not None:
            self._say(f"received {name} again: step {self._saved_step} is saved; exiting")
            return
        if self.signal_name is not None:
            saving = f"step {self.stop_step}" if self.stop_step is not None else "a checkpoint"
            self._say(f"received {name} again: still saving {saving}, please wait (kill -9 abandons the save)")
            return
        self.signal_name = name
        interrupts.stopping("already stopping")  # once this watcher is gone too
        if self._use_jax_sync:
            os.kill(os.getpid(), signal.SIGTERM)  # Hand it to JAX's notifier, which tells every host.
            return
        # `should_stop` records its step before reading `stop_step`, so wherever the handler
        # interrupts it, the step fixed here is the one the loop stops at.
        self.stop_step = self._checked_step if self._between_steps else self._checked_step + 1
        if self._last_step is not None:
            self.stop_step = min(self.stop_step, self._last_step)
        self._say(f"received {name}: saving step {self.stop_step}, please wait")

    def stops_at(self, step: int) -> bool:
        """Whether a signal fixed `step` (or an earlier one) as the step to save and stop at,
        in this process; under JAX's sync point only `should_stop` decides."""
        return self.stop_step is not None and step >= self.stop_step

    def should_stop(self, step: int) -> bool:
        """Whether to save at `step` and exit. Once True, stays True."""
        self._checked_step = step
        if self._use_jax_sync and self.stop_step is None:
            try:
                reached = multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # The sync manager was disabled after initialisation.
                reached = self.signal_name is not None
            if reached:
                self.signal_name = self.signal_name or "SIGTERM"
                self.stop_step = step
                self._say(f"received {self.signal_name}: saving step {step}, please wait")
        return self.stops_at(step)

    def saved(self, step: int, *, owed: str = "") -> None:
        """Says that `step` is durable (and `owed`, what the rerun does first) and how to go on.
        From now until the process exits, a signal changes nothing."""
        self._saved_step = step
        interrupts.stopping(f"step {step} is saved; exiting")
        self._say(f"saved step {step}{'; ' + owed if owed else ''}; rerun the same command to resume")
