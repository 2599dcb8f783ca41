"""The trainer's console and training records: each window of `log_every_steps` steps becomes
one record of means in `metrics.jsonl` (and TensorBoard) and one console line with the rate
and the time left."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np

from resnet_identity.runs.metric_logging import MetricLogger
from resnet_identity.training import parallel
from resnet_identity.training.train_state import TrainState


class _Progress:
    """Training images/s and ETA for the console line; time spent compiling, evaluating and
    saving (`exclude`) is left out of the rate."""

    def __init__(self, start_step: int, total: int, batch: int):
        self.total, self.batch = total, batch
        self.last_step, self.last_time, self.excluded = start_step, time.time(), 0.0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leaves the time spent inside the block out of the rate."""
        started = time.time()
        try:
            yield
        finally:
            self.exclude(time.time() - started)

    def line(self, step: int) -> str:
        now = time.time()
        rate = (step - self.last_step) / max(now - self.last_time - self.excluded, 1e-9)
        self.last_step, self.last_time, self.excluded = step, now, 0.0
        minutes, seconds = divmod(round((self.total - step) / max(rate, 1e-9)), 60)
        return f"{rate * self.batch:,.0f} img/s, ETA {minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


class TrainLog:
    """Logging: each window of `every` steps becomes one record (the means) and one console
    line; a window that diverged is on record before the run stops. A shorter window (the
    first after a resume, the last before a stop or the end) records how many steps its means
    cover (`train/steps_averaged`), and its console line says so."""

    def __init__(
        self,
        logger: MetricLogger,
        *,
        start_step: int,
        total: int,
        batch_size: int,
        every: int,
        check: Callable[[TrainState], None],
    ):
        self.logger, self.total, self.every, self.check = logger, total, every, check
        self.progress = _Progress(start_step, total, batch_size)
        self.window: list[dict[str, jax.Array]] = []
        self.resumed_from = start_step or None  # until the first window after a resume is written

    def add(self, metrics: dict[str, jax.Array]) -> None:
        self.window.append(metrics)

    def write(self, step: int, state: TrainState) -> None:
        """The window so far, if any, as step `step`'s record; then `check(state)`."""
        if not self.window:
            return
        host = parallel.to_host(self.window)  # no device op: a stack would compile per length
        self.window = []
        means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        averaged, note = len(host), ""
        if averaged != self.every:
            since = f" since the resume at step {self.resumed_from}" if self.resumed_from else ""
            note = f" (over {averaged} step{'s' if averaged > 1 else ''}{since})"
        self.resumed_from = None
        self.logger.write(step, "train", {**means, **({"steps_averaged": averaged} if note else {})})
        self.logger.console(
            f"step {step}/{self.total}: loss {means['loss']:.4f}, train error {100 * means['error']:.2f}%, "
            f"lr {means['learning_rate']:.4g}, {self.progress.line(step)}{note}"
        )
        self.check(state)
