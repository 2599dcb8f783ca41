"""Running the rows of v2 Table 1 or 2 and setting each test error beside the paper's.

`run_table` trains every selected row of `paper.TABLE1` / `paper.TABLE2` in its own
sub-workdir with `trainer.train_and_evaluate`: a finished row is read back (if its config
is unchanged), an unfinished one resumes from its checkpoint. A row that diverges
(`trainer.DivergenceError`) or ends above the fail threshold is a "fail" row, the paper's
word for test error above 20%, with its reason. `markdown_report` and `plot_report` write
the comparison; `python -m resnet_identity.ablate` is the command line.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import ml_collections

from resnet_identity import config as config_lib
from resnet_identity import trainer
from resnet_identity.analysis import paper
from resnet_identity.files import write_atomically


@dataclasses.dataclass(frozen=True)
class RowResult:
    """A finished row: its test error (None if it diverged) and, if it failed, why."""

    row: paper.AblationRow
    error: float | None
    failure: str = ""


def select_rows(table: int, keys: list[str] | None) -> tuple[paper.AblationRow, ...]:
    """The rows of v2 Table `table` named by `keys`, in that order; every row if `keys` is empty."""
    rows = paper.TABLES[table]
    if not keys:
        return rows
    known = {r.key: r for r in rows}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ValueError(f"Unknown row(s) {unknown} for Table {table}; rows are {list(known)}.")
    return tuple(known[k] for k in keys)


def scale_budget(config: ml_collections.ConfigDict, steps: int) -> None:
    """Sets `steps` training steps, moving LR boundaries and warm-up in proportion."""
    if steps < 1:
        raise ValueError(f"--steps must be positive, got {steps}.")
    per_epoch = config_lib.steps_per_epoch(config)
    total = config_lib.total_steps(config)
    unit = per_epoch if config.lr_boundaries_unit == "epochs" else 1
    ratio = steps / total
    bounds = sorted({round(b * unit * ratio) for b in config.lr_boundaries} - {0})
    config.num_train_steps = steps
    config.num_epochs = -1.0
    config.lr_boundaries = tuple(b for b in bounds if b < steps)
    config.lr_boundaries_unit = "steps"
    first = config.lr_boundaries[0] if config.lr_boundaries else steps
    config.warmup_steps = min(round(config.warmup_steps * ratio), first - 1)


def row_config(base: ml_collections.ConfigDict, row: paper.AblationRow, model: str,
               depth: int | None) -> ml_collections.ConfigDict:
    """`base` with the row's unit (and options) on `model`, optionally at `depth`."""
    config = copy.deepcopy(base)
    config.model = model
    config.model_overrides.unit = row.unit
    config.model_overrides.unit_options = dict(row.unit_options) or None
    if depth is not None:
        config.model_overrides.depth = depth
    return config


def run_row(row: paper.AblationRow, config: ml_collections.ConfigDict, workdir: str,
            fail_above: float) -> RowResult | None:
    """Trains (or resumes, or reads back) one row in workdir/<row key>; None if preempted.

    A finished row is read back only if its saved config matches `config`.
    """
    row_dir = os.path.join(workdir, row.key)
    final_path = os.path.join(row_dir, "final_metrics.json")
    failure_path = os.path.join(row_dir, "failure.json")
    if os.path.exists(final_path) or os.path.exists(failure_path):
        trainer.check_saved_config(row_dir, config, allow_change=False)
    if os.path.exists(failure_path):
        with open(failure_path) as f:
            return RowResult(row, None, json.load(f)["reason"])
    if os.path.exists(final_path):
        with open(final_path) as f:
            metrics = json.load(f)
    else:
        try:
            metrics = trainer.train_and_evaluate(config, row_dir)
        except trainer.DivergenceError as e:
            reason = "diverged: " + str(e).split(". ")[0]
            with open(failure_path, "w") as f:
                json.dump({"reason": reason}, f)
            return RowResult(row, None, reason)
        if "preempted_at_step" in metrics:
            return None
    error = metrics["test_error"]
    failure = f"test error {100 * error:.2f}% > {100 * fail_above:g}%" if error > fail_above else ""
    return RowResult(row, error, failure)


