"""The training console (`training/train_log.py`): the progress line's ETA."""

from resnet_identity.training import train_log


def test_eta_counts_hours_past_a_day():
    progress = train_log._Progress(start_step=0, total=100_001, batch=128)
    progress.last_time -= 1.0  # one step took a second: 100,000 more take 27 h 46 min
    assert "ETA 27:46:" in progress.line(1)
