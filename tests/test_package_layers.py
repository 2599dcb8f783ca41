"""The package's folders are layers, and every import points down (docs/layout.md).

From the bottom: `runs` (paths, checkpoints, signals: no model or dataset), `data`, `models`,
`training`, `interop`, `analysis`, and the commands (the top-level modules and any
`__main__.py`). A module may import its own folder and the folders below it, never above.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import resnet_identity

PACKAGE = pathlib.Path(resnet_identity.__file__).parent
LAYERS = ("runs", "data", "models", "training", "interop", "analysis", "commands")


def layer_of(module: str, *, path: pathlib.Path | None = None) -> str:
    """The layer of a dotted module name under resnet_identity (a command where no folder says)."""
    if path is not None and path.name == "__main__.py":
        return "commands"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "commands"


def imported_modules(path: pathlib.Path) -> list[str]:
    """The resnet_identity modules `path` imports, at the top or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "resnet_identity":
            if node.module == "resnet_identity":
                found += [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "resnet_identity"]
    return found


def upward_imports(package: pathlib.Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(("resnet_identity", *path.relative_to(package).with_suffix("").parts))
        here = layer_of(module, path=path)
        for target in imported_modules(path):
            there = layer_of(target)
            if LAYERS.index(there) > LAYERS.index(here):
                found.append(f"{path.relative_to(package.parent)} ({here}) imports {target} ({there})")
    return found


def test_every_import_points_down():
    assert upward_imports() == []


def test_every_module_sits_in_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS) - {"commands"}


@pytest.mark.parametrize(
    "module, layer",
    [
        ("resnet_identity.runs.files", "runs"),
        ("resnet_identity.training.trainer", "training"),
        ("resnet_identity.evaluate", "commands"),
        ("resnet_identity.models", "models"),
        ("resnet_identity.cli", "commands"),
        ("resnet_identity.models.units", "models"),
    ],
)
def test_layer_of(module, layer):
    assert layer_of(module) == layer


def test_a_command_in_a_folder_is_a_command():
    assert layer_of("resnet_identity.models.__main__", path=PACKAGE / "models" / "__main__.py") == "commands"


def test_an_upward_import_is_found(tmp_path):
    """The check can fail: a data module importing the trainer inside a function is reported."""
    package = tmp_path / "resnet_identity"
    (package / "data").mkdir(parents=True)
    (package / "data" / "bad.py").write_text("def f():\n    from resnet_identity.training import trainer\n")
    assert upward_imports(package) == ["resnet_identity/data/bad.py (data) imports resnet_identity.training (training)"]


def test_docs_layout_names_every_module():
    """docs/layout.md lists each module in its folder; a new module gets its line there."""
    text = (PACKAGE.parent / "docs" / "layout.md").read_text()
    modules = {p.stem for p in PACKAGE.rglob("*.py") if p.stem not in ("__init__", "__main__")}
    assert sorted(m for m in modules if f"`{m}`" not in text) == []
