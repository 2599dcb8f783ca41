"""What an experiment's runs produced, as `report` tabulates it and `plots` draws it.

- `RunResult`: one seed of one row, its final metrics or why it failed (`runs` makes them).
- `Figure` / `our_figure`: our error for one measure of a row over its seeds, written as
  v1 Table 6 writes its ResNet-110 row, "6.43 (6.61±0.16)": the best seed's error, then the
  mean and the sample standard deviation (ddof = 1) over the seeds that did not diverge.
- `read_curves`: a run's logged metrics through training (its metrics.jsonl).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
from etils import epath

from resnet_identity.analysis.experiments import Measure
from resnet_identity.runs.files import as_path
from resnet_identity.runs.metric_logging import METRICS_FILE


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One seed of one row: its final metrics ({} if it failed) and, if it failed, why."""

    seed: int
    workdir: str
    metrics: dict[str, Any]
    failure: str = ""


@dataclasses.dataclass(frozen=True)
class Figure:
    """Our figure for one measure of one row, over its seeds, in percent."""

    errors: tuple[float | None, ...]  # per seed; None: the run failed
    fail_above: float | None  # in percent

    @property
    def finite(self) -> list[float]:
        return [e for e in self.errors if e is not None]

    @property
    def best(self) -> float | None:
        return min(self.finite) if self.finite else None

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.finite)) if self.finite else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.finite, ddof=1)) if len(self.finite) > 1 else None

    @property
    def failed(self) -> bool:
        return self.best is None or (self.fail_above is not None and self.best > self.fail_above)

    def text(self) -> str:
        if self.best is None:
            return "fail"
        number = f"{self.best:.2f}" if self.std is None else f"{self.best:.2f} ({self.mean:.2f}±{self.std:.2f})"
        return f"fail: {number}" if self.failed else number


def our_figure(measure: Measure, runs: list[RunResult], fail_above: float | None) -> Figure:
    """`measure` over `runs`; `fail_above` is a fraction, as `Experiment.fail_above`."""
    errors = tuple(
        None if r.failure or measure.metric not in r.metrics else 100 * r.metrics[measure.metric] for r in runs
    )
    return Figure(errors, None if fail_above is None else 100 * fail_above)


def read_curves(workdir: epath.PathLike) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from a run's metrics.jsonl ("train/error", "test/error", ...)."""
    series: dict[str, dict[int, float]] = {}
    path = as_path(workdir) / METRICS_FILE
    if not path.exists():
        return series
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            for tag, value in record.items():
                if tag != "step":
                    series.setdefault(tag, {})[record["step"]] = value
    return series
