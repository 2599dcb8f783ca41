"""`config.init_from`: a fresh run starts from another run's checkpoint or from converted weights.

`config.init_from` is either a run's workdir (its newest checkpoint, or `init_from_step`) or a
weights directory written by `python -m resnet_identity.convert` (`weights.py`). The trainer
calls `initialise_from` once, on a run that starts fresh; a run that resumes from its own
checkpoint ignores `init_from`.

What is loaded: every parameter and BatchNorm statistic. The classifier (`fc`) is loaded when
its shape matches and freshly initialised when the number of classes differs (fine-tuning on
another dataset). The step counter and the optimiser state start afresh. Anything else that
differs (another model, another stride placement or stem) is an error naming the first
mismatched tensor or field. Layouts may differ: both sides are compared unrolled and the
result is laid out as the model is (`models.convert_layout`, any scan/remat).

`read_run` reads a run's checkpoint without writing to its workdir (Orbax read-only, no
lease), so a run may start from another that is still training.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from resnet_identity import models
from resnet_identity.runs import checkpointing
from resnet_identity.runs.files import as_path
from resnet_identity.training import weights as weights_lib
from resnet_identity.training.config import ConfigError, model_kwargs

# The classifier's tensors, which may differ in their number of classes.
CLASSIFIER = ("params/fc/kernel", "params/fc/bias")
# Overrides that change the architecture (not only its layout or numerics): source and
# target must agree on them.
ARCHITECTURE_OVERRIDES = ("depth", "unit", "unit_options", "shortcut", "stride_on", "stem")


class InitFromError(ConfigError):
    """`init_from` names something that cannot initialise this model; the message says why."""


def read_run(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, dict, int]:
    """(the run's config, its `params` and `batch_stats` as numpy arrays in the run's own
    layout, the step) from the checkpoint `step` (None: the newest) of `workdir`, read-only."""
    root = as_path(workdir)
    if not (root / "config.json").exists() or not (root / "checkpoints").is_dir():
        raise InitFromError(
            f"{workdir} is not a run's workdir (no config.json and checkpoints/ in it), nor a "
            "weights directory (no weights.json). Name a workdir that has saved a checkpoint, or "
            "convert weights with `python -m resnet_identity.convert`."
        )
    try:
        config = weights_lib.read_run_config(root)
        state, step = checkpointing.read_saved(root / "checkpoints", step)
    except (weights_lib.WeightsError, checkpointing.CheckpointRestoreError) as e:
        raise InitFromError(str(e)) from e
    return config, {name: state[name] for name in weights_lib.COLLECTIONS}, step


def _source(source: str, step: int | None) -> tuple[str, str, dict, dict]:
    """(description, model name, architecture overrides, variables) of `config.init_from`."""
    path = as_path(source)
    if (path / weights_lib.METADATA_FILE).exists():
        if step is not None:
            raise InitFromError(f"init_from_step is for a run's workdir; {path} is a weights directory.")
        weights = weights_lib.load_weights(path)
        return f"weights {path} ({weights.source})", weights.model, weights.model_overrides, weights.variables
    run_config, variables, step = read_run(source, step)
    return f"run {path} step {step}", run_config.model, model_kwargs(run_config), variables


def _check_architecture(described: str, source: tuple[str, dict], ours: tuple[str, dict]) -> None:
    """`source` and `ours` as (model name, `create_model` overrides)."""
    (model, overrides), (our_model, our_overrides) = source, ours
    if model != our_model:
        raise InitFromError(
            f"init_from holds {described}, a {model}; this run's model is {our_model}. Set "
            f"--config.model={model}, or choose weights of {our_model}."
        )
    for name in ARCHITECTURE_OVERRIDES:
        if overrides.get(name) != our_overrides.get(name):
            raise InitFromError(
                f"init_from holds {described} with model_overrides.{name}={overrides.get(name)!r}; this run has "
                f"{our_overrides.get(name)!r}: another network with the same tensors. Set "
                f"--config.model_overrides.{name}={overrides.get(name)}."
            )


def merge(source: dict, target: dict) -> tuple[dict, list[str], list[str]]:
    """`target` (variables in any layout) with each tensor taken from `source` (any layout),
    but the classifier's where its shape differs. Returns (merged, loaded names, names left
    as initialised, each with its two shapes). Raises `InitFromError` naming the first tensor
    that is missing, unexpected or of another shape outside the classifier."""
    ours = weights_lib.flatten(jax.tree.map(np.asarray, models.stacked_to_unrolled(target)))
    theirs = weights_lib.flatten(models.stacked_to_unrolled(source))
    merged, loaded, fresh = {}, [], []
    for name, value in ours.items():
        if name not in theirs:
            raise InitFromError(f"init_from does not fit this model: it lacks tensor {name} {value.shape}.")
        if theirs[name].shape == value.shape:
            merged[name] = np.asarray(theirs[name], value.dtype)
            loaded.append(name)
        elif name in CLASSIFIER:
            merged[name] = value
            fresh.append(f"{name} {value.shape} (source {theirs[name].shape})")
        else:
            raise InitFromError(
                f"init_from does not fit this model: tensor {name} has shape {theirs[name].shape} "
                f"there and {value.shape} here."
            )
    extra = [name for name in theirs if name not in ours]
    if extra:
        raise InitFromError(
            f"init_from does not fit this model: unexpected tensor {extra[0]} {theirs[extra[0]].shape}."
        )
    tree = weights_lib.unflatten(merged)
    return models.convert_layout({name: tree.get(name, {}) for name in target}, target), loaded, fresh


def initialise_from(state: Any, source: str | None, *, step: int | None = None, model: str, overrides: dict) -> Any:
    """`state` (a fresh `TrainState` of `model` with `overrides`, its `create_model`
    overrides) with its parameters and BN statistics taken from `source` (`config.init_from`,
    its step `config.init_from_step`; module docstring), each on its sharding; unchanged when
    `source` is None. Prints what was loaded and what was initialised."""
    if not source:
        return state
    described, their_model, their_overrides, variables = _source(source, step)
    _check_architecture(described, (their_model, their_overrides), (model, overrides))
    target = {"params": state.params, "batch_stats": state.batch_stats}
    merged, loaded, fresh = merge(variables, target)
    placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), merged, target)
    if jax.process_index() == 0:
        values = sum(
            int(np.prod(np.shape(v)))
            for k, v in weights_lib.flatten(models.stacked_to_unrolled(merged)).items()
            if k in loaded
        )
        print(
            f"init_from: loaded {len(loaded)} tensors ({values:,} values) from {described}"
            + (f"; initialised afresh: {', '.join(fresh)}" if fresh else "; nothing initialised afresh")
            + ".",
            flush=True,
        )
    return state.replace(params=placed["params"], batch_stats=placed["batch_stats"])
