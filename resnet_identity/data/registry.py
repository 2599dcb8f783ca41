"""The dataset registry: each dataset declares its facts and options once, in its own module.

A dataset module defines `SPEC = DatasetSpec(...)`: its name, its options (which become the
config's `config.<name>.*` fields), the facts the rest of the code needs before reading any
data (classes, image size, training examples, evaluation crops, class names), and how to
load it. `DATASETS` lists the modules, one line each; adding a dataset is one module plus
one line there (docs/datasets.md). `config.py` builds its dataset fields from `DATASETS`,
and validation and the epoch length read the facts from here.

Importing this module imports no TensorFlow: a dataset module imports it only when a
TFDS or tf.data dataset is loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

from resnet_identity.data.base import DatasetSpec, Facts, Settings

# One line per dataset: the module that defines its `SPEC`.
DATASETS = (
    "resnet_identity.data.digits",
    "resnet_identity.data.synthetic",
    "resnet_identity.data.cifar",
    "resnet_identity.data.imagenet",
    "resnet_identity.data.folder",
)


def _specs() -> dict[str, DatasetSpec]:
    specs: dict[str, DatasetSpec] = {}
    for module in DATASETS:
        declared = importlib.import_module(module).SPEC
        for spec in declared if isinstance(declared, tuple) else (declared,):
            specs[spec.name] = spec
    return specs


SPECS: dict[str, DatasetSpec] = _specs()


def register(spec: DatasetSpec) -> DatasetSpec:
    """Adds a dataset at run time (a test's, or a notebook's); a module of the package is
    listed in `DATASETS` instead. Its options join the configs made afterwards."""
    SPECS[spec.name] = spec
    return spec


def spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(SPECS)}.")
    return SPECS[name]


def options(config: Any, name: str | None = None) -> dict[str, Any]:
    """The options of dataset `name` (default `config.dataset`): `config.<name>`'s values
    over the declared defaults. `config` needs only `.get`, so a hand-built ConfigDict that
    names just the dataset works too."""
    name = name or config.get("dataset")
    declared = spec(name).options
    given = config.get(name, None) or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for dataset {name!r}; it has {sorted(declared) or 'none'}.")
    return {key: given.get(key, option.default) for key, option in declared.items()}


def facts(config: Any) -> Facts:
    """The facts of `config.dataset` under the config's options."""
    return spec(config.get("dataset")).facts(options(config))


def settings(config: Any) -> Settings:
    def get(name: str, default: Any) -> Any:
        value = config.get(name, None)
        return default if value is None else value

    return Settings(
        data_dir=get("data_dir", None),
        download=bool(get("tfds_download", True)),
        normalization=get("normalization", None),
    )
