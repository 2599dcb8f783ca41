"""`python -m resnet_identity.ablate`, the old command of v2 Tables 1 and 2, as an alias of `reproduce`."""

import json
import os
import subprocess
import sys

from resnet_identity import ablate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_alias_runs_the_selected_rows_through_reproduce(tmp_path):
    # Three steps are compile-bound; the cheapest XLA level (conftest.py) reaches the subprocess.
    command = [
        sys.executable,
        "-m",
        "resnet_identity.ablate",
        "--table=2",
        "--rows=full_preact",
        "--preset=quick",
        "--steps=3",
        "--depth=14",
        f"--workdir={tmp_path}",
        "--config.eval_every_steps=3",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    assert "# v2 Table 2" in table and "cifar_resnet110 at depth 14 on digits, 3 steps of batch 16" in table
    assert "| `full_preact-110` | (e) full pre-activation | ResNet-110 | 6.37 |" in table
    assert (tmp_path / "full_preact-110" / "seed0" / "final_metrics.json").exists()
    saved = json.loads((tmp_path / "full_preact-110" / "seed0" / "config.json").read_text())
    assert (saved["eval_every_steps"], saved["model_overrides"]["unit"]) == (3, "full_preact")  # without --config
    assert (tmp_path / "table.png").exists() and (tmp_path / "summary.json").exists()


def test_rows_of_the_old_command_are_reproduce_rows():
    assert ablate.row_keys("2", "cifar_resnet164", None) == [
        "original-164",
        "bn_after_addition-164",
        "relu_before_addition-164",
        "relu_only_preact-164",
        "full_preact-164",
    ]
    assert ablate.row_keys("2", "cifar_resnet110", ["original"]) == ["original-110"]
    assert ablate.row_keys("1", "cifar_resnet110", ["conv_shortcut"]) == ["conv_shortcut"]
