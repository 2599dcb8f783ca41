"""Every table and training-curve figure of both papers, as data: `EXPERIMENTS`.

An `Experiment` is a list of `Row`s, each one network (a registry model, a unit override)
trained on one dataset with the paper's recipe, and the figure(s) the paper prints for it
(`paper.PaperFigure`, read from docs/papers.md). `row_config` turns a row into the
`train.py` config it runs with; `python -m resnet_identity.reproduce` runs the rows
(`runs.py`) and writes the comparison (`report.py`). A new experiment is one declaration
in `EXPERIMENTS`.

Each row trains with its paper recipe (`recipes.cifar`: the v2 CIFAR recipe, which is v1's
with the warm-up v1 used for ResNet-110, for every CIFAR row; `recipes.imagenet` for v2
Table 5), unless `--config` names another. The `quick` preset shrinks every row to one unit
per stage and a few dozen steps on the embedded digits: a test that the whole path works,
on a CPU budget, not the paper's experiment.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from resnet_identity import models
from resnet_identity.analysis.paper import FAIL_ERROR, PaperFigure
from resnet_identity.data import registry as data_registry
from resnet_identity.training import config as config_lib
from resnet_identity.training import recipes


@dataclasses.dataclass(frozen=True)
class Measure:
    """One figure of a row: our final metric (a `final_metrics.json` key) and the paper's."""

    paper: PaperFigure | None  # None: the paper gives no figure for this row
    metric: str = "test_error"
    column: str = "error %"


@dataclasses.dataclass(frozen=True)
class Row:
    """One network of an experiment, as the paper ran it.

    `overrides` are `model_overrides` (a unit variant and its options); `cells` fill the
    experiment's `columns`; `recipe_preset` is a `recipes` preset the row's recipe takes
    (fb.resnet.torch's augmentation for v2 Table 5's "scale + aspect" row). A row with
    `default=False` runs only when `--rows` names it.
    """

    key: str
    label: str
    model: str
    measures: tuple[Measure, ...]
    dataset: str = "cifar10"
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    recipe_preset: str | None = None
    cells: tuple[str, ...] = ()
    default: bool = True

    @property
    def recipe(self) -> str:
        """The `recipes` builder of the row's dataset (its `DatasetSpec.paper_recipe`)."""
        return data_registry.spec(self.dataset).paper_recipe


