"""`reproduce`: every CIFAR experiment end to end on the quick preset, the table's format (the
paper's figure, best (mean±std) over seeds, "fail" rows), resume/skip, and the paper's figures
read from docs/papers.md."""

import json
import os
import subprocess
import sys

import pytest

from resnet_identity.analysis import experiments, paper, runs
from resnet_identity.training import config as config_lib
from resnet_identity.training import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table_rows(table: str) -> dict[str, list[str]]:
    """{row key: its cells} of a table.md."""
    rows = {}
    for line in table.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_paper_figure_is_read_from_docs_papers_md():
    texts = {
        (e.name, r.key, m.metric): m.paper.text() if m.paper else paper.NO_FIGURE
        for e in experiments.EXPERIMENTS.values()
        for r in e.rows
        for m in r.measures
    }
    assert texts["v1-table6", "resnet110", "test_error"] == "6.43 (6.61±0.16)"  # as v1 Table 6 prints it
    assert texts["v1-table6", "resnet20", "test_error"] == "8.75"
    assert texts["v1-table6", "plain20", "test_error"] == "—"  # the plain nets are only drawn (v1 Fig. 6)
    assert texts["v2-table1", "dropout_shortcut", "test_error"] == "fail"
    assert texts["v2-table2", "full_preact-164", "test_error"] == "5.46"
    assert texts["v2-table3", "cifar100-preact1001", "test_error"] == "22.71"
    assert texts["v2-table5", "resnet152", "test_224_error"] == "23.0"
    assert texts["v2-table5", "preact_resnet200_scale_aspect", "test_320_error"] == "20.1"
    assert texts["v2-table5", "resnet200", "test_224_error"] == "—"
    with pytest.raises(KeyError, match="rows labelled 'ResNet-7'"):
        paper.PaperFigure("v1 Table 6", "ResNet-7", "best error (%)").text()


def test_tables_are_parsed_by_heading_and_row_label(tmp_path):
    page = tmp_path / "papers.md"
    page.write_text(
        "## Results\n\n### v9 Table 4: a test\n\nProse.\n\n| model | error (%) | std (%) |\n"
        "|---|---|---|\n| Net-1 | 3.50 | — |\n| Net-2 | fail | 0.1 |\n\n### v9 Table 40\n\n"
        "| model | error (%) |\n|---|---|\n| Net-1 | 9 |\n"
    )
    assert paper.figure("v9 Table 4", "Net-1", "error (%)", page) == "3.50"
    assert paper.figure("v9 Table 40", "Net-1", "error (%)", page) == "9"
    assert paper.PaperFigure("v9 Table 4", "Net-1", std="std (%)").text(page) == "3.50"
    assert paper.PaperFigure("v9 Table 4", "Net-2").failed(page)
    assert paper.percent("—") is None and paper.percent("12.5") == 12.5


@pytest.mark.parametrize("name", sorted(experiments.EXPERIMENTS))
def test_every_row_is_a_valid_config(name):
    experiment = experiments.EXPERIMENTS[name]
    for row in experiment.rows:
        config = experiments.row_config(row)
        config_lib.validate(config)
        assert (config.model, config.dataset) == (row.model, row.dataset)
        if experiment.quick:
            quick = experiments.row_config(row, preset="quick", seed=1)
            config_lib.validate(quick)
            assert (quick.dataset, quick.num_train_steps, quick.seed) == ("digits", 20, 1)
    keys = [r.key for r in experiment.rows]
    assert len(keys) == len(set(keys))
    assert all(k in keys for panel in experiment.panels for k in panel.rows)


def test_rows_and_their_configs():
    table6 = experiments.EXPERIMENTS["v1-table6"]
    assert [r.key for r in table6.select(None)][-1] == "resnet110"  # ResNet-1202 only when asked for
    assert table6.select(["resnet1202"])[0].model == "cifar_resnet1202"
    with pytest.raises(ValueError, match="no row"):
        table6.select(["resnet7"])
    row = experiments.EXPERIMENTS["v2-table3"].select(["cifar100-resnet1001"])[0]
    config = experiments.row_config(row)
    assert (config.model, config.dataset, config.num_train_steps) == ("cifar_resnet1001", "cifar100", 64_000)
    config = experiments.row_config(row, preset="quick", overrides={"model_overrides.depth": 20, "batch_size": 8})
    assert (config.model_overrides.depth, config.batch_size, config.dataset) == (20, 8, "digits")
    base = config_lib.default_config()  # a --config on another dataset keeps it; one on CIFAR takes the row's
    base.dataset = "synthetic"
    assert experiments.row_config(row, base=base).dataset == "synthetic"
    base.dataset = "cifar10"
    assert experiments.row_config(row, base=base).dataset == "cifar100"
    gated = experiments.EXPERIMENTS["v2-table1"].select(["exclusive_gating_b-7"])[0]
    assert experiments.row_config(gated).model_overrides.unit_options == {"gate_bias_init": -7.0}
    with pytest.raises(ValueError, match="cannot stand in"):
        runs.run_experiment(experiments.EXPERIMENTS["v2-table5"], "/nonexistent", preset="quick")


def test_scale_budget_keeps_the_schedule_shape():
    from resnet_identity.training import recipes

    c = recipes.cifar("cifar_resnet110")  # 64k steps, cuts at 32k and 48k, warm-up 400
    experiments.scale_budget(c, 640)
    assert (tuple(c.schedule.boundaries), c.schedule.warmup_steps) == ((320, 480), 4)
    config_lib.validate(c)
    c = recipes.cifar("cifar_resnet110", "released_code")  # 200 epochs, cuts at epochs 80 and 121
    experiments.scale_budget(c, 2000)
    assert (c.schedule.boundaries_unit, tuple(c.schedule.boundaries)) == ("steps", (800, 1210))
    experiments.scale_budget(c, 2)
    assert tuple(c.schedule.boundaries) == (1,)
    config_lib.validate(c)


