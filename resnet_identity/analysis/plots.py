"""Figures in the papers' styles, drawn with matplotlib.

On axes the caller owns (a notebook's):
- `plot_error_curves`: error vs iterations, thin lines for training error and bold for test
  error, one colour per network (v1 Fig. 1 and 6, v2 Fig. 1 and 6).
- `plot_unit_series`: a per-unit quantity through depth (v2 Sec. 3-4 signal analysis), with
  stage boundaries marked.
- `draw_unit`: one residual unit as a column of boxes, shortcut on the side (v2 Fig. 4),
  drawn from the ops that `unit_ops.unit_ops` read off the traced code.
- `png_bytes` / `show`: a figure as a 256-colour PNG (a third of matplotlib's RGBA size,
  the same pixels to the eye), saved and shown from one set of bytes.

Written to a PNG file, for `reproduce`'s report (`report.write`); they draw on a bare
`matplotlib.figure.Figure`, so no pyplot backend is chosen or changed:
- `plot_table`: a table's rows, the paper's error beside ours.
- `plot_curves`: a curves figure's panels (v1 Fig. 6, v2 Fig. 6), mean over seeds.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.figure
import numpy as np
from etils import epath
from matplotlib.ticker import MaxNLocator

from resnet_identity.analysis.experiments import Experiment, Row
from resnet_identity.analysis.paper import NO_FIGURE
from resnet_identity.analysis.results import RunResult, our_figure, read_curves
from resnet_identity.analysis.unit_ops import Op
from resnet_identity.runs.files import as_path, write_atomically

COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:gray")


def error_series(metrics: Mapping[str, Mapping[int, float]], tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, error in %) of one tag of `metric_logging.read_metrics` output, step-sorted."""
    points = sorted(metrics.get(tag, {}).items())
    steps = np.array([s for s, _ in points], dtype=float)
    return steps, 100 * np.array([v for _, v in points], dtype=float)


def plot_error_curves(
    ax,
    runs: Mapping[str, Mapping[str, Mapping[int, float]]],
    *,
    train_tag: str = "train/error",
    test_tag: str = "test/error",
) -> None:
    """Train (thin) and test (bold) error of each run vs iterations, on one axis.

    `runs` maps a legend label to `read_metrics(workdir)`.
    """
    for color, (label, metrics) in zip(COLORS, runs.items()):
        steps, train = error_series(metrics, train_tag)
        ax.plot(steps, train, color=color, linewidth=0.8, alpha=0.8)
        steps, test = error_series(metrics, test_tag)
        ax.plot(steps, test, color=color, linewidth=2.5, marker="o" if len(steps) < 8 else None, label=label)
    ax.plot([], [], color="k", linewidth=0.8, label="train (thin)")
    ax.plot([], [], color="k", linewidth=2.5, label="test (bold)")
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_unit_series(
    ax,
    series: Mapping[str, np.ndarray | None],
    *,
    ylabel: str,
    stage_sizes: Sequence[int] = (),
    log: bool = True,
    reference: Mapping[str, np.ndarray] | None = None,
) -> None:
    """One curve per network of a per-unit quantity against the unit index l.

    A None series is skipped but keeps its colour, so colours match across panels.
    Non-finite or non-positive values (overflow, underflow) are left out of a log plot and
    marked with an x at the first unit where they occur. `reference` curves are dashed.
    """
    for color, (label, values) in zip(COLORS, series.items()):
        if values is None:
            continue
        values = np.asarray(values, dtype=float)
        units = np.arange(len(values))
        bad = ~np.isfinite(values) | ((values <= 0) if log else False)
        shown = np.where(bad, np.nan, values)
        ax.plot(units, shown, color=color, linewidth=1.5, label=label)
        if bad.any():
            first = int(np.argmax(bad))
            finite = shown[np.isfinite(shown)]
            # An overflow is marked at the curve's top, an underflow to 0 at its bottom.
            overflow = not np.isfinite(values[first])
            level = (finite.max() if overflow else finite.min()) if finite.size else 1.0
            ax.plot([first], [level], marker="x", color=color, markersize=9, linestyle="none")
        if reference and label in reference:
            ax.plot(units, reference[label], color=color, linewidth=1, linestyle="--")
    for boundary in np.cumsum(stage_sizes)[:-1]:
        ax.axvline(boundary - 0.5, color="0.7", linewidth=0.8, linestyle=":")
    if log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("unit l (input x_l)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both" if not log else "major")