def run_table(base: ml_collections.ConfigDict, table: int, workdir: str, *, model: str = "cifar_resnet110",
              depth: int | None = None, rows: list[str] | None = None,
              fail_above: float = paper.FAIL_ERROR) -> list[RowResult] | None:
    """Runs the selected rows of v2 Table `table` in turn; None if a row was preempted."""
    if model not in paper.TABLE_MODELS[table]:
        raise ValueError(f"Table {table} reports {paper.TABLE_MODELS[table]}, not {model!r}.")
    results = []
    for row in select_rows(table, rows):
        result = run_row(row, row_config(base, row, model, depth), workdir, fail_above)
        if result is None:
            return None
        results.append(result)
    return results


def _percent(error: float | None) -> str:
    return "fail" if error is None else f"{100 * error:.2f}"


def markdown_report(results: list[RowResult], table: int, base: ml_collections.ConfigDict,
                    model: str, depth: int | None, fail_above: float) -> str:
    """table.md: one line per row, our error beside the paper's, and what the run was."""
    name = model.replace("cifar_resnet", "ResNet-")
    ours = f"depth {depth}" if depth else name
    steps = config_lib.total_steps(base)
    lines = [
        f"# v2 Table {table}, reproduced on {base.dataset}",
        "",
        f"Ours: {model} at {ours}, {steps} steps of batch {base.batch_size}, LR {base.learning_rate} "
        f"(boundaries {tuple(base.lr_boundaries)} {base.lr_boundaries_unit}), dataset `{base.dataset}`.",
        f"Paper: {name} on CIFAR-10, 64k steps of batch 128 (PAPERS.md \"v2 ablations\").",
        f"\"fail\" = test error above {100 * fail_above:g}% or a NaN/Inf loss (the paper's \"fail\": above 20%).",
        "",
    ]
    if table == 1:
        lines += ["| row | variant | on the shortcut | on F | paper error % | our error % | notes |",
                  "|---|---|---|---|---|---|---|"]
    else:
        lines += ["| row | variant | paper error % | our error % | notes |", "|---|---|---|---|---|"]
    for r in results:
        paper_error = _percent(r.row.errors[model])
        our = f"fail ({_percent(r.error)})" if r.failure and r.error is not None else (
            "fail" if r.failure else _percent(r.error))
        note = r.failure
        cells = [f"`{r.row.key}`", r.row.label]
        if table == 1:
            cells += [r.row.shortcut_factor, r.row.branch_factor]
        cells += [paper_error, our, note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_report(results: list[RowResult], model: str, fail_above: float, title: str, path: str) -> None:
    """table.png: paper vs ours per row; 'fail' bars are hatched and reach past the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fail_bar = 100 * fail_above * 1.25
    labels = [r.row.label for r in results]
    paper_values = [r.row.errors[model] for r in results]
    our_values = [r.error for r in results]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(results) + 1.5))
    height = 0.38
    for offset, values, name, color in ((-height / 2, paper_values, "paper (CIFAR-10)", "0.6"),
                                        (height / 2, our_values, "ours", "tab:blue")):
        for i, (value, result) in enumerate(zip(values, results)):
            failed = value is None or (name == "ours" and bool(result.failure))
            width = fail_bar if value is None else 100 * value
            ax.barh(i + offset, width, height, color=color, hatch="//" if failed else None,
                    edgecolor="k" if failed else color, label=name if i == 0 else None)
            text = "fail" if value is None else f"{width:.2f}" + (" (fail)" if failed else "")
            ax.text(width + 0.3, i + offset, text, va="center", fontsize=8)
    ax.axvline(100 * fail_above, color="tab:red", linestyle="--", linewidth=1,
               label=f"fail threshold ({100 * fail_above:g}%)")
    ax.set_yticks(range(len(results)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("test error (%)")
    ax.set_title(title, pad=26)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    from resnet_identity.analysis.plots import png_bytes  # imports matplotlib too

    write_atomically(path, png_bytes(fig, dpi=120))
    plt.close(fig)
