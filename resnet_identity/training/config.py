"""The training config schema: every field, its default, and one place that validates it.

Config files in `configs/` start from `default_config()` and set fields; the returned
ConfigDict is locked, so a misspelt field fails at once with the list of real ones.
`validate(config)` then checks values, before any dataset is read or anything compiled,
and raises one `ConfigError` that lists every problem it found; or returns the run's `Plan`,
what the config means worked out once (the dataset's facts, the model, the optimiser, the
run's length), whose fields the trainer's components take instead of the config.
"""

from __future__ import annotations

import dataclasses
import difflib
import math

import flax.linen as nn
import ml_collections
import optax

from resnet_identity import models
from resnet_identity.data import NORMALIZATIONS, DatasetError, Facts, registry
from resnet_identity.data.base import DatasetSpec, Settings
from resnet_identity.training import optim


class ConfigError(ValueError):
    """A config value that cannot work; the message says which field and what to do."""


# Types of the `create_model` overrides settable from a config or the command line
# (`--config.model_overrides.remat=block`); None leaves the model's default.
MODEL_OVERRIDE_TYPES = {name: override.config_type for name, override in models.OVERRIDES.items()}
# Overrides that change how the model computes and lays out its variables, not what it
# computes: a run resumes under other values without --allow_config_change, its checkpoint
# converted to the new layout (`train_state.convert_layout`).
LAYOUT_FIELDS = ("model_overrides.scan", "model_overrides.remat", "model_overrides.unroll")
# Fields that decide what a run records and how often, never what it trains: a run resumes
# under other values without --allow_config_change (the replaced config is still kept).
RECORD_FIELDS = (
    "log_every_steps",
    "eval_every_steps",
    "eval_batch_size",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "diagnostics_every_steps",
    "storage_retry_s",
)


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Model: a `create_model` name and its overrides (see resnet_identity/models/registry.py).
    c.model = "cifar_preact164"
    c.model_overrides = ml_collections.ConfigDict(
        {k: ml_collections.FieldReference(None, field_type=t) for k, t in MODEL_OVERRIDE_TYPES.items()}
    )
    # Data: the dataset, the fields all datasets share, and each dataset's own options under
    # its name, e.g. `imagenet2012.train_crop` (declared in its module; docs/datasets.md).
    c.dataset = "cifar10"
    c.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS datasets
    c.tfds_download = True
    c.normalization = ml_collections.FieldReference(None, field_type=str)
    c.eval_crops = ml_collections.FieldReference(None, field_type=tuple)  # None: the dataset's first
    for name, spec in registry.SPECS.items():
        if spec.options:
            c[name] = ml_collections.ConfigDict(
                {k: ml_collections.FieldReference(o.default, field_type=o.type) for k, o in spec.options.items()}
            )
    # Fine-tuning: start a fresh run from a run's checkpoint (its workdir; the newest step, or
    # init_from_step) or from converted weights (`python -m resnet_identity.convert`). A
    # classifier of another number of classes starts afresh (`init_from.py`).
    c.init_from = ml_collections.FieldReference(None, field_type=str)
    c.init_from_step = ml_collections.FieldReference(None, field_type=int)
    # Length and batch. num_train_steps = -1 means "num_epochs epochs".
    c.batch_size = 128
    c.eval_batch_size = 500
    c.num_train_steps = 64_000
    c.num_epochs = -1.0
    # Optimiser and learning-rate schedule: the v2 CIFAR recipe (docs/papers.md "Training
    # recipes"); `optim` builds, validates and documents both (docs/schedules.md).
    c.optimizer = ml_collections.ConfigDict(
        dict(momentum=0.9, nesterov=False, weight_decay=1e-4, decay_bn_and_bias=False)
    )  # the papers decay the weights; the released code every parameter
    c.schedule = optim.schedule_config(
        "step", learning_rate=0.1, boundaries=(32_000, 48_000), warmup_steps=400, warmup_learning_rate=0.01
    )
    c.label_smoothing = 0.0  # the papers use none; applied to the training loss only
    c.seed = 0
    # Logging, evaluation, checkpoints.
    c.log_every_steps = 100
    c.eval_every_steps = 2_000
    c.checkpoint_every_steps = 2_000
    c.keep_checkpoints = 3
    # How long a gs:// run waits out a Cloud Storage outage before it stops with exit status 75.
    c.storage_retry_s = 300.0
    c.diagnostics_every_steps = 0  # identity-mapping diagnostics every N steps; 0: off (diagnostics.py)
    c.lock()
    return c


def model_kwargs(config: ml_collections.ConfigDict) -> dict:
    """The `create_model` overrides that the config sets (None fields are left out)."""
    return {k: v for k, v in config.model_overrides.to_dict().items() if v is not None}


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """The dataset's own count (`data.base.Facts.steps_per_epoch`)."""
    return registry.facts(config).steps_per_epoch(config.batch_size)