_BOX = {
    "conv": ("weight", "#b0c4de"),
    "bn": ("BN", "#f3e79b"),
    "relu": ("ReLU", "#f4a582"),
    "dropout": ("dropout", "#d9d9d9"),
    "gate": ("gate", "#c2a5cf"),
    "scale": ("scale", "#d9d9d9"),
}


def _box_text(op: Op) -> str:
    name, _ = _BOX.get(op.kind, (op.kind, None))
    if op.kind == "conv":
        return "weight " + op.label.split("conv ")[-1].split(",")[0]
    if op.kind == "scale":
        return op.label
    return name


def _arrow(ax, y_from: float, y_to: float) -> None:
    ax.annotate("", xy=(0, y_to), xytext=(0, y_from), arrowprops={"arrowstyle": "->"})


def _box(ax, y: float, op: Op) -> None:
    ax.text(
        0,
        y,
        _box_text(op),
        ha="center",
        va="center",
        fontsize=9,
        bbox={"boxstyle": "round,pad=0.3", "facecolor": _BOX.get(op.kind, ("", "white"))[1]},
    )


def _column(ax, ops: Sequence[Op], y: float, arrow_from: float) -> float:
    """Draws `ops` one box per row below `y`, each with an arrow from the row above, then the
    arrow into the next row; returns that row's y."""
    for op in ops:
        y -= 1
        _arrow(ax, y + arrow_from, y + 0.3)
        _box(ax, y, op)
    y -= 1
    _arrow(ax, y + arrow_from, y + 0.25)
    return y


def draw_unit(ax, ops: Sequence[Op], title: str) -> None:
    """Draws a unit top (x_l) to bottom (x_{l+1}), branch in the middle, shortcut on the right.

    Every op before the addition is drawn on the branch: exact for the units of v2 Fig. 4 /
    Table 2; for Table 1's units the scalings and gates of the shortcut land there too.
    """
    branch = [op for op in ops if op.kind not in ("add", "shortcut") and not op.after_addition]
    after = [op for op in ops if op.after_addition]
    shortcut = next((op.label.split(": ", 1)[1] for op in ops if op.kind == "shortcut"), "identity")
    ax.text(0, 0, "$x_l$", ha="center", va="center", fontsize=11)
    y = _column(ax, branch, 0.0, arrow_from=0.7)
    ax.text(
        0, y, "+", ha="center", va="center", fontsize=13, bbox={"boxstyle": "circle,pad=0.15", "facecolor": "white"}
    )
    ax.plot([0.15, 1.1, 1.1], [-0.1, -0.1, y], color="k", linewidth=1)
    ax.annotate("", xy=(0.2, y), xytext=(1.1, y), arrowprops={"arrowstyle": "->"})
    ax.text(1.2, y / 2, shortcut, rotation=90, ha="left", va="center", fontsize=8)
    y = _column(ax, after, y, arrow_from=0.75)
    ax.text(0, y, "$x_{l+1}$", ha="center", va="center", fontsize=11)
    ax.set_xlim(-1.2, 1.8)
    ax.set_ylim(y - 0.6, 0.6)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def png_bytes(fig, dpi: int = 100) -> bytes:
    """`fig` as a PNG quantised to 256 colours: line plots use far fewer, and the file is
    about a third of matplotlib's RGBA PNG, which keeps committed notebooks small."""
    from PIL import Image  # a matplotlib dependency

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    buffer.seek(0)
    out = io.BytesIO()
    Image.open(buffer).convert("RGB").quantize(256).save(out, format="PNG", optimize=True)
    return out.getvalue()


