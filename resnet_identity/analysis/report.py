"""An experiment's results beside the paper's: table.md, summary.json, and table.png or
curves.png (drawn by `plots`).

Each cell of ours is a `results.Figure`, written as v1 Table 6 writes its ResNet-110 row,
"6.43 (6.61±0.16)"; one seed gives the number alone. A row is "fail" when every seed
diverged, or, in the tables that define it (v2 Tables 1-2: above 20%), when even the best
seed's error is above the threshold; the notes say why.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from etils import epath

from resnet_identity.analysis import plots
from resnet_identity.analysis.experiments import Experiment, Measure, Row
from resnet_identity.analysis.paper import NO_FIGURE
from resnet_identity.analysis.results import Figure, RunResult, our_figure
from resnet_identity.runs.files import as_path
from resnet_identity.training import config as config_lib


def notes(runs: list[RunResult], figures: list[Figure]) -> str:
    """Why a row failed: each failed seed's reason; an error above the threshold."""
    parts = [f"seed {r.seed} {r.failure}" if len(runs) > 1 else r.failure for r in runs if r.failure]
    for figure in figures:
        if figure.failed and figure.best is not None:
            parts.append(f"test error {figure.best:.2f}% > {figure.fail_above:g}%")
    return "; ".join(parts)


def _paper_text(measure: Measure) -> str:
    return measure.paper.text() if measure.paper else NO_FIGURE


def _describe(config) -> str:
    """What a run trained: model, depth if overridden, dataset, steps and batch."""
    depth = config.model_overrides.get("depth")
    model = config.model + (f" at depth {depth}" if depth else "")
    return f"{model} on {config.dataset}, {config_lib.total_steps(config)} steps of batch {config.batch_size}"


def markdown(
    experiment: Experiment,
    rows: tuple[Row, ...],
    results: Mapping[str, list[RunResult]],
    configs: Mapping[str, Any],
    fail_above: float | None,
) -> str:
    """table.md: one line per row, the paper's figure beside ours, and what we ran."""
    seeds = sorted({r.seed for runs in results.values() for r in runs})
    described = sorted({_describe(c) for c in configs.values()})
    lines = [
        f"# {experiment.title}",
        "",
        f"Paper: {experiment.setting}; figures from docs/papers.md.",
        f"Ours: {'; '.join(described)}; seed(s) {', '.join(map(str, seeds))}. "
        "A cell is the best seed's error, then (mean±std) over seeds.",
        '"fail": every seed diverged (NaN/Inf)'
        + (
            f', or the best test error is above {100 * fail_above:g}% (the paper\'s "fail").'
            if fail_above is not None
            else "."
        ),
        "",
    ]
    headers = ["row", "variant", *experiment.columns]
    for measure in rows[0].measures:
        headers += [f"paper {measure.column}", f"our {measure.column}"]
    lines += ["| " + " | ".join(headers + ["notes"]) + " |", "|" + "---|" * (len(headers) + 1)]
    for row in rows:
        runs = results[row.key]
        figures = [our_figure(m, runs, fail_above) for m in row.measures]
        cells = [f"`{row.key}`", row.label, *row.cells]
        for measure, figure in zip(row.measures, figures):
            cells += [_paper_text(measure), figure.text()]
        lines.append("| " + " | ".join(cells + [notes(runs, figures)]) + " |")
    return "\n".join(lines) + "\n"


def summary(
    experiment: Experiment,
    rows: tuple[Row, ...],
    results: Mapping[str, list[RunResult]],
    configs: Mapping[str, Any],
    fail_above: float | None,
) -> dict[str, Any]:
    """summary.json: every run's final metrics and workdir, and each row's figures."""
    entries = []
    for row in rows:
        runs = results[row.key]
        figures = {}
        for measure in row.measures:
            ours = our_figure(measure, runs, fail_above)
            figures[measure.metric] = {
                "paper": _paper_text(measure),
                "ours": ours.text(),
                "best": ours.best,
                "mean": ours.mean,
                "std": ours.std,
                "failed": ours.failed,
            }
        entries.append(
            {
                "key": row.key,
                "label": row.label,
                "model": row.model,
                "dataset": configs[row.key].dataset,
                "figures": figures,
                "notes": notes(runs, [our_figure(m, runs, fail_above) for m in row.measures]),
                "runs": [
                    {"seed": r.seed, "workdir": r.workdir, "final_metrics": r.metrics, "failure": r.failure or None}
                    for r in runs
                ],
            }
        )
    return {"experiment": experiment.name, "title": experiment.title, "rows": entries}


def write(
    experiment: Experiment,
    rows: tuple[Row, ...],
    results: Mapping[str, list[RunResult]],
    configs: Mapping[str, Any],
    fail_above: float | None,
    workdir: epath.PathLike,
) -> str:
    """Writes table.md, summary.json and table.png (curves.png for a figure); returns table.md."""
    workdir = as_path(workdir)
    report = markdown(experiment, rows, results, configs, fail_above)
    (workdir / "table.md").write_text(report)
    (workdir / "summary.json").write_text(json.dumps(summary(experiment, rows, results, configs, fail_above), indent=2))
    budgets = sorted(
        {f"{c.dataset}, {config_lib.total_steps(c)} steps of batch {c.batch_size}" for c in configs.values()}
    )
    title = f"{experiment.title.split(':')[0]}, ours: {budgets[0] if len(budgets) == 1 else 'several budgets'}"
    if experiment.panels:
        plots.plot_curves(experiment, rows, results, configs, title, workdir / "curves.png")
    else:
        plots.plot_table(experiment, rows, results, fail_above, title, workdir / "table.png")
    return report
