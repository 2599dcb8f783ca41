"""The papers' published figures, as data to compare our models and runs against.

Every number is copied from PAPERS.md, the project's notes on both papers (arXiv v3); None in an error
column means the paper reports "fail" (test error above 20%, v2 Table 1 footnote).
"""

from __future__ import annotations

import dataclasses

# v2 Table 1: "fail" means test error above 20% on CIFAR-10.
FAIL_ERROR = 0.20

# Exact trainable parameters (PAPERS.md "Exact trainable parameter counts"). CIFAR basic nets
# use option A; the plain nets have the same count, since option A shortcuts are parameter-free.
PARAMETERS: dict[str, int] = {
    "cifar_resnet20": 269_722,
    "cifar_resnet32": 464_154,
    "cifar_resnet44": 658_586,
    "cifar_resnet56": 853_018,
    "cifar_resnet110": 1_727_962,
    "cifar_plain20": 269_722,
    "cifar_plain32": 464_154,
    "cifar_plain44": 658_586,
    "cifar_plain56": 853_018,
    "cifar_plain110": 1_727_962,
    "cifar_preact164": 1_703_258,
    "cifar_preact1001": 10_327_706,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnet200": 64_673_832,
    "preact_resnet200": 64_666_152,
}

# Forward multiply-adds per image, in units of 1e9 (PAPERS.md "Compute"): v1 Table 1 at 224x224
# with the stride on the first 1x1, and v2's CIFAR pre-act nets at 32x32.
GIGA_MACS: dict[str, float] = {
    "resnet18": 1.8,
    "resnet34": 3.6,
    "resnet50": 3.8,
    "resnet101": 7.6,
    "resnet152": 11.3,
    "cifar_preact164": 0.25,
    "cifar_preact1001": 1.49,
}


@dataclasses.dataclass(frozen=True)
class AblationRow:
    """One row of v2 Table 1 or 2: the unit variant, its options, and the paper's error(s).

    `errors` maps a model name to the paper's CIFAR-10 test error (a fraction), None for "fail".
    """

    key: str
    label: str
    unit: str
    unit_options: dict
    errors: dict[str, float | None]
    shortcut_factor: str = ""
    branch_factor: str = ""


def _t1(key, label, unit, options, error, shortcut, branch):
    return AblationRow(key, label, unit, options, {"cifar_resnet110": error}, shortcut, branch)


# v2 Table 1, ResNet-110 with f = ReLU. The "exclusive gating, b_g from 0 to -5: fail" row is a
# sweep, not one run, and is left out.
TABLE1: tuple[AblationRow, ...] = (
    _t1("original", "original", "original", {}, 0.0661, "1", "1"),
    _t1("constant_scaling_shortcut", "constant scaling 0.5 / 1", "constant_scaling_shortcut",
        {"shortcut_scale": 0.5, "branch_scale": 1.0}, None, "0.5", "1"),
    _t1("constant_scaling", "constant scaling 0.5 / 0.5", "constant_scaling",
        {"shortcut_scale": 0.5, "branch_scale": 0.5}, 0.1235, "0.5", "0.5"),
    _t1("exclusive_gating_b-6", "exclusive gating, b_g = -6", "exclusive_gating",
        {"gate_bias_init": -6.0}, 0.0870, "1-g(x)", "g(x)"),
    _t1("exclusive_gating_b-7", "exclusive gating, b_g = -7", "exclusive_gating",
        {"gate_bias_init": -7.0}, 0.0981, "1-g(x)", "g(x)"),
    _t1("shortcut_only_gating_b0", "shortcut-only gating, b_g = 0", "shortcut_only_gating",
        {"gate_bias_init": 0.0}, 0.1286, "1-g(x)", "1"),
    _t1("shortcut_only_gating_b-6", "shortcut-only gating, b_g = -6", "shortcut_only_gating",
        {"gate_bias_init": -6.0}, 0.0691, "1-g(x)", "1"),
    _t1("conv_shortcut", "1x1 conv shortcut", "conv_shortcut", {}, 0.1222, "1x1 conv", "1"),
    _t1("dropout_shortcut", "dropout shortcut", "dropout_shortcut", {"rate": 0.5}, None, "dropout 0.5", "1"),
)


def _t2(key, label, error110, error164):
    return AblationRow(key, label, key, {}, {"cifar_resnet110": error110, "cifar_resnet164": error164})


# v2 Table 2: where BN and ReLU sit around the addition.
TABLE2: tuple[AblationRow, ...] = (
    _t2("original", "(a) original", 0.0661, 0.0593),
    _t2("bn_after_addition", "(b) BN after addition", 0.0817, 0.0650),
    _t2("relu_before_addition", "(c) ReLU before addition", 0.0784, 0.0614),
    _t2("relu_only_preact", "(d) ReLU-only pre-activation", 0.0671, 0.0591),
    _t2("full_preact", "(e) full pre-activation", 0.0637, 0.0546),
)

TABLES = {1: TABLE1, 2: TABLE2}
# Networks each table reports: Table 1 ResNet-110 only; Table 2 ResNet-110 and ResNet-164.
TABLE_MODELS = {1: ("cifar_resnet110",), 2: ("cifar_resnet110", "cifar_resnet164")}
