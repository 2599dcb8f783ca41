"""The papers' published figures, as data to compare our models and runs against.

The tables of results are read from `docs/papers.md`, the project's account of both papers,
so that each published figure is written down once, there: every table sits under a `###`
heading naming it ("v1 Table 6", "v2 Table 3"), its first column is the row label, and each
other column holds one figure in percent, `fail` (a failed run, test error above 20%) or `—`
(no figure). `figure` finds one; `PaperFigure` names one for an experiment's row.

Exact parameter counts and multiply-adds (docs/papers.md "Exact trainable parameter counts",
"Compute") are keyed by our model names here, for the model notebook and its tests.
"""

from __future__ import annotations

import dataclasses
import functools
import re

from etils import epath

from resnet_identity.runs.files import as_path

# v2 Table 1's footnote: "fail" means test error above 20% on CIFAR-10.
FAIL_ERROR = 0.20

# Beside the package in a source checkout: the repository's docs.
PAPERS_MD = as_path(__file__).resolve().parents[2] / "docs" / "papers.md"
NO_FIGURE = "—"  # how docs/papers.md (and our tables) mark a cell the paper leaves empty

# Exact trainable parameters (docs/papers.md "Exact trainable parameter counts"). CIFAR basic nets
# use option A; the plain nets have the same count, since option A shortcuts are parameter-free.
PARAMETERS: dict[str, int] = {
    "cifar_resnet20": 269_722,
    "cifar_resnet32": 464_154,
    "cifar_resnet44": 658_586,
    "cifar_resnet56": 853_018,
    "cifar_resnet110": 1_727_962,
    "cifar_plain20": 269_722,
    "cifar_plain32": 464_154,
    "cifar_plain44": 658_586,
    "cifar_plain56": 853_018,
    "cifar_plain110": 1_727_962,
    "cifar_preact164": 1_703_258,
    "cifar_preact1001": 10_327_706,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnet200": 64_673_832,
    "preact_resnet200": 64_666_152,
}

# Forward multiply-adds per image, in units of 1e9 (docs/papers.md "Compute"): v1 Table 1 at
# 224x224 with the stride on the first 1x1, and v2's CIFAR pre-act nets at 32x32.
GIGA_MACS: dict[str, float] = {
    "resnet18": 1.8,
    "resnet34": 3.6,
    "resnet50": 3.8,
    "resnet101": 7.6,
    "resnet152": 11.3,
    "cifar_preact164": 0.25,
    "cifar_preact1001": 1.49,
}


@dataclasses.dataclass(frozen=True)
class Table:
    """One markdown table: the `###` heading above it, its column headers and its rows."""

    heading: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def _cells(line: str) -> tuple[str, ...]:
    return tuple(cell.strip() for cell in line.strip().strip("|").split("|"))


def parse_tables(markdown: str) -> list[Table]:
    """Every table of `markdown`, each with the text of the nearest `###` heading above it."""
    tables, heading, block = [], "", []
    for line in markdown.splitlines() + [""]:
        stripped = line.strip()
        if stripped.startswith("|"):
            block.append(stripped)
            continue
        if len(block) > 2 and set(block[1]) <= set("|-: "):  # header, separator, rows
            tables.append(Table(heading, _cells(block[0]), tuple(_cells(b) for b in block[2:])))
        block = []
        if stripped.startswith("#"):
            heading = stripped.lstrip("#").strip()
    return tables


@functools.cache
def _tables(path: str) -> tuple[Table, ...]:
    return tuple(parse_tables(epath.Path(path).read_text()))


def tables(path: epath.PathLike | None = None) -> tuple[Table, ...]:
    """The tables of docs/papers.md (or of `path`), read once per process."""
    source = epath.Path(path) if path is not None else PAPERS_MD
    if not source.exists():
        raise FileNotFoundError(
            f"{source} is missing: the paper's figures are read from docs/papers.md, "
            "which a source checkout of the repository has."
        )
    return _tables(str(source))


def find_table(name: str, path: epath.PathLike | None = None) -> Table:
    """The table whose heading names `name` ("v1 Table 6") as a whole phrase."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(name)}(?![\w.])")
    found = [t for t in tables(path) if pattern.search(t.heading)]
    if len(found) != 1:
        headings = [t.heading for t in tables(path) if t.heading]
        raise KeyError(f"{len(found)} tables of docs/papers.md are headed {name!r}; headings: {headings}")
    return found[0]


def figure(table: str, row: str, column: str, path: epath.PathLike | None = None) -> str:
    """The cell of `table` at row label `row` and column header `column`, as written there."""
    found = find_table(table, path)
    if column not in found.columns:
        raise KeyError(f"{table} in docs/papers.md has no column {column!r}; columns: {list(found.columns)}")
    matches = [r for r in found.rows if r[0] == row]
    if len(matches) != 1:
        raise KeyError(
            f"{table} in docs/papers.md has {len(matches)} rows labelled {row!r}; rows: {[r[0] for r in found.rows]}"
        )
    return matches[0][found.columns.index(column)]


def percent(cell: str) -> float | None:
    """A cell's figure as a number; None for `fail` or `—`."""
    try:
        return float(cell)
    except ValueError:
        if cell in ("fail", NO_FIGURE):
            return None
        raise ValueError(f"{cell!r} in docs/papers.md is neither a number, 'fail' nor {NO_FIGURE!r}.") from None


@dataclasses.dataclass(frozen=True)
class PaperFigure:
    """Where a row's published figure sits in docs/papers.md.

    `column` holds the best (or only) error; `mean` and `std` name the columns of a mean and
    standard deviation over runs, where the table has them (v1 Table 6).
    """

    table: str
    row: str
    column: str = "error (%)"
    mean: str | None = None
    std: str | None = None

    def cells(self, path: epath.PathLike | None = None) -> tuple[str, str | None, str | None]:
        """(best, mean, std) as written; mean and std None where the table has no such column."""
        best = figure(self.table, self.row, self.column, path)
        mean = figure(self.table, self.row, self.mean, path) if self.mean else None
        std = figure(self.table, self.row, self.std, path) if self.std else None
        return best, mean, std

    def text(self, path: epath.PathLike | None = None) -> str:
        """As v1 Table 6 prints it: "6.43 (6.61±0.16)", "8.75", "fail" or "—"."""
        best, mean, std = self.cells(path)
        if mean in (None, NO_FIGURE) or std in (None, NO_FIGURE):
            return best
        return f"{best} ({mean}±{std})"

    def value(self, path: epath.PathLike | None = None) -> float | None:
        """The best (or only) error in percent; None for `fail` or no figure."""
        return percent(self.cells(path)[0])

    def failed(self, path: epath.PathLike | None = None) -> bool:
        return self.cells(path)[0] == "fail"