def total_steps(config: ml_collections.ConfigDict) -> int:
    return _total_steps(config, steps_per_epoch(config))


def _total_steps(config: ml_collections.ConfigDict, per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return config.num_train_steps
    return math.ceil(config.num_epochs * per_epoch)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a valid config means for a run, worked out once by `validate`: the components
    take these fields, not the config. `config` itself is kept for what needs the whole of it
    (a workdir's config.json). With `training=False` the training fields are None."""

    config: ml_collections.ConfigDict
    dataset_spec: DatasetSpec  # the dataset's registry entry, which loads it
    facts: Facts  # the dataset's own facts (`data.base.Facts`)
    dataset_options: dict  # `config.<dataset>`'s values over the declared defaults
    dataset_settings: Settings
    model_kwargs: dict  # the `create_model` overrides the config sets
    model: nn.Module  # built once, for the dataset's number of classes
    eval_crops: tuple  # the crops evaluated; (None,): the dataset's first
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    optimizer: optax.GradientTransformation | None = None
    learning_rate: optax.Schedule | None = None  # per 0-based step


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_keys(config: ml_collections.ConfigDict) -> None:
    """Unknown top-level fields (e.g. from a hand-built ConfigDict) are an error."""
    known = set(default_config())
    unknown = sorted(set(config) - known)
    if "model_overrides" in config:
        unknown += [f"model_overrides.{k}" for k in sorted(set(config.model_overrides) - set(MODEL_OVERRIDE_TYPES))]
    if unknown:
        hints = "".join(_suggest(k, known) for k in unknown)
        raise ConfigError(f"Unknown config field(s) {unknown}.{hints} Valid fields: {sorted(known)}.")


def _raise(errors: list[str]) -> None:
    if errors:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(errors))


def _type_errors(config: ml_collections.ConfigDict) -> list[str]:
    fields = (
        "batch_size",
        "eval_batch_size",
        "num_train_steps",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "diagnostics_every_steps",
        "seed",
    )
    return [
        f"{field} must be an int, got {config[field]!r}."
        for field in fields
        if not isinstance(config[field], int) or isinstance(config[field], bool)
    ]


def _model(config: ml_collections.ConfigDict, kwargs: dict, num_classes: int) -> tuple[nn.Module | None, list[str]]:
    """The model, built once, or the messages saying why it cannot be."""
    if config.model not in models.MODELS:
        return None, [
            f"model={config.model!r} is not a model.{_suggest(config.model, models.MODELS)} "
            f"Run `python -m resnet_identity.models` for the list."
        ]
    try:
        return models.create_model(config.model, num_classes=num_classes, **kwargs), []
    except ValueError as e:
        return None, [f"model_overrides: {e}"]


def _dataset(config: ml_collections.ConfigDict, *, training: bool) -> tuple:
    """(the dataset's spec, its facts, its options, its settings, messages), read from the
    registry in one visit; no spec or facts where a message says why."""
    errors, names, options, settings = [], tuple(registry.SPECS), {}, registry.settings(config)
    if config.dataset not in names:
        errors.append(f"dataset={config.dataset!r} is not one of {names}.{_suggest(config.dataset, names)}")
    if config.normalization is not None and config.normalization not in NORMALIZATIONS:
        errors.append(
            f"normalization={config.normalization!r} is not one of {NORMALIZATIONS} (or None for the dataset's "
            "default)."
        )
    if config.dataset not in names:
        return None, None, options, settings, errors
    spec, options = registry.spec(config.dataset), registry.options(config)
    option_errors = [f"{config.dataset}.{e}" for e in spec.check(options)]
    if option_errors:
        return spec, None, options, settings, errors + option_errors
    try:  # the dataset's facts; a folder dataset lists and checks its files here
        facts = spec.facts(options)
    except DatasetError as e:
        return spec, None, options, settings, [*errors, str(e)]
    batch = config.batch_size
    if training and isinstance(batch, int) and batch > 0 and facts.steps_per_epoch(batch) < 1:
        errors.append(
            f"batch_size={batch} is larger than {config.dataset}'s {facts.num_train} training examples; use a "
            "smaller batch_size."
        )
    return spec, facts, options, settings, errors


def _batch_errors(config: ml_collections.ConfigDict, num_devices: int, num_processes: int, training: bool) -> list:
    batch, errors = config.batch_size, []
    if training and not batch > 0:
        errors.append(f"batch_size must be positive, got {batch}.")
    if not config.eval_batch_size > 0:
        errors.append("eval_batch_size must be positive.")
    if config.eval_batch_size % num_devices:
        errors.append(f"eval_batch_size={config.eval_batch_size} does not split evenly over {num_devices} devices.")
    if not training or batch <= 0:
        return errors
    if batch % num_devices:
        errors.append(
            f"batch_size={batch} does not split evenly over {num_devices} devices; use a multiple of {num_devices}."
        )
    if batch % num_processes:
        errors.append(f"batch_size={batch} does not split over {num_processes} processes.")
    group = config.model_overrides.get("bn_group_size")
    if group is not None and group > 0:
        if batch % group:
            errors.append(f"model_overrides.bn_group_size={group} does not divide batch_size={batch}.")
        if not (batch // num_devices % group == 0 or group % (batch // num_devices) == 0):
            errors.append(
                f"bn_group_size={group} straddles device shards of {batch // num_devices} examples; "
                f"use a divisor or multiple of the per-device batch."
            )
    return errors


def _eval_crops(config: ml_collections.ConfigDict, facts: Facts | None) -> tuple[tuple, list[str]]:
    """(the crops to evaluate, (None,) for the dataset's first; messages)."""
    # `--config.eval_crops=None` arrives as (None,), which evaluation reads as None: the default crop.
    crops = tuple(c for c in config.eval_crops or () if c is not None)
    chosen = tuple(config.eval_crops) if config.eval_crops else (None,)
    if facts is None:
        return chosen, []
    if facts.eval_crops and not set(crops) <= set(facts.eval_crops):
        return chosen, [
            f"eval_crops={crops} must be drawn from {facts.eval_crops}, {config.dataset}'s test protocols (v2 "
            f"Table 5 and fb.resnet.torch's 10crop; docs/datasets.md), or None for {facts.eval_crops[0]}."
        ]
    if not facts.eval_crops and crops:
        return chosen, [
            f"eval_crops={crops}: {config.dataset} is evaluated on whole images; set it to None for {config.dataset}."
        ]
    return chosen, []


def _run_errors(config: ml_collections.ConfigDict, *, training: bool) -> list[str]:
    """The budget and the loss."""
    errors = []
    if training and not (config.num_train_steps > 0 or config.num_epochs > 0):
        errors.append("Set num_train_steps > 0, or num_train_steps = -1 with num_epochs > 0.")
    if not 0 <= config.label_smoothing < 1:
        errors.append(f"label_smoothing must be in [0, 1), got {config.label_smoothing}.")
    return errors


def _record_errors(config: ml_collections.ConfigDict) -> list[str]:
    """What a run records, and how often."""
    errors = [
        f"{field} must be positive, got {config[field]}."
        for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints")
        if not config[field] > 0
    ]
    if not (isinstance(config.storage_retry_s, int | float) and config.storage_retry_s > 0):
        errors.append(f"storage_retry_s must be a positive number of seconds, got {config.storage_retry_s!r}.")
    if config.diagnostics_every_steps < 0:
        errors.append(f"diagnostics_every_steps must be >= 0 (0: off), got {config.diagnostics_every_steps}.")
    return errors


def validate(
    config: ml_collections.ConfigDict, *, num_devices: int = 1, num_processes: int = 1, training: bool = True
) -> Plan:
    """The run's `Plan`, worked out once; raises `ConfigError` listing every invalid value.
    With `training=False` (evaluation) the fields only training reads are not checked: the
    batch size and its BN groups, the budget and the optimiser (the plan leaves them None)."""
    check_keys(config)
    _raise(_type_errors(config))
    kwargs = model_kwargs(config)
    dataset_spec, facts, options, settings, dataset_errors = _dataset(config, training=training)
    model, errors = _model(config, kwargs, facts.num_classes if facts else 10)
    errors += dataset_errors
    if config.init_from is None and config.init_from_step is not None:
        errors.append("init_from_step is set without init_from; set init_from to the run's workdir.")
    errors += _batch_errors(config, num_devices, num_processes, training) + _run_errors(config, training=training)
    crops, crop_errors = _eval_crops(config, facts)
    _raise(errors + crop_errors + _record_errors(config))
    plan = Plan(config, dataset_spec, facts, options, settings, kwargs, model, crops)
    if not training:
        return plan
    per_epoch = facts.steps_per_epoch(config.batch_size)
    total = _total_steps(config, per_epoch)
    # The optimiser's own checks, on what will run (`optim.problems`), then the optimiser.
    _raise(optim.problems(config.schedule, config.optimizer, total_steps=total, steps_per_epoch=per_epoch))
    tx, learning_rate = optim.build(config.schedule, config.optimizer, total_steps=total, steps_per_epoch=per_epoch)
    return dataclasses.replace(
        plan, steps_per_epoch=per_epoch, total_steps=total, optimizer=tx, learning_rate=learning_rate
    )


def differing_fields(saved: dict, current: dict, prefix: str = "", *, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted names of fields whose values differ between two config dicts (but those in
    `ignore`), each with its two values."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if f"{prefix}{key}" in ignore:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += differing_fields(a, b, f"{prefix}{key}.", ignore=ignore)
        elif (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs
