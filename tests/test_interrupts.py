"""A Ctrl-C before the training loop's handler is installed (`resnet_identity/interrupts.py`):
one that Python swallows still stops the run before it trains, with nothing printed for it."""

import gc
import signal
import sys

import pytest

from resnet_identity import interrupts, preemption


def test_a_ctrl_c_swallowed_while_starting_stops_the_run_when_the_watcher_starts(monkeypatch, capsys):
    monkeypatch.setattr(interrupts, "_received", False)
    previous_handler, previous_hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh `python train.py`
    try:
        interrupts.catch_early()

        def collecting(phase, info):  # JAX's garbage-collection callback, interrupted
            if phase == "start":
                signal.raise_signal(signal.SIGINT)

        gc.callbacks.append(collecting)
        try:
            gc.collect()  # the KeyboardInterrupt raised inside the callback is dropped here...
        finally:
            gc.callbacks.remove(collecting)
        assert "Exception ignored" not in capsys.readouterr().err  # ...and not reported
        with pytest.raises(KeyboardInterrupt):  # the training loop's watcher stops the run
            with preemption.PreemptionWatcher(console=None):
                pytest.fail("training started after a Ctrl-C")
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        sys.unraisablehook = previous_hook


def test_a_program_started_in_the_background_keeps_ignoring_ctrl_c(monkeypatch):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        interrupts.catch_early()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
