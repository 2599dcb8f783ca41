"""The training config schema: every field, its default, and one place that validates it.

Config files in `configs/` start from `default_config()` and set fields; the returned
ConfigDict is locked, so a misspelt field fails at once with the list of real ones.
`validate(config)` then checks values, before any dataset is read or anything compiled,
and raises one `ConfigError` that lists every problem it found.
"""

from __future__ import annotations

import difflib
import math

import ml_collections

from resnet_identity import models
from resnet_identity.data import NORMALIZATIONS, DatasetError, registry
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
    if config.num_train_steps > 0:
        return config.num_train_steps
    return math.ceil(config.num_epochs * steps_per_epoch(config))


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


def validate(
    config: ml_collections.ConfigDict, *, num_devices: int = 1, num_processes: int = 1, training: bool = True
) -> None:
    """Raises `ConfigError` listing every invalid value; returns None when all is well. With
    `training=False` (evaluation) the fields only training reads are not checked: the batch size
    and its BN groups, the budget and the optimiser."""
    check_keys(config)
    errors: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    for field, kind in (
        ("batch_size", int),
        ("eval_batch_size", int),
        ("num_train_steps", int),
        ("log_every_steps", int),
        ("eval_every_steps", int),
        ("checkpoint_every_steps", int),
        ("keep_checkpoints", int),
        ("diagnostics_every_steps", int),
        ("seed", int),
    ):
        need(
            isinstance(config[field], kind) and not isinstance(config[field], bool),
            f"{field} must be an int, got {config[field]!r}.",
        )
    if errors:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(errors))

    need(
        config.model in models.MODELS,
        f"model={config.model!r} is not a model.{_suggest(config.model, models.MODELS)} "
        f"Run `python -m resnet_identity.models` for the list.",
    )
    if config.model in models.MODELS:
        try:
            models.create_model(config.model, num_classes=10, **model_kwargs(config))
        except ValueError as e:
            errors.append(f"model_overrides: {e}")
    names = tuple(registry.SPECS)
    need(config.dataset in names, f"dataset={config.dataset!r} is not one of {names}.{_suggest(config.dataset, names)}")
    need(
        config.normalization is None or config.normalization in NORMALIZATIONS,
        f"normalization={config.normalization!r} is not one of {NORMALIZATIONS} (or None for the dataset's default).",
    )
    facts = None
    if config.dataset in names:
        options = registry.options(config)
        option_errors = [f"{config.dataset}.{e}" for e in registry.spec(config.dataset).check(options)]
        errors += option_errors
        try:  # the dataset's facts; a folder dataset lists and checks its files here
            facts = None if option_errors else registry.spec(config.dataset).facts(options)
        except DatasetError as e:
            errors.append(str(e))
        if training and facts is not None and isinstance(config.batch_size, int) and config.batch_size > 0:
            need(
                facts.steps_per_epoch(config.batch_size) >= 1,
                f"batch_size={config.batch_size} is larger than {config.dataset}'s {facts.num_train} training "
                "examples; use a smaller batch_size.",
            )
    need(
        config.init_from is not None or config.init_from_step is None,
        "init_from_step is set without init_from; set init_from to the run's workdir.",
    )

    batch = config.batch_size
    need(not training or batch > 0, f"batch_size must be positive, got {batch}.")
    need(config.eval_batch_size > 0, "eval_batch_size must be positive.")
    need(
        config.eval_batch_size % num_devices == 0,
        f"eval_batch_size={config.eval_batch_size} does not split evenly over {num_devices} devices.",
    )
    if training and batch > 0:
        need(
            batch % num_devices == 0,
            f"batch_size={batch} does not split evenly over {num_devices} devices; use a multiple of {num_devices}.",
        )
        need(batch % num_processes == 0, f"batch_size={batch} does not split over {num_processes} processes.")
        group = config.model_overrides.get("bn_group_size")
        if group is not None and group > 0:
            need(batch % group == 0, f"model_overrides.bn_group_size={group} does not divide batch_size={batch}.")
            need(
                batch // num_devices % group == 0 or group % (batch // num_devices) == 0,
                f"bn_group_size={group} straddles device shards of {batch // num_devices} examples; "
                f"use a divisor or multiple of the per-device batch.",
            )

    need(
        not training or config.num_train_steps > 0 or config.num_epochs > 0,
        "Set num_train_steps > 0, or num_train_steps = -1 with num_epochs > 0.",
    )
    need(0 <= config.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {config.label_smoothing}.")
    # `--config.eval_crops=None` arrives as (None,), which evaluation reads as None: the default crop.
    crops = tuple(c for c in config.eval_crops or () if c is not None)
    if facts is not None and facts.eval_crops:
        need(
            set(crops) <= set(facts.eval_crops),
            f"eval_crops={crops} must be drawn from {facts.eval_crops}, {config.dataset}'s test protocols (v2 "
            f"Table 5 and fb.resnet.torch's 10crop; docs/datasets.md), or None for {facts.eval_crops[0]}.",
        )
    elif facts is not None:
        need(
            not crops,
            f"eval_crops={crops}: {config.dataset} is evaluated on whole images; set it to None for {config.dataset}.",
        )
    for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        need(config[field] > 0, f"{field} must be positive, got {config[field]}.")
    need(
        isinstance(config.storage_retry_s, int | float) and config.storage_retry_s > 0,
        f"storage_retry_s must be a positive number of seconds, got {config.storage_retry_s!r}.",
    )
    need(
        config.diagnostics_every_steps >= 0,
        f"diagnostics_every_steps must be >= 0 (0: off), got {config.diagnostics_every_steps}.",
    )

    if training and not errors and facts is not None:  # the optimiser's own checks, on what will run
        errors += optim.problems(config, total_steps=total_steps(config), steps_per_epoch=steps_per_epoch(config))
    if errors:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(errors))


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
