"""Signals outside the training loop (`resnet_identity/runs/interrupts.py`): recorded while a
command starts, raised where they cannot be lost, never fatal once the command is stopping."""

import gc
import os
import signal
import sys

import pytest

from resnet_identity.runs import interrupts, preemption


@pytest.fixture
def fresh_process(monkeypatch):
    """The module's state and the signal handlers of a fresh `python train.py`, put back after."""
    for name, value in (("_received", None), ("_stopping", None), ("_armed", False), ("_deferring", 0)):
        monkeypatch.setattr(interrupts, name, value)
    previous = {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS}
    previous_hook = sys.unraisablehook
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = previous_hook


def test_a_ctrl_c_swallowed_while_starting_stops_the_run_when_the_watcher_starts(fresh_process, capsys):
    interrupts.catch_early()
    interrupts.arm()

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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_is_recorded_until_armed_then_raised_and_a_second_one_only_answered(
    fresh_process, signum, capsys
):
    interrupts.catch_early()
    signal.raise_signal(signum)  # while the program imports: recorded only
    with pytest.raises(interrupts.Stopped) as stopped:
        interrupts.arm()
    assert stopped.value.signal_name == signal.Signals(signum).name
    signal.raise_signal(signal.SIGTERM)  # the command is stopping: changes nothing
    assert "received SIGTERM: already stopping" in capsys.readouterr().out


def test_a_signal_inside_deferred_raises_at_its_end(fresh_process):
    interrupts.catch_early()
    interrupts.arm()
    finished = []
    with pytest.raises(interrupts.Stopped):
        with interrupts.deferred():
            signal.raise_signal(signal.SIGTERM)
            finished.append(True)  # the block is not cut short
    assert finished == [True]


def test_a_program_started_in_the_background_keeps_ignoring_ctrl_c_and_nohup_keeps_ignoring_sighup(fresh_process):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    interrupts.catch_early()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    with preemption.PreemptionWatcher(console=None):
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # the loop does not take it either


def test_after_the_watcher_saved_a_further_signal_changes_nothing(fresh_process, capsys):
    interrupts.catch_early()
    interrupts.arm()
    with preemption.PreemptionWatcher(console=None) as watcher:
        signal.raise_signal(signal.SIGTERM)
        assert watcher.should_stop(1)
        watcher.saved(1)
        signal.raise_signal(signal.SIGINT)  # the watcher answers
    signal.raise_signal(signal.SIGTERM)  # and, once it is gone, so does `interrupts`: no exception
    assert "received SIGTERM: step 1 is saved; exiting" in capsys.readouterr().out


def test_a_signal_while_a_checkpoint_is_restored_stops_the_run_after_the_restore(fresh_process, tmp_path, monkeypatch):
    """SIGTERM in the middle of a resume's restore: the restore finishes (the step is not taken
    for damaged and moved aside), then the run stops, saying which checkpoint it resumes from."""
    from resnet_identity.runs import checkpointing
    from resnet_identity.training import trainer
    from tests.train_worker import tiny_config

    config = tiny_config(steps=2)
    trainer.train_and_evaluate(config, str(tmp_path))
    monkeypatch.setattr(interrupts, "_stopping", None)  # as in the fresh process of a rerun
    interrupts.catch_early()
    interrupts.arm()
    real_restore = checkpointing.Checkpointer.restore

    def restore_with_a_signal(self, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return real_restore(self, *args, **kwargs)

    monkeypatch.setattr(checkpointing.Checkpointer, "restore", restore_with_a_signal)
    config.num_train_steps = 3
    config.schedule.boundaries = (2,)
    with pytest.raises(interrupts.Stopped) as stopped:
        trainer.train_and_evaluate(config, str(tmp_path), allow_config_change=True)
    assert stopped.value.saved == "stopped before step 3, nothing new to save (the newest checkpoint is step 2)"
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]  # nothing moved to corrupt/
