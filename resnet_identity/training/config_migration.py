"""Saved configs of earlier versions, read as today's: the one table of renamed config fields.

A workdir's `config.json` holds the config of the run that wrote it, under the field names of
that run's version. `migrate` turns it into today's names, so that the trainer compares it with
the current config (`saved_config.check_saved_config`) and tools that read a run's config
(`evaluate`, `init_from`) understand it.

Two rules make an old config readable:
- `RENAMED` maps each old dotted field name to its new one (values unchanged). A field that
  is renamed adds one line here, in the same change.
- A field the saved config lacks was added since; it takes today's default, so every new
  field's default must be the behaviour of the versions before it (e.g. an option that is
  off by default). A field whose meaning changes gets a new name instead.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from resnet_identity.training.config import ConfigError, default_config

# Old dotted name -> new dotted name.
RENAMED = {
    # Dataset options nested under their dataset (the dataset registry, `data/registry.py`).
    "imagenet_train_crop": "imagenet2012.train_crop",
    "imagenet_color_jitter": "imagenet2012.color_jitter",
    "imagenet_pca_lighting": "imagenet2012.pca_lighting",
    "imagenet_shuffle_buffer": "imagenet2012.shuffle_buffer",
    "synthetic_image_size": "synthetic.image_size",
    "synthetic_num_classes": "synthetic.num_classes",
    # The optimiser's and the schedule's fields, nested under them (`optim`, docs/schedules.md).
    "learning_rate": "schedule.learning_rate",
    "lr_boundaries": "schedule.boundaries",
    "lr_boundaries_unit": "schedule.boundaries_unit",
    "lr_decay_factor": "schedule.decay_factor",
    "warmup": "schedule.warmup",
    "warmup_steps": "schedule.warmup_steps",
    "warmup_learning_rate": "schedule.warmup_learning_rate",
    "momentum": "optimizer.momentum",
    "nesterov": "optimizer.nesterov",
    "weight_decay": "optimizer.weight_decay",
    "decay_bn_and_bias": "optimizer.decay_bn_and_bias",
}


def _pop(tree: dict, dotted: str) -> tuple[bool, Any]:
    *parents, leaf = dotted.split(".")
    for name in parents:
        tree = tree.get(name)
        if not isinstance(tree, dict):
            return False, None
    if leaf not in tree:
        return False, None
    return True, tree.pop(leaf)


def _put(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[leaf] = value


def _fill(tree: dict, defaults: dict) -> None:
    for key, default in defaults.items():
        if key not in tree:
            tree[key] = copy.deepcopy(default)
        elif isinstance(default, dict) and isinstance(tree[key], dict):
            _fill(tree[key], default)


def migrate(saved: dict, defaults: dict | None = None) -> dict:
    """`saved` (a `config.json` as a dict) under today's field names: renamed fields moved
    (`RENAMED`), fields added since set to their defaults (`defaults`, a config as a dict;
    `config.default_config()` when None). Fields that today's schema lacks are kept, so a
    comparison with the current config still shows them."""
    if defaults is None:
        defaults = json.loads(default_config().to_json())
    migrated = copy.deepcopy(saved)
    for old, new in RENAMED.items():
        found, value = _pop(migrated, old)
        if found:
            _put(migrated, new, value)
    _fill(migrated, defaults)
    return migrated


def as_config(saved: dict):
    """A saved config (`config.json` as a dict) as today's locked `ConfigDict`: `migrate`d,
    then set field by field on `default_config()`. Raises `ConfigError` naming a field that
    today's schema does not have."""
    config = default_config()

    def put(node, values: dict, prefix: str) -> None:
        for key, value in values.items():
            if key not in node:
                raise ConfigError(
                    f"The saved config has a field {prefix}{key} that this version does not know. "
                    "Use the version that wrote it, or add its new name to "
                    "resnet_identity/training/config_migration.py RENAMED."
                )
            if isinstance(value, dict) and hasattr(node[key], "items"):
                put(node[key], value, f"{prefix}{key}.")
            else:
                node[key] = tuple(value) if isinstance(value, list) else value

    put(config, migrate(saved), "")
    return config
