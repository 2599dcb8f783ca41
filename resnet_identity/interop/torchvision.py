"""torchvision's ResNet-18/34/50/101/152 <-> our `resnetNN` with the stride on the 3x3 conv.

torchvision's `Bottleneck` strides its 3x3 conv ("ResNet V1.5", as fb.resnet.torch did); the
paper's (v1 Table 1) and our default stride the first 1x1 (`stride_on="1x1"`). The two give
differently shaped networks on the same weights (the 1x1 then sees every pixel, the 3x3 one
in four), so torchvision's bottleneck weights are our `resnet50/101/152` with
`stride_on="3x3"`, not the paper's network. ResNet-18/34 (basic units) are the same network
either way. Everything else matches one to one (v1 Fig. 5, option B shortcuts: a 1x1
projection and BN where the shape changes, `downsample.0`/`downsample.1`).
"""

from __future__ import annotations

from resnet_identity import models
from resnet_identity.interop import mapping
from resnet_identity.interop.mapping import CONV, DENSE, NORM, Layer
from resnet_identity.training import weights as weights_lib

SOURCE = "torchvision"
# torchvision's model names, which are also ours.
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def overrides(name: str) -> dict:
    """Our `create_model` overrides for torchvision's `name`."""
    return {"stride_on": "3x3"} if models.registry.IMAGENET_STAGES[int(name[len("resnet") :])][1] else {}


def our_model(name: str) -> tuple[str, dict]:
    """Our model name and overrides for torchvision's `name`."""
    if name not in MODELS:
        raise weights_lib.WeightsError(f"Unknown torchvision model {name!r}; choose one of {', '.join(MODELS)}.")
    return name, overrides(name)


def torch_name(model: str, model_overrides: dict) -> str:
    """torchvision's name for our `model` with `model_overrides`; raises `WeightsError` saying
    why when no torchvision model has that architecture."""
    if model not in MODELS:
        raise weights_lib.WeightsError(
            f"torchvision has no model with the architecture of our {model!r}; it has {', '.join(MODELS)} "
            "(our models of those names, with stride_on='3x3' for 50 and deeper)."
        )
    architecture = {k: v for k, v in model_overrides.items() if k not in ("dtype", "bn_group_size", "bn_momentum")}
    if architecture != overrides(model):
        raise weights_lib.WeightsError(
            f"These weights are {model} with overrides {architecture}; torchvision's {model} is ours with "
            f"{overrides(model) or 'no overrides'} (the stride of its bottlenecks on the 3x3 conv; the papers' "
            "stride_on='1x1' is a different network), so they cannot be exported to it."
        )
    return model


def preprocessing(name: str) -> weights_lib.Preprocessing:
    """torchvision's ImageNet evaluation transform, the same for each of `MODELS` (its published
    weights may differ: `pretrained.py` reads theirs)."""
    return weights_lib.IMAGENET_PREPROCESSING


def layers(name: str) -> list[Layer]:
    """Our layers and torchvision's modules, in torchvision's `state_dict` order."""
    sizes, bottleneck = models.registry.IMAGENET_STAGES[int(name[len("resnet") :])]
    table = [Layer(CONV, "stem/conv", "conv1"), Layer(NORM, "stem/bn", "bn1")]
    for stage, unit, ours in mapping.unit_paths(sizes):
        theirs = f"layer{stage + 1}.{unit}"
        for i in range(1, 4 if bottleneck else 3):
            table += [
                Layer(CONV, f"{ours}/conv{i}", f"{theirs}.conv{i}"),
                Layer(NORM, f"{ours}/bn{i}", f"{theirs}.bn{i}"),
            ]
        if unit == 0 and (bottleneck or stage > 0):  # option B: a projection where the shape changes
            table += [
                Layer(CONV, f"{ours}/shortcut/conv", f"{theirs}.downsample.0"),
                Layer(NORM, f"{ours}/shortcut/bn", f"{theirs}.downsample.1"),
            ]
    return table + [Layer(DENSE, "fc", "fc")]
