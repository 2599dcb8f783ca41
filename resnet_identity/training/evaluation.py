"""The trainer's evaluation: the whole test split, each example once, in global batches.

`evaluate_split` runs one pass (also used by `python -m resnet_identity.evaluate`). `RunEvaluation`
runs every crop of the run's `eval_crops` at a step, logs and prints each, gives way to a stop
(a preemption must not wait for a long evaluation), and finds in `metrics.jsonl` an
evaluation a stop or a crash cut short, which the resumed run does first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from resnet_identity.runs.metric_logging import MetricLogger
from resnet_identity.training import parallel
from resnet_identity.training.train_state import TrainState

# An evaluation running longer than this says how far it has got (ImageNet's takes minutes).
EVAL_PROGRESS_SECONDS = 30.0


def evaluate_split(
    state,
    dataset,
    eval_fn,
    *,
    batch_size: int,
    sharding,
    crop: int | None = None,
    interrupted: Callable[[], bool] = lambda: False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float] | None:
    """Error and loss over the whole test split: each example once (padded, masked), in
    global batches of `batch_size` sharded by `sharding`; None once `interrupted()` (a
    preemption, which must not wait for a long evaluation). `progress` hears how many
    examples are done, every `EVAL_PROGRESS_SECONDS`."""
    totals, done, reported = None, 0, time.time()
    for batch in dataset.eval_batches(
        global_batch_size=batch_size, process_index=jax.process_index(), process_count=jax.process_count(), crop=crop
    ):
        if interrupted():
            return None
        sums = eval_fn(state, parallel.global_batch(batch, sharding))
        if totals is not None:  # one batch in flight, so that `done` counts finished work
            jax.block_until_ready(totals)
            done += batch_size
            if progress is not None and time.time() - reported >= EVAL_PROGRESS_SECONDS:
                progress(f"evaluated {min(done, dataset.num_test):,} of {dataset.num_test:,} examples")
                reported = time.time()
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = parallel.to_host(totals)
    count = float(totals["count"])
    return {
        "error": float(totals["error_sum"]) / count,
        "top5_error": float(totals["top5_error_sum"]) / count,
        "loss": float(totals["loss_sum"]) / count,
        "examples": count,
    }


class RunEvaluation:
    """The evaluations a run owes: every crop of `crops` (None: the dataset's first) over the test split in
    global batches of `batch_size`, logged and printed; it gives way to a preemption
    (`interrupted`) rather than outlast a grace period, and `unrecorded` finds what such a stop
    (or a crash) left undone, for the resumed run."""

    def __init__(
        self,
        dataset,
        eval_fn,
        logger: MetricLogger,
        *,
        crops: tuple[int | str | None, ...],
        batch_size: int,
        sharding,
        interrupted: Callable[[], bool],
    ):
        self.dataset, self.eval_fn, self.logger = dataset, eval_fn, logger
        self.crops, self.batch_size, self.sharding, self.interrupted = crops, batch_size, sharding, interrupted
        self.completed_step: int | None = None  # the step of the last evaluation of every crop

    @staticmethod
    def tag(crop: int | None) -> str:
        return "test" if crop is None else f"test_{crop}"

    def unrecorded(self, step: int) -> tuple[int | None, ...]:
        """The crops with no record at `step` in `metrics.jsonl`, as read by process 0 and
        agreed by all (the evaluation is a collective)."""
        recorded: set[str] = set()
        if jax.process_index() == 0 and self.logger.path.exists():
            for line in self.logger.path.read_bytes().decode(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("step") == step:
                    recorded |= {key.split("/")[0] for key in record}
        missing = np.array([self.tag(crop) not in recorded for crop in self.crops])
        if jax.process_count() > 1:
            missing = multihost_utils.broadcast_one_to_all(missing)
        return tuple(crop for crop, absent in zip(self.crops, missing) if absent)

    def __call__(
        self, state: TrainState, step: int, crops: tuple[int | None, ...] | None = None
    ) -> dict[str, dict[str, float]]:
        results = {}
        for crop in self.crops if crops is None else crops:
            tag = self.tag(crop)
            at_crop = f" at crop {crop}" if crop else ""
            if self.interrupted():  # a stop while the step was being saved: nothing started
                break
            self.logger.console(f"step {step}: evaluating on {self.dataset.num_test:,} examples{at_crop}...")
            metrics = evaluate_split(
                state,
                self.dataset,
                self.eval_fn,
                batch_size=self.batch_size,
                sharding=self.sharding,
                crop=crop,
                interrupted=self.interrupted,
                progress=lambda line: self.logger.console(f"step {step}: {line}"),
            )
            if metrics is None:
                self.logger.console(f"step {step}: the {tag} evaluation stopped; it is redone when the run resumes")
                break
            self.logger.write(step, tag, metrics)
            self.logger.console(
                f"step {step}: {tag} error {100 * metrics['error']:.2f}%, loss {metrics['loss']:.4f} "
                f"({int(metrics['examples'])} examples)"
            )
            results[tag] = metrics
        else:
            self.completed_step = step
        return results