def show(fig, path: epath.PathLike | None = None, dpi: int = 100) -> None:
    """Displays `fig` in a notebook as `png_bytes`, writes the same bytes to `path` (local or
    gs://) if given, and closes it (so the inline backend does not show it a second time)."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    data = png_bytes(fig, dpi)
    if path:
        as_path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
    display(Image(data))
    plt.close(fig)


def _write_png(fig: matplotlib.figure.Figure, path: epath.PathLike) -> None:
    as_path(path).write_bytes(png_bytes(fig, dpi=110))


def _legend_once(ax, **options) -> None:
    """A legend with each label once: the first artist that carries it."""
    first: dict[str, Any] = {}
    for handle, label in zip(*ax.get_legend_handles_labels()):
        first.setdefault(label, handle)
    ax.legend(list(first.values()), list(first), **options)


def _bar(ax, y: float, width: float, height: float, color: str, failed: bool, label: str) -> None:
    """A horizontal bar, hatched and outlined in black when it stands for a failure."""
    ax.barh(
        y, width, height, color=color, hatch="//" if failed else None, edgecolor="k" if failed else color, label=label
    )


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
    bars = [(row, m) for row in rows for m in row.measures]
    ours = [our_figure(m, results[row.key], fail_above) for row, m in bars]
    papers = [(m.paper.value() if m.paper else None, m.paper.failed() if m.paper else False) for _, m in bars]
    known = [v for v in [f.best for f in ours] + [p for p, _ in papers] if v is not None]
    fail_width = max(known + [100 * (fail_above or 0.2)]) * 1.15
    fig = matplotlib.figure.Figure(figsize=(8.5, 0.55 * len(bars) + 1.6))
    ax = fig.subplots()
    height = 0.38
    for i, (figure, (paper_value, paper_failed)) in enumerate(zip(ours, papers)):
        if paper_value is not None or paper_failed:
            width = fail_width if paper_failed else paper_value
            _bar(ax, i - height / 2, width, height, "0.6", paper_failed, "paper")
            ax.text(width, i - height / 2, " fail" if paper_failed else f" {width:.2f}", va="center", fontsize=8)
        else:
            ax.text(0, i - height / 2, f" paper: {NO_FIGURE}", va="center", fontsize=8)
        width = fail_width if figure.best is None else figure.best
        _bar(ax, i + height / 2, width, height, "tab:blue", figure.failed, "ours (best seed)")
        if figure.std is not None:
            ax.errorbar(
                figure.mean,
                i + height / 2,
                xerr=figure.std,
                fmt="o",
                color="k",
                markersize=3,
                capsize=3,
                label="ours, mean ± std",
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
    _legend_once(ax, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    _write_png(fig, path)


def _mean_series(runs: list[RunResult], tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean over the runs that logged each step) of one tag."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in read_curves(run.workdir).get(tag, {}).items():
            by_step.setdefault(step, []).append(value)
    steps = np.array(sorted(by_step), dtype=float)
    return steps, np.array([np.mean(by_step[s]) for s in sorted(by_step)], dtype=float)


def _curves_panel(ax, rows: Sequence[Row], results, configs, curves: str) -> None:
    """One panel of `plot_curves`: each row's curves, mean over its seeds, one colour per row."""
    right = ax.twinx() if curves == "loss" else ax
    for color, row in zip(COLORS, rows):
        label = row.label if curves == "error" else f"{row.label} ({row.cells[-1]})"
        depth = configs[row.key].model_overrides.get("depth")
        label += f", at depth {depth}" if depth else ""
        steps, train = _mean_series(results[row.key], "train/error" if curves == "error" else "train/loss")
        steps_test, test = _mean_series(results[row.key], "test/error")
        ax.plot(steps, (100 if curves == "error" else 1) * train, color=color, linewidth=0.9, linestyle="--")
        right.plot(
            steps_test, 100 * test, color=color, linewidth=2.4, label=label, marker="o" if len(steps_test) < 8 else None
        )
    ax.plot([], [], color="k", linewidth=0.9, linestyle="--", label=f"train {'error' if curves == 'error' else 'loss'}")
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)" if curves == "error" else "training loss")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()
    if right is not ax:
        right.set_ylabel("test error (%)")
        handles = tuple(a + b for a, b in zip(right.get_legend_handles_labels(), handles))
    ax.legend(*handles, fontsize=7, loc="upper right")


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
    ran = {row.key: row for row in rows}
    panels = [p for p in experiment.panels if any(k in ran for k in p.rows)]
    fig = matplotlib.figure.Figure(figsize=(5.2 * len(panels), 4.2))
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _curves_panel(ax, [ran[k] for k in panel.rows if k in ran], results, configs, experiment.curves)
        ax.set_title(panel.title, fontsize=10)
    training = "error" if experiment.curves == "error" else "loss"
    fig.suptitle(f"{title}  (bold: test error; dashed: training {training})", fontsize=10)
    fig.tight_layout()
    _write_png(fig, path)
