"""Model and unit registries: every named network of both papers, and every unit variant.

A model name fixes a family (CIFAR or ImageNet), a depth and a unit; `create_model`
overrides adjust the rest. A new unit variant is a small module plus one `UNITS` line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from resnet_identity.models import ablations
from resnet_identity.models.network import DTYPES, ResNet
from resnet_identity.models.shortcuts import SHORTCUT_OPTIONS
from resnet_identity.models.stack import resolve_remat
from resnet_identity.models.stems import STEMS, CifarStem, ImageNetStem, Stem
from resnet_identity.models.units import STRIDE_PLACEMENTS, Plain, PostActivation, PreActivation


@dataclasses.dataclass(frozen=True)
class UnitVariant:
    """A unit class, its default options, and the shortcut option it forces (if any)."""

    cls: type
    options: dict = dataclasses.field(default_factory=dict)
    shortcut: str | None = None
    table: str = ""


# Table rows refer to docs/papers.md "v2 ablations".
UNITS: dict[str, UnitVariant] = {
    "original": UnitVariant(PostActivation, table="v1; v2 Table 1 row 1, Table 2(a)"),
    "full_preact": UnitVariant(PreActivation, table="v2; Table 2(e)"),
    "plain": UnitVariant(Plain, table="v1 plain baseline (no shortcut)"),
    "constant_scaling": UnitVariant(
        ablations.ConstantScaling,
        {"shortcut_scale": 0.5, "branch_scale": 0.5},
        table="Table 1: 0.5 on shortcut, 0.5 on F",
    ),
    "constant_scaling_shortcut": UnitVariant(
        ablations.ConstantScaling,
        {"shortcut_scale": 0.5, "branch_scale": 1.0},
        table="Table 1: 0.5 on shortcut, 1 on F",
    ),
    "exclusive_gating": UnitVariant(
        ablations.ExclusiveGating, {"gate_bias_init": -6.0}, table="Table 1: 1-g(x) / g(x)"
    ),
    "shortcut_only_gating": UnitVariant(
        ablations.ShortcutOnlyGating, {"gate_bias_init": 0.0}, table="Table 1: 1-g(x) / 1"
    ),
    "conv_shortcut": UnitVariant(PostActivation, shortcut="C", table="Table 1: 1x1 conv on every shortcut"),
    "dropout_shortcut": UnitVariant(ablations.DropoutShortcut, {"rate": 0.5}, table="Table 1: dropout 0.5 on shortcut"),
    "bn_after_addition": UnitVariant(ablations.BNAfterAddition, table="Table 2(b)"),
    "relu_before_addition": UnitVariant(ablations.ReLUBeforeAddition, table="Table 2(c)"),
    "relu_only_preact": UnitVariant(ablations.ReLUOnlyPreActivation, table="Table 2(d)"),
}


Stages = tuple[tuple[int, ...], tuple[int, ...], bool]  # units per stage, channels per stage, bottleneck


def cifar_stages(depth: int, bottleneck: bool) -> Stages:
    """Three stages of n units on 32/16/8 maps (docs/papers.md "Depths"): depth 6n+2 with basic
    units (v1 Sec. 4.2), 9n+2 with bottleneck units (v2's ResNet-164 and -1001)."""
    per_unit = 9 if bottleneck else 6
    if depth < per_unit + 2 or (depth - 2) % per_unit:
        formula = "9n+2 (bottleneck units)" if bottleneck else "6n+2 (basic units)"
        valid = ", ".join(str(per_unit * n + 2) for n in range(1, 6))
        raise ValueError(f"CIFAR depth {depth} does not fit {formula}; valid depths are {valid}, ...")
    n = (depth - 2) // per_unit
    features = (64, 128, 256) if bottleneck else (16, 32, 64)
    return (n,) * 3, features, bottleneck


IMAGENET_STAGES = {  # docs/papers.md "Depths": v1 Table 1, and v2's ResNet-200
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
    200: ((3, 24, 36, 3), True),
}


def imagenet_stages(depth: int, bottleneck: bool) -> Stages:
    """The four stages for `depth` (v1 Table 1); the depth alone decides `bottleneck`."""
    if depth not in IMAGENET_STAGES:
        raise ValueError(f"ImageNet depth {depth} is not one of {sorted(IMAGENET_STAGES)}.")
    sizes, bottleneck = IMAGENET_STAGES[depth]
    features = (256, 512, 1024, 2048) if bottleneck else (64, 128, 256, 512)
    return sizes, features, bottleneck


@dataclasses.dataclass(frozen=True)
class Family:
    """A network family (docs/papers.md "Depths"): its stem, how depth maps to stages, its input size."""

    name: str
    stem: type[Stem]
    stem_features: int
    input_size: int
    stages: Callable[[int, bool], Stages]


FAMILIES = {
    family.name: family
    for family in (
        Family("cifar", CifarStem, 16, 32, cifar_stages),
        Family("imagenet", ImageNetStem, 64, 224, imagenet_stages),
    )
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    family: str
    depth: int
    unit: str
    bottleneck: bool = False
    shortcut: str = "B"


def _specs() -> dict[str, ModelSpec]:
    specs = {}
    for depth in (20, 32, 44, 56, 110, 1202):
        specs[f"cifar_resnet{depth}"] = ModelSpec("cifar", depth, "original", shortcut="A")
        specs[f"cifar_preact{depth}"] = ModelSpec("cifar", depth, "full_preact", shortcut="A")
    for depth in (20, 32, 44, 56, 110):
        specs[f"cifar_plain{depth}"] = ModelSpec("cifar", depth, "plain", shortcut="A")
    for depth in (164, 1001):
        specs[f"cifar_resnet{depth}"] = ModelSpec("cifar", depth, "original", bottleneck=True)
        specs[f"cifar_preact{depth}"] = ModelSpec("cifar", depth, "full_preact", bottleneck=True)
    for depth in IMAGENET_STAGES:
        specs[f"resnet{depth}"] = ModelSpec("imagenet", depth, "original")
        specs[f"preact_resnet{depth}"] = ModelSpec("imagenet", depth, "full_preact")
    for depth in (18, 34):
        specs[f"plain{depth}"] = ModelSpec("imagenet", depth, "plain")
    return specs


MODELS: dict[str, ModelSpec] = _specs()


@dataclasses.dataclass(frozen=True)
class Override:
    """A `create_model` override: the type a config field holding it has, and what it accepts."""

    config_type: type
    accepts: str


# Overrides a caller may pass to `create_model`; `config.py` builds `model_overrides` from it.
OVERRIDES = {
    "depth": Override(int, "an int fitting the family's depth formula"),
    "unit": Override(str, f"one of {sorted(UNITS)}"),
    "unit_options": Override(dict, "a dict of the unit variant's fields, e.g. {'gate_bias_init': -7.0}"),
    "shortcut": Override(str, f"one of {SHORTCUT_OPTIONS}"),
    "stride_on": Override(str, f"one of {STRIDE_PLACEMENTS}"),
    "stem": Override(str, f"one of {sorted(STEMS)} (default: the family's own; 'timm' is timm's resnetv2 stem)"),
    "dtype": Override(str, f"one of {tuple(DTYPES)}"),
    "bn_group_size": Override(int, "None or a positive int dividing the per-step batch"),
    "bn_momentum": Override(float, "a float in [0, 1)"),
    "bn_epsilon": Override(float, "a positive float"),
    "zero_init_last": Override(bool, "a bool; True only for units whose branch ends in a BN or a conv"),
    "scan": Override(bool, "a bool"),
    "remat": Override(
        str,
        "None (= 'elementwise' scanned, 'none' unrolled), False (= 'none'), True (= 'nested'), "
        "'none', 'elementwise', 'unit', 'block' or 'nested'",
    ),
    "unroll": Override(int, "a positive int"),
}


def available_models() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(MODELS)


def _unit_fields(cls: type) -> set[str]:
    base = {f.name for f in dataclasses.fields(ablations.ResidualUnit)}
    return {f.name for f in dataclasses.fields(cls)} - base - {"parent", "name"}


def _check(name: str, ok: bool, value: Any) -> None:
    if not ok:
        raise ValueError(f"Invalid model override {name}={value!r}: expected {OVERRIDES[name].accepts}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unit_options(unit_name: str, variant: UnitVariant, extra: Any) -> dict:
    """The variant's own fields, updated with the caller's `unit_options`."""
    _check("unit_options", isinstance(extra, dict), extra)
    fields = _unit_fields(variant.cls)
    if set(extra) - fields:
        raise ValueError(
            f"Unknown unit_options {sorted(set(extra) - fields)} for unit {unit_name!r}; "
            f"it accepts {sorted(fields) or 'none'}."
        )
    return {**variant.options, **extra}


def _shortcut(unit_name: str, variant: UnitVariant, shortcut: str) -> str:
    """The shortcut option, refusing one that the unit variant's own would silently ignore."""
    _check("shortcut", shortcut in SHORTCUT_OPTIONS, shortcut)
    if variant.shortcut and shortcut != variant.shortcut:
        raise ValueError(
            f"Unit {unit_name!r} is defined by its shortcut option {variant.shortcut!r}; "
            f"shortcut={shortcut!r} contradicts it."
        )
    return shortcut


def _check_network_overrides(overrides: dict, *, name: str, depth: int, bottleneck: bool, variant: UnitVariant):
    """The overrides passed on to `ResNet` as they are: each checked against what it accepts."""
    stride_on = overrides.get("stride_on", "1x1")
    _check("stride_on", stride_on in STRIDE_PLACEMENTS, overrides.get("stride_on"))
    if stride_on != "1x1" and not bottleneck:
        raise ValueError(
            f"stride_on={stride_on!r} applies to bottleneck units; {name} at depth "
            f"{depth} has basic units, whose stride is always on the first 3x3."
        )
    if overrides.get("unroll", 1) != 1 and overrides.get("scan") is False:
        raise ValueError(
            "unroll partially unrolls the scan over a stage's units; with scan=False there is "
            "no scan to unroll. Drop one of them."
        )
    _check("dtype", overrides.get("dtype", "float32") in DTYPES, overrides.get("dtype"))
    group = overrides.get("bn_group_size")
    _check("bn_group_size", group is None or (_is_int(group) and group > 0), group)
    momentum = overrides.get("bn_momentum", 0.9)
    _check("bn_momentum", _is_number(momentum) and 0 <= momentum < 1, momentum)
    epsilon = overrides.get("bn_epsilon", 1e-5)
    _check("bn_epsilon", _is_number(epsilon) and epsilon > 0, epsilon)
    for flag in ("zero_init_last", "scan"):
        _check(flag, isinstance(overrides.get(flag, False), bool), overrides.get(flag))
    if overrides.get("zero_init_last"):
        variant.cls(features=1, zero_init_last=True)  # a unit that cannot start at zero refuses when built
    try:
        resolve_remat(overrides.get("remat"))
    except ValueError:
        _check("remat", False, overrides.get("remat"))
    unroll = overrides.get("unroll", 1)
    _check("unroll", _is_int(unroll) and unroll > 0, unroll)


def create_model(name: str, *, num_classes: int, **overrides: Any) -> ResNet:
    """Builds the named network as a `flax.linen.Module`.

    Use as `model.apply(variables, images_nhwc, train=..., mutable=...)`. Overrides are
    listed in `OVERRIDES`; an unknown name, override or value raises a ValueError that
    lists the valid choices.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Available models: {', '.join(available_models())}.")
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"Unknown model override(s) {unknown}. Valid overrides: {sorted(OVERRIDES)}.")
    if not _is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    spec = MODELS[name]
    unit_name = overrides.pop("unit", spec.unit)
    _check("unit", unit_name in UNITS, unit_name)
    variant = UNITS[unit_name]
    unit_options = _unit_options(unit_name, variant, overrides.pop("unit_options", None) or {})
    depth = overrides.pop("depth", spec.depth)
    _check("depth", _is_int(depth), depth)
    family = FAMILIES[spec.family]
    stage_sizes, stage_features, bottleneck = family.stages(depth, spec.bottleneck)
    shortcut = _shortcut(unit_name, variant, overrides.pop("shortcut", variant.shortcut or spec.shortcut))
    stem = overrides.pop("stem", None)
    _check("stem", stem is None or stem in STEMS, stem)
    _check_network_overrides(overrides, name=name, depth=depth, bottleneck=bottleneck, variant=variant)
    return ResNet(
        stage_sizes=stage_sizes,
        stage_features=stage_features,
        unit=variant.cls,
        unit_options=unit_options or None,
        bottleneck=bottleneck,
        stem=family.stem if stem is None else STEMS[stem],
        stem_features=family.stem_features,
        num_classes=num_classes,
        shortcut=shortcut,
        **overrides,
    )


def input_size(name: str) -> int:
    """The family's input resolution: 32 for CIFAR, 224 for ImageNet."""
    return FAMILIES[MODELS[name].family].input_size