def test_two_seeds_give_best_mean_and_std_and_rerunning_trains_nothing(tmp_path, monkeypatch):
    experiment = experiments.EXPERIMENTS["v1-table6"]
    table = runs.run_experiment(experiment, tmp_path, preset="quick", seeds=2, rows=["resnet110"])
    (cells,) = table_rows(table).values()
    summary = json.loads((tmp_path / "summary.json").read_text())
    (row,) = summary["rows"]
    errors = [100 * run["final_metrics"]["test_error"] for run in row["runs"]]
    assert [run["workdir"] for run in row["runs"]] == [str(tmp_path / "resnet110" / f"seed{s}") for s in (0, 1)]
    best, mean, std = min(errors), sum(errors) / 2, abs(errors[0] - errors[1]) / 2**0.5
    assert cells[:4] == ["`resnet110`", "ResNet-110", "6.43 (6.61±0.16)", f"{best:.2f} ({mean:.2f}±{std:.2f})"]
    assert row["figures"]["test_error"]["std"] == pytest.approx(std)
    assert "cifar_resnet110 at depth 8 on digits, 20 steps of batch 16" in table
    assert (tmp_path / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    monkeypatch.setattr(trainer, "train_and_evaluate", lambda *a, **k: pytest.fail("a finished run was trained"))
    assert runs.run_experiment(experiment, tmp_path, preset="quick", seeds=2, rows=["resnet110"]) == table
    with pytest.raises(config_lib.ConfigError, match="different config"):
        runs.run_experiment(experiment, tmp_path, preset="quick", rows=["resnet110"], overrides={"batch_size": 8})


# Bottleneck rows (v2 Table 3, Fig. 6) train 10 of the quick preset's 20 steps, to keep the suite short.
def test_figures_draw_curves(tmp_path):
    rows = ["cifar10-preact1001"]
    table = runs.run_experiment(experiments.EXPERIMENTS["v2-fig6"], tmp_path, preset="quick", rows=rows, steps=10)
    assert list(table_rows(table)) == rows
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "table.png").exists()


def test_the_console_holds_a_line_per_run_and_the_table_and_each_log_its_run(tmp_path):
    """The command on a relative --workdir: two quick runs print four lines before table.md
    (every evaluation of the runs printed 377 lines before); each run's full output is its train.log."""
    done = subprocess.run(
        [sys.executable, "-m", "resnet_identity.reproduce", "v1-fig6", "--preset=quick", "--rows=plain20,resnet20"]
        + ["--workdir=figure"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    table = (tmp_path / "figure" / "table.md").read_text()
    assert lines[0] == "2 run(s); each run's full log is figure/<row>/seed<S>/train.log."
    for number, row in enumerate(["plain20", "resnet20"], 1):
        final = json.loads((tmp_path / "figure" / row / "seed0" / "final_metrics.json").read_text())
        assert lines[number].startswith(
            f"[{number}/2] {row}/seed0: test error {100 * final['test_error']:.2f}%, test top5 error "
        )
        log = (tmp_path / "figure" / row / "seed0" / "train.log").read_text()
        assert "step 20/20: loss" in log and log.endswith(f"final: test error {100 * final['test_error']:.2f}%\n")
    assert lines[3:] == table.splitlines()
    assert (tmp_path / "figure" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "name,row,steps", [("v2-table2", "full_preact-110", None), ("v2-table3", "cifar100-resnet164", 10)]
)
def test_quick_tables_run_end_to_end(name, row, steps, tmp_path):
    table = runs.run_experiment(experiments.EXPERIMENTS[name], tmp_path, preset="quick", rows=[row], steps=steps)
    (cells,) = table_rows(table).values()
    error = 100 * json.loads((tmp_path / row / "seed0" / "final_metrics.json").read_text())["test_error"]
    figure = experiments.EXPERIMENTS[name].select([row])[0].measures[0].paper.text()
    assert cells[-3:-1] == [figure, f"{error:.2f}" if name == "v2-table3" or error <= 20 else f"fail: {error:.2f}"]


def test_a_diverged_run_is_a_fail_row_with_its_reason(tmp_path):
    experiment = experiments.EXPERIMENTS["v2-table1"]
    overrides = {"schedule.learning_rate": 1e30}  # the weights overflow float32 by the second step
    table = runs.run_experiment(experiment, tmp_path, preset="quick", rows=["dropout_shortcut"], overrides=overrides)
    cells = table_rows(table)["dropout_shortcut"]
    assert cells[2:4] == ["fail", "fail"]
    assert cells[4].startswith("diverged: Loss or gradient norm became NaN/Inf at step")
    assert json.loads((tmp_path / "summary.json").read_text())["rows"][0]["runs"][0]["failure"] == cells[4]


def test_the_command_line_names_the_experiments_and_the_fields(tmp_path):
    def reproduce(*args):
        return subprocess.run(
            [sys.executable, "-m", "resnet_identity.reproduce", *args, f"--workdir={tmp_path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = reproduce("v3-table9")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "name one experiment ('v3-table9' is not one): v1-table6, v1-fig6" in done.stderr
    done = reproduce("v1-table6", "--config.batch_sise=8")  # an override without --config: each row's recipe
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no config field 'batch_sise'. Did you mean 'batch_size'?" in done.stderr
