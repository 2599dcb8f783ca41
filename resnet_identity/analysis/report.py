"""An experiment's results beside the paper's: table.md, table.png or curves.png, summary.json.

Each cell of ours is written as v1 Table 6 writes its ResNet-110 row, "6.43 (6.61±0.16)":
the best seed's error, then the mean and the sample standard deviation (ddof = 1) over the
seeds that did not diverge; one seed gives the number alone. A row is "fail" when every
seed diverged, or, in the tables that define it (v2 Tables 1-2: above 20%), when even the
best seed's error is above the threshold; the notes say why.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from etils import epath

from resnet_identity import config as config_lib
from resnet_identity.analysis.experiments import Experiment, Measure, Row
from resnet_identity.analysis.paper import NO_FIGURE
from resnet_identity.files import as_path
from resnet_identity.metric_logging import METRICS_FILE

if TYPE_CHECKING:
    from resnet_identity.analysis.runs import RunResult


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
    errors = tuple(
        None if r.failure or measure.metric not in r.metrics else 100 * r.metrics[measure.metric] for r in runs
    )
    return Figure(errors, None if fail_above is None else 100 * fail_above)


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: epath.PathLike) -> None:
    from resnet_identity.analysis.plots import png_bytes  # imports matplotlib

    as_path(path).write_bytes(png_bytes(fig, dpi=110))
    _pyplot().close(fig)


def plot_table(
    experiment: Experiment,
    rows: tuple[Row, ...],
    results: Mapping[str, list[RunResult]],
    fail_above: float | None,
    title: str,
    path: epath.PathLike,
) -> None:
    """table.png: per row and measure, the paper's error (grey) beside our best (blue), with
    our mean ± std as an error bar; a failed bar is hatched and reaches past the axis' end."""
    plt = _pyplot()
    bars = [(row, m) for row in rows for m in row.measures]
    ours = [our_figure(m, results[row.key], fail_above) for row, m in bars]
    papers = [(m.paper.value() if m.paper else None, m.paper.failed() if m.paper else False) for _, m in bars]
    known = [v for v in [f.best for f in ours] + [p for p, _ in papers] if v is not None]
    fail_width = max(known + [100 * (fail_above or 0.2)]) * 1.15
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(bars) + 1.6))
    height = 0.38
    labelled: set[str] = set()

    def once(label: str) -> str | None:  # each legend entry once
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for i, (figure, (paper_value, paper_failed)) in enumerate(zip(ours, papers)):
        if paper_value is not None or paper_failed:
            width = fail_width if paper_failed else paper_value
            ax.barh(
                i - height / 2,
                width,
                height,
                color="0.6",
                hatch="//" if paper_failed else None,
                edgecolor="k" if paper_failed else "0.6",
                label=once("paper"),
            )
            ax.text(width, i - height / 2, " fail" if paper_failed else f" {width:.2f}", va="center", fontsize=8)
        else:
            ax.text(0, i - height / 2, f" paper: {NO_FIGURE}", va="center", fontsize=8)
        width = fail_width if figure.best is None else figure.best
        ax.barh(
            i + height / 2,
            width,
            height,
            color="tab:blue",
            hatch="//" if figure.failed else None,
            edgecolor="k" if figure.failed else "tab:blue",
            label=once("ours (best seed)"),
        )
        if figure.std is not None:
            ax.errorbar(
                figure.mean,
                i + height / 2,
                xerr=figure.std,
                fmt="o",
                color="k",
                markersize=3,
                capsize=3,
                label=once("ours, mean ± std"),
            )
        ax.text(width, i + height / 2, " " + figure.text(), va="center", fontsize=8)
    if fail_above is not None:
        ax.axvline(
            100 * fail_above,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"fail threshold ({100 * fail_above:g}%)",
        )
    names = [row.label + (f" [{m.column}]" if len(row.measures) > 1 else "") for row, m in bars]
    ax.set_yticks(range(len(bars)), [n if len(n) < 48 else n[:45] + "..." for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, fail_width * 1.35)
    ax.set_xlabel("test error (%)")
    ax.set_title(title, pad=26, fontsize=10)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)


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


def _mean_series(runs: list[RunResult], tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean over the runs that logged each step) of one tag."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in read_curves(run.workdir).get(tag, {}).items():
            by_step.setdefault(step, []).append(value)
    steps = np.array(sorted(by_step), dtype=float)
    return steps, np.array([np.mean(by_step[s]) for s in sorted(by_step)], dtype=float)


def plot_curves(
    experiment: Experiment,
    rows: tuple[Row, ...],
    results: Mapping[str, list[RunResult]],
    configs: Mapping[str, Any],
    title: str,
    path: epath.PathLike,
) -> None:
    """curves.png, one panel per `experiment.panels` entry holding a row that ran (mean over seeds);
    a curve's label names the depth it trained at where that is not the row's own.

    "error" (v1 Fig. 6): training error thin and dashed, test error bold, in %.
    "loss" (v2 Fig. 6): training loss dashed on the left axis, test error solid on the right.
    """
    from resnet_identity.analysis.plots import COLORS

    plt = _pyplot()
    ran = {row.key: row for row in rows}
    panels = [p for p in experiment.panels if any(k in ran for k in p.rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        right = ax.twinx() if experiment.curves == "loss" else ax
        for color, key in zip(COLORS, [k for k in panel.rows if k in ran]):
            runs = results[key]
            label = ran[key].label if experiment.curves == "error" else f"{ran[key].label} ({ran[key].cells[-1]})"
            depth = configs[key].model_overrides.get("depth")
            label += f", at depth {depth}" if depth else ""
            train_tag = "train/error" if experiment.curves == "error" else "train/loss"
            steps, train = _mean_series(runs, train_tag)
            steps_test, test = _mean_series(runs, "test/error")
            scale = 100 if experiment.curves == "error" else 1
            ax.plot(steps, scale * train, color=color, linewidth=0.9, linestyle="--")
            right.plot(
                steps_test,
                100 * test,
                color=color,
                linewidth=2.4,
                label=label,
                marker="o" if len(steps_test) < 8 else None,
            )
        ax.plot(
            [],
            [],
            color="k",
            linewidth=0.9,
            linestyle="--",
            label="train error" if experiment.curves == "error" else "train loss",
        )
        ax.set_xlabel("iterations")
        ax.set_ylabel("error (%)" if experiment.curves == "error" else "training loss")
        if right is not ax:
            right.set_ylabel("test error (%)")
        ax.set_title(panel.title, fontsize=10)
        ax.grid(alpha=0.3)
        handles = ax.get_legend_handles_labels()
        if right is not ax:
            handles = tuple(a + b for a, b in zip(right.get_legend_handles_labels(), handles))
        ax.legend(*handles, fontsize=7, loc="upper right")
    fig.suptitle(
        title + "  (bold: test error; dashed: training " + ("error" if experiment.curves == "error" else "loss") + ")",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)


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
        plot_curves(experiment, rows, results, configs, title, workdir / "curves.png")
    else:
        plot_table(experiment, rows, results, fail_above, title, workdir / "table.png")
    return report
