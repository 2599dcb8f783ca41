"""Executes every notebook top to bottom with its small settings (RESNET_IDENTITY_SMALL=1)."""

import json
import os
import subprocess
import sys

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
NAMES = ["models", "signal_propagation", "training_curves"]


@pytest.fixture(scope="module")
def this_python_kernel(tmp_path_factory):
    """A `python3` kernelspec that runs this interpreter, first on JUPYTER_PATH.

    The notebooks must run in the environment under test, not whatever `python3` kernel a
    machine has installed elsewhere.
    """
    path = tmp_path_factory.mktemp("jupyter")
    spec_dir = path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (under test)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_with_small_settings(name, this_python_kernel, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", this_python_kernel)
    monkeypatch.setenv("RESNET_IDENTITY_SMALL", "1")
    # XLA_FLAGS (the cheapest optimisation level, conftest.py) reaches the kernel from here.
    nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": NOTEBOOKS}}
    )
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "RESNET_IDENTITY_SMALL" in code[0].source
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{name}.ipynb drew no figure"


@pytest.mark.parametrize("name", NAMES)
def test_a_full_size_run_writes_only_where_git_ignores(name, monkeypatch):
    """The settings cell, run as a full-size run runs it (no RESNET_IDENTITY_SMALL, from the
    notebook's folder), sends figures and workdirs under the ignored workdirs/, so a full run
    never overwrites tracked files such as docs/figures."""
    monkeypatch.delenv("RESNET_IDENTITY_SMALL", raising=False)
    monkeypatch.chdir(NOTEBOOKS)
    nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    settings: dict = {}
    exec(next(c for c in nb.cells if c.cell_type == "code").source, settings)
    outputs = [settings[key] for key in ("FIGURES", "WORKDIR") if key in settings]
    assert outputs and not settings["SMALL"]
    for output in outputs:
        written = os.path.join(os.path.abspath(output), "figure.png")
        ignored = subprocess.run(["git", "check-ignore", "--quiet", written], cwd=ROOT)
        assert ignored.returncode == 0, f"{name}.ipynb writes {written}, which git does not ignore"
