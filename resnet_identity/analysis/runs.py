"""Training an experiment's rows, each for several seeds, resuming what is unfinished.

Every run is a normal `train.py` run (`trainer.train_and_evaluate`) in its own workdir,
`DIR/<row>/seed<seed>`:

- a finished run (`final_metrics.json`) or a diverged one (`failure.json`) is read back,
  if its saved config is the one asked for (else `ConfigError`: a new DIR, or the old
  config, is needed), and is not trained again;
- an unfinished run resumes from its newest checkpoint;
- a run whose loss or gradient norm turns NaN/Inf is recorded as failed, with the reason.

Multi-host: `train_and_evaluate` is collective, so on a pod slice every process runs this
same loop over the same runs in the same order, exactly as every process runs `train.py`;
the decisions above are made from files in the shared DIR, which process 0 alone writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
from etils import epath

from resnet_identity.analysis import report
from resnet_identity.analysis.experiments import Experiment, Row, row_config
from resnet_identity.analysis.results import RunResult
from resnet_identity.runs.files import as_path
from resnet_identity.training import config as config_lib
from resnet_identity.training import saved_config, trainer

FINAL_METRICS = "final_metrics.json"
FAILURE = "failure.json"


def run_dir(workdir: epath.PathLike, row: Row, seed: int) -> epath.Path:
    return as_path(workdir) / row.key / f"seed{seed}"


def run_once(config: ml_collections.ConfigDict, workdir: epath.PathLike) -> RunResult | None:
    """Trains (or resumes, or reads back) one run in `workdir`; None if it was preempted."""
    workdir = as_path(workdir)
    final, failure = workdir / FINAL_METRICS, workdir / FAILURE
    if final.exists() or failure.exists():
        saved_config.check_saved_config(str(workdir), config, allow_change=False)
    if failure.exists():
        return RunResult(config.seed, str(workdir), {}, json.loads(failure.read_text())["reason"])
    if final.exists():
        return RunResult(config.seed, str(workdir), json.loads(final.read_text()))
    try:
        metrics = trainer.train_and_evaluate(config, str(workdir))
    except trainer.DivergenceError as e:
        reason = "diverged: " + str(e).split(". ")[0]
        if jax.process_index() == 0:
            failure.write_text(json.dumps({"reason": reason}))
        return RunResult(config.seed, str(workdir), {}, reason)
    if "preempted_at_step" in metrics:
        return None
    return RunResult(config.seed, str(workdir), metrics)


RunOnce = Callable[[ml_collections.ConfigDict, epath.Path], RunResult | None]


def run_rows(
    rows: tuple[Row, ...],
    configs: Callable[[Row, int], ml_collections.ConfigDict],
    workdir: epath.PathLike,
    seeds: int,
    run: RunOnce = run_once,
) -> dict[str, list[RunResult]] | None:
    """Runs `seeds` seeds of every row (seed by seed, so that one seed of every row is done
    first); `configs(row, i)` is the config of seed number i, and `run` (`run_once`, or a caller's
    wrapper of it that logs) runs it. None if a run was preempted: rerunning resumes it and skips
    what finished."""
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}.")
    results: dict[str, list[RunResult]] = {row.key: [] for row in rows}
    for i in range(seeds):
        for row in rows:
            config = configs(row, i)
            result = run(config, run_dir(workdir, row, config.seed))
            if result is None:
                return None
            results[row.key].append(result)
    return results


def run_experiment(
    experiment: Experiment,
    workdir: epath.PathLike,
    *,
    base: ml_collections.ConfigDict | None = None,
    preset: str | None = None,
    steps: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    seeds: int = 1,
    rows: list[str] | None = None,
    fail_above: float | None = None,
    run: RunOnce = run_once,
) -> str | None:
    """Runs `experiment` in `workdir` and writes its outputs (`report.write`); returns table.md,
    or None if a run was preempted. Arguments as `reproduce`'s flags; `base` is a --config,
    `overrides` the --config.FIELD=VALUE overrides, `fail_above` None for the experiment's;
    `run` as `run_rows`'s."""
    if preset == "quick" and not experiment.quick:
        raise ValueError(
            f"--preset=quick shrinks the CIFAR experiments to the embedded digits; {experiment.name} "
            "trains on ImageNet at 224 and 320 crops, which it cannot stand in for. Drop --preset "
            "(docs/reproduce.md says what the ImageNet rows need)."
        )
    selected = experiment.select(rows)
    fail_above = experiment.fail_above if fail_above is None else fail_above

    def config(row: Row, seed: int) -> ml_collections.ConfigDict:
        return row_config(row, base=base, preset=preset, steps=steps, overrides=overrides, seed=seed)

    for row in selected:  # every row's config is checked before anything trains
        config_lib.validate(config(row, 0))
    results = run_rows(selected, config, workdir, seeds, run)
    if results is None:
        return None
    configs = {row.key: config(row, 0) for row in selected}
    if jax.process_index() != 0:
        return report.markdown(experiment, selected, results, configs, fail_above)
    return report.write(experiment, selected, results, configs, fail_above, workdir)