@dataclasses.dataclass(frozen=True)
class Panel:
    """One panel of a curves figure: its title and the keys of the rows drawn in it."""

    title: str
    rows: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A table or figure of a paper.

    `setting` says what the paper ran. A figure (`panels` not empty) is drawn in the paper's
    style: `curves="error"` as v1 Fig. 6 (training error thin, test error bold), `"loss"`
    as v2 Fig. 6 (training loss dashed on the left axis, test error solid on the right).
    `fail_above`: the error above which a row is the paper's "fail" (v2 Tables 1-2); None
    where only a diverged run fails. `quick`: whether the quick preset applies.
    """

    name: str
    title: str
    setting: str
    rows: tuple[Row, ...]
    columns: tuple[str, ...] = ()
    panels: tuple[Panel, ...] = ()
    curves: str = "error"
    fail_above: float | None = None
    quick: bool = True

    def select(self, keys: list[str] | None) -> tuple[Row, ...]:
        """The rows named by `keys`, in that order; the default rows if `keys` is empty."""
        if not keys:
            return tuple(r for r in self.rows if r.default)
        known = {r.key: r for r in self.rows}
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise ValueError(f"{self.name} has no row(s) {unknown}; its rows are {list(known)}.")
        return tuple(known[k] for k in keys)


# --- v1 Table 6 and Fig. 6: CIFAR-10, plain and ResNet-20 to -1202 -----------------------


def _v1_row(depth: int, plain: bool, default: bool = True) -> Row:
    if plain:  # v1 Fig. 6 draws the plain nets; Table 6 prints no figure for them
        return Row(f"plain{depth}", f"plain-{depth}", f"cifar_plain{depth}", (Measure(None),))
    figure = PaperFigure("v1 Table 6", f"ResNet-{depth}", "best error (%)", "mean error (%)", "std (%)")
    return Row(f"resnet{depth}", f"ResNet-{depth}", f"cifar_resnet{depth}", (Measure(figure),), default=default)


V1_SETTING = "CIFAR-10, 64k iterations of batch 128 (v1 Sec. 4.2)"
V1_TABLE6 = Experiment(
    "v1-table6",
    "v1 Table 6: CIFAR-10 test error of plain nets and ResNets",
    V1_SETTING,
    tuple(_v1_row(d, True) for d in (20, 32, 44, 56, 110))
    + tuple(_v1_row(d, False, default=d != 1202) for d in (20, 32, 44, 56, 110, 1202)),
)
V1_FIG6 = Experiment(
    "v1-fig6",
    "v1 Fig. 6: training on CIFAR-10, plain nets (left) and ResNets (middle, right)",
    V1_SETTING,
    tuple(_v1_row(d, True) for d in (20, 32, 44, 56))
    + tuple(_v1_row(d, False, default=d != 1202) for d in (20, 32, 44, 56, 110, 1202)),
    panels=(
        Panel("plain", ("plain20", "plain32", "plain44", "plain56")),
        Panel("ResNet", ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")),
        Panel("ResNet-110 and ResNet-1202", ("resnet110", "resnet1202")),
    ),
)


# --- v2 Tables 1 and 2: the ablations on ResNet-110 and ResNet-164 ------------------------

V2_ABLATION_SETTING = 'CIFAR-10, 64k iterations of batch 128 (docs/papers.md "CIFAR (v2 paper)")'


def _t1(key: str, label: str, unit: str, **options) -> Row:
    figure = PaperFigure("v2 Table 1", label)
    overrides = {"unit": unit, "unit_options": options or None}
    return Row(key, label, "cifar_resnet110", (Measure(figure),), overrides=overrides)


V2_TABLE1 = Experiment(
    "v2-table1",
    "v2 Table 1: scaling and gating the shortcut of ResNet-110",
    V2_ABLATION_SETTING,
    (
        _t1("original", "original (shortcut 1, F 1)", "original"),
        _t1(
            "constant_scaling_shortcut",
            "constant scaling (shortcut 0.5, F 1)",
            "constant_scaling",
            shortcut_scale=0.5,
            branch_scale=1.0,
        ),
        _t1(
            "constant_scaling",
            "constant scaling (shortcut 0.5, F 0.5)",
            "constant_scaling",
            shortcut_scale=0.5,
            branch_scale=0.5,
        ),
        _t1(
            "exclusive_gating_b-6",
            "exclusive gating, b_g = -6 (shortcut 1-g(x), F g(x))",
            "exclusive_gating",
            gate_bias_init=-6.0,
        ),
        _t1(
            "exclusive_gating_b-7",
            "exclusive gating, b_g = -7 (shortcut 1-g(x), F g(x))",
            "exclusive_gating",
            gate_bias_init=-7.0,
        ),
        # The "b_g from 0 to -5" row is a sweep of runs that all failed, not one run: left out.
        _t1(
            "shortcut_only_gating_b0",
            "shortcut-only gating, b_g = 0 (shortcut 1-g(x), F 1)",
            "shortcut_only_gating",
            gate_bias_init=0.0,
        ),
        _t1(
            "shortcut_only_gating_b-6",
            "shortcut-only gating, b_g = -6 (shortcut 1-g(x), F 1)",
            "shortcut_only_gating",
            gate_bias_init=-6.0,
        ),
        _t1("conv_shortcut", "1x1 conv shortcut (shortcut 1x1 conv, F 1)", "conv_shortcut"),
        _t1("dropout_shortcut", "dropout shortcut (shortcut dropout 0.5, F 1)", "dropout_shortcut", rate=0.5),
    ),
    fail_above=FAIL_ERROR,
)

TABLE2_UNITS = (
    ("original", "(a) original"),
    ("bn_after_addition", "(b) BN after addition"),
    ("relu_before_addition", "(c) ReLU before addition"),
    ("relu_only_preact", "(d) ReLU-only pre-activation"),
    ("full_preact", "(e) full pre-activation"),
)
V2_TABLE2 = Experiment(
    "v2-table2",
    "v2 Table 2: where BN and ReLU go around the addition",
    V2_ABLATION_SETTING,
    tuple(
        Row(
            f"{unit}-{depth}",
            label,
            f"cifar_resnet{depth}",
            (Measure(PaperFigure("v2 Table 2", label, f"ResNet-{depth}")),),
            overrides={"unit": unit},
            cells=(f"ResNet-{depth}",),
        )
        for depth in (110, 164)
        for unit, label in TABLE2_UNITS
    ),
    columns=("network",),
    fail_above=FAIL_ERROR,
)


# --- v2 Table 3 and Fig. 6: original vs pre-activation at 164 and 1001 layers -------------


def _v2_unit_row(dataset: str, depth: int, preact: bool) -> Row:
    name, kind = data_registry.spec(dataset).title, "pre-act" if preact else "original"
    figure = PaperFigure("v2 Table 3", f"{name}, ResNet-{depth}", kind)
    key = f"{dataset}-{'preact' if preact else 'resnet'}{depth}"
    model = f"cifar_{'preact' if preact else 'resnet'}{depth}"
    return Row(key, kind, model, (Measure(figure),), dataset=dataset, cells=(name, f"ResNet-{depth}"))


V2_TABLE3 = Experiment(
    "v2-table3",
    "v2 Table 3: original vs pre-activation units on CIFAR",
    V2_ABLATION_SETTING.replace("CIFAR-10", "CIFAR-10 and CIFAR-100"),
    tuple(
        _v2_unit_row(dataset, depth, preact)
        for dataset in ("cifar10", "cifar100")
        for depth in (164, 1001)
        for preact in (False, True)
    ),
    columns=("dataset", "network"),
)
V2_FIG6 = Experiment(
    "v2-fig6",
    "v2 Fig. 6: training ResNet-1001 on CIFAR-10, original vs pre-activation",
    V2_ABLATION_SETTING,
    (_v2_unit_row("cifar10", 1001, False), _v2_unit_row("cifar10", 1001, True)),
    columns=("dataset", "network"),
    panels=(Panel("ResNet-1001", ("cifar10-resnet1001", "cifar10-preact1001")),),
    curves="loss",
)


# --- v2 Table 5: ImageNet, 224 and 320 test crops ----------------------------------------


TABLE5_CROPS = (224, 320)  # v2 Table 5's test crops (docs/papers.md)


def _t5(key: str, model: str, label: str, crops_published: tuple[int, ...], preset: str | None = None) -> Row:
    measures = tuple(
        Measure(
            PaperFigure("v2 Table 5", f"{label}, {crop} crop", "top-1 error (%)") if crop in crops_published else None,
            metric=f"test_{crop}_error",
            column=f"top-1 % ({crop} crop)",
        )
        for crop in TABLE5_CROPS
    )
    return Row(key, label, model, measures, dataset="imagenet2012", recipe_preset=preset)


V2_TABLE5 = Experiment(
    "v2-table5",
    "v2 Table 5: ImageNet, single-crop top-1 error at 224 and 320 crops",
    'ImageNet, batch 256, LR 0.1 cut at epochs 30 and 60 (docs/papers.md "ImageNet (v2)")',
    (
        _t5("resnet152", "resnet152", "ResNet-152 original", (224, 320)),
        _t5("preact_resnet152", "preact_resnet152", "ResNet-152 pre-act", (320,)),
        _t5("resnet200", "resnet200", "ResNet-200 original", (320,)),
        _t5("preact_resnet200", "preact_resnet200", "ResNet-200 pre-act", (320,)),
        _t5(
            "preact_resnet200_scale_aspect",
            "preact_resnet200",
            "ResNet-200 pre-act, scale + aspect augmentation",
            (320,),
            preset="fb_resnet_torch",
        ),
    ),
    quick=False,
)

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e for e in (V1_TABLE6, V1_FIG6, V2_TABLE1, V2_TABLE2, V2_TABLE3, V2_FIG6, V2_TABLE5)
}


# --- from a row to the config it trains with ----------------------------------------------

# The quick preset: one unit per stage (6n+2 / 9n+2 with n = 1), batch 16 on the digits, a
# few evaluations (for the curves) on the 360 test digits, one checkpoint at the end.
QUICK_STEPS = 20
QUICK_DEPTH = {False: 8, True: 11}  # keyed by "bottleneck units"
QUICK_FIELDS = {
    "dataset": "digits",
    "normalization": None,
    "batch_size": 16,
    "eval_batch_size": 360,
    "log_every_steps": 5,
    "eval_every_steps": 5,
    "checkpoint_every_steps": QUICK_STEPS,
}
PRESETS = ("quick",)


def scale_budget(config: ml_collections.ConfigDict, steps: int) -> None:
    """Sets `steps` training steps, moving LR boundaries and warm-up in proportion."""
    if steps < 1:
        raise ValueError(f"--steps must be positive, got {steps}.")
    per_epoch = config_lib.steps_per_epoch(config)
    total = config_lib.total_steps(config)
    schedule = config.schedule
    ratio = steps / total
    first = steps
    if "boundaries" in schedule:  # the step schedule's, moved in proportion and counted in steps
        unit = per_epoch if schedule.boundaries_unit == "epochs" else 1
        bounds = sorted({round(b * unit * ratio) for b in schedule.boundaries} - {0})
        schedule.boundaries = tuple(b for b in bounds if b < steps)
        schedule.boundaries_unit = "steps"
        first = schedule.boundaries[0] if schedule.boundaries else steps
    config.num_train_steps = steps
    config.num_epochs = -1.0
    schedule.warmup_steps = min(round(schedule.warmup_steps * ratio), first - 1)


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """`config.a.b = value` for `dotted` = "a.b" (a `--config.a.b=value` override)."""
    *parents, name = dotted.split(".")
    for parent in parents:
        config = config[parent]
    config[name] = value


def row_config(
    row: Row,
    *,
    base: ml_collections.ConfigDict | None = None,
    preset: str | None = None,
    steps: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> ml_collections.ConfigDict:
    """The config `row` trains with, for seed number `seed` (0, 1, ...).

    `base` (a `--config`) replaces the row's paper recipe; the row then sets its model and
    unit, and its dataset unless `base` trains on one the papers do not use (digits, synthetic:
    no `DatasetSpec.paper_recipe`), which it keeps.
    The quick preset shrinks the row, `steps` the length (the LR schedule keeps its
    shape), and `overrides` (`--config.field=value`, dotted names) are set last.
    """
    if preset not in (None, *PRESETS):
        raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
    if base is None:
        config = recipes.BY_FAMILY[row.recipe](row.model, row.recipe_preset)
    else:
        config = copy.deepcopy(base)
        if row.recipe_preset:
            config = recipes.apply_preset(config, row.recipe_preset)
    config.model = row.model
    for name, value in row.overrides.items():
        config.model_overrides[name] = value
    if base is None or data_registry.spec(config.dataset).paper_recipe is not None:
        config.dataset = row.dataset
        if not data_registry.facts(config).eval_crops:  # evaluated on whole images
            config.eval_crops = None
    if preset == "quick":
        for name, value in QUICK_FIELDS.items():
            config[name] = value
        config.model_overrides.depth = QUICK_DEPTH[models.MODELS[row.model].bottleneck]
        config.model_overrides.bn_group_size = None
        scale_budget(config, QUICK_STEPS)
    if steps is not None:
        scale_budget(config, steps)
    for name, value in (overrides or {}).items():
        set_field(config, name, value)
    config.seed += seed
    return config
