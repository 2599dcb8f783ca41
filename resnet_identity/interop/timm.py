"""timm's BatchNorm pre-activation `resnetv2_50/101/152` <-> our `preact_resnetNN`, with timm's
stem (`model_overrides.stem="timm"`) and the stride on the 3x3 conv.

timm's `PreActBottleneck` is v2's full pre-activation unit (v2 Fig. 4(e)), with two
differences from the released code that are overrides here: it strides its 3x3 conv, not
the first 1x1 (`stride_on="3x3"`), and its stem is conv7x7/2 + max-pool with no BN-ReLU
(`stems.TimmStem`), so stage 1's first unit pre-activates both paths. Its projection is a
bare 1x1 conv on the pre-activated input, like ours. timm's other `resnetv2_*` models are
other networks: `*_bit`, `*_gn`, `*_frn` and `*_evos` normalise otherwise, `*d` and `*t`
have a deep stem, and `resnetv2_18/34`'s basic units keep x, not its pre-activation, on the
identity shortcut of stage 1's first unit, where ours (and `resnet-pre-act.lua`) keep the
pre-activation.
"""

from __future__ import annotations

import math

from resnet_identity import models
from resnet_identity.interop import mapping
from resnet_identity.interop.mapping import CONV, CONV_DENSE, NORM, Layer
from resnet_identity.training import weights as weights_lib

SOURCE = "timm"
MODELS = ("resnetv2_50", "resnetv2_101", "resnetv2_152")
ARCHITECTURE = {"stem": "timm", "stride_on": "3x3"}


def _depth(name: str) -> int:
    return int(name[len("resnetv2_") :])


def our_model(name: str) -> tuple[str, dict]:
    """Our model name and overrides for timm's `name`."""
    if name not in MODELS:
        raise weights_lib.WeightsError(
            f"Unsupported timm model {name!r}; choose one of {', '.join(MODELS)} (the other resnetv2 models "
            "are other networks: see resnet_identity/interop/timm.py)."
        )
    return f"preact_resnet{_depth(name)}", dict(ARCHITECTURE)


def torch_name(model: str, model_overrides: dict) -> str:
    """timm's name for our `model` with `model_overrides`; raises `WeightsError` saying why
    when no supported timm model has that architecture."""
    names = {our_model(name)[0]: name for name in MODELS}
    architecture = {k: v for k, v in model_overrides.items() if k not in ("dtype", "bn_group_size", "bn_momentum")}
    if model not in names or architecture != ARCHITECTURE:
        raise weights_lib.WeightsError(
            f"These weights are {model} with overrides {architecture}; timm's {', '.join(MODELS)} are our "
            f"{', '.join(names)} with overrides {ARCHITECTURE}, so they cannot be exported to timm."
        )
    return names[model]


def preprocessing(name: str) -> weights_lib.Preprocessing:
    """timm's evaluation transform for `name` (`timm.data.create_transform` on its `pretrained_cfg`:
    shorter side to floor(224 / crop_pct), centre crop)."""
    from resnet_identity.interop._torch import import_timm

    cfg = import_timm().get_pretrained_cfg(name)
    crop = cfg.input_size[-1]
    return weights_lib.Preprocessing(
        resize=math.floor(crop / cfg.crop_pct), crop=crop, mean=cfg.mean, std=cfg.std, interpolation=cfg.interpolation
    )


def layers(name: str) -> list[Layer]:
    """Our layers and timm's modules, in timm's `state_dict` order."""
    sizes, _ = models.registry.IMAGENET_STAGES[_depth(name)]
    table = [Layer(CONV, "stem/conv", "stem.conv")]
    for stage, unit, ours in mapping.unit_paths(sizes):
        theirs = f"stages.{stage}.blocks.{unit}"
        if unit == 0:
            table.append(Layer(CONV, f"{ours}/shortcut/conv", f"{theirs}.downsample.conv"))
        for i in (1, 2, 3):
            table += [
                Layer(NORM, f"{ours}/bn{i}", f"{theirs}.norm{i}"),
                Layer(CONV, f"{ours}/conv{i}", f"{theirs}.conv{i}"),
            ]
    return table + [Layer(NORM, "final_bn", "norm"), Layer(CONV_DENSE, "fc", "head.fc")]
