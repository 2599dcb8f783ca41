"""ResNet v1 and v2 models: `create_model(name, num_classes=..., **overrides)`."""

from resnet_identity.models.kernels import Kernels
from resnet_identity.models.layers import GhostBatchNorm
from resnet_identity.models.network import ResNet
from resnet_identity.models.registry import (
    MODELS,
    OVERRIDES,
    UNITS,
    available_models,
    create_model,
    input_size,
)
from resnet_identity.models.stack import convert_layout, stacked_to_unrolled, unrolled_to_stacked
from resnet_identity.models.stems import STEMS, CifarStem, ImageNetStem, Stem, TimmStem
from resnet_identity.models.units import Plain, PostActivation, PreActivation, ResidualUnit

__all__ = [
    "CifarStem",
    "GhostBatchNorm",
    "ImageNetStem",
    "Kernels",
    "MODELS",
    "OVERRIDES",
    "STEMS",
    "Plain",
    "PostActivation",
    "PreActivation",
    "ResNet",
    "ResidualUnit",
    "Stem",
    "TimmStem",
    "UNITS",
    "available_models",
    "convert_layout",
    "create_model",
    "input_size",
    "stacked_to_unrolled",
    "unrolled_to_stacked",
]
