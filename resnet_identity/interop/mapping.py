"""The shared core of every converter: a one-to-one table between our tensors and a torch
`state_dict`'s, and the moves that follow it in both directions. NumPy only.

A converter (`torchvision.py`, `timm.py`) lists, in its `state_dict`'s own order, which of
our layers each torch module is (`Layer`): a convolution, a BatchNorm or the classifier.
Everything else is here, once: the axis orders (flax HWIO kernels against torch's OIHW, our
[in, out] dense kernel against torch's [out, in] weight, or timm's [out, in, 1, 1] 1x1-conv
classifier), BN's four tensors and PyTorch's `num_batches_tracked`, and the check that names
the first tensor of a file that does not fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from resnet_identity.training import weights as weights_lib

CONV, NORM, DENSE, CONV_DENSE = "conv", "norm", "dense", "conv_dense"
# BN: our (collection, name) for each of torch's tensor names.
_NORM_TENSORS = (
    ("weight", "params", "scale"),
    ("bias", "params", "bias"),
    ("running_mean", "batch_stats", "mean"),
    ("running_var", "batch_stats", "var"),
)
# PyTorch counts BN's training steps (read only when its momentum is None, a cumulative
# average, which no ResNet here uses); an exported file holds 0, and an imported one may lack it.
BATCHES_TRACKED = "num_batches_tracked"


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer in both worlds: `ours` is its module path in our unrolled variables
    ("stage1/first/conv1"), `theirs` the torch module's prefix ("layer1.0.conv1")."""

    kind: str
    ours: str
    theirs: str


def _tensors(layer: Layer) -> Iterator[tuple[str, str, str]]:
    """(torch name, our collection, our leaf name) of each tensor of `layer`."""
    if layer.kind == CONV:
        yield f"{layer.theirs}.weight", "params", "kernel"
    elif layer.kind == NORM:
        for theirs, collection, ours in _NORM_TENSORS:
            yield f"{layer.theirs}.{theirs}", collection, ours
    elif layer.kind in (DENSE, CONV_DENSE):
        yield f"{layer.theirs}.weight", "params", "kernel"
        yield f"{layer.theirs}.bias", "params", "bias"
    else:
        raise ValueError(f"Unknown layer kind {layer.kind!r}.")


def to_torch_layout(kind: str, leaf: str, array: Any) -> np.ndarray:
    array = np.asarray(array, np.float32)
    if leaf != "kernel":
        return array
    if kind == CONV:
        return array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    return array.T[:, :, None, None] if kind == CONV_DENSE else array.T


def from_torch_layout(kind: str, leaf: str, array: Any) -> np.ndarray:
    array = np.asarray(array, np.float32)
    if leaf != "kernel":
        return array
    if kind == CONV:
        return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    return (array[:, :, 0, 0] if kind == CONV_DENSE else array).T


def _get(tree: dict, path: str) -> Any:
    for name in path.split("/"):
        tree = tree[name]
    return tree


def expected_shapes(layers: list[Layer], like: dict) -> dict[str, tuple[int, ...]]:
    """The torch `state_dict` shapes, in its order, of the model whose abstract unrolled
    variables are `like` (`weights.abstract_variables`); BN's step counters left out."""
    shapes = {}
    for layer in layers:
        for theirs, collection, leaf in _tensors(layer):
            ours = _get(like[collection], f"{layer.ours}/{leaf}")
            shapes[theirs] = to_torch_layout(layer.kind, leaf, np.zeros(ours.shape, np.float32)).shape
    return shapes


def check_state_dict(state_dict: dict[str, Any], shapes: dict[str, tuple[int, ...]], *, model: str) -> None:
    """Raises `weights.WeightsMismatchError` naming the first tensor of `state_dict` (in the
    torch model's order) that is missing, of another shape, or unexpected."""
    hint = "Check --model against the file's architecture."
    for name, shape in shapes.items():
        if name not in state_dict:
            raise weights_lib.WeightsMismatchError(
                f"The file does not hold {model}: tensor {name} (expected shape {shape}) is missing. {hint}"
            )
        got = tuple(np.shape(state_dict[name]))
        if got != tuple(shape):
            raise weights_lib.WeightsMismatchError(
                f"The file does not hold {model}: tensor {name} has shape {got}, expected shape {tuple(shape)}. {hint}"
            )
    extra = [name for name in state_dict if name not in shapes and not name.endswith(f".{BATCHES_TRACKED}")]
    if extra:
        shape = tuple(np.shape(state_dict[extra[0]]))
        raise weights_lib.WeightsMismatchError(
            f"The file does not hold {model}: unexpected tensor {extra[0]} (shape {shape}). {hint}"
        )


def import_variables(state_dict: dict[str, Any], layers: list[Layer], like: dict, *, model: str) -> dict:
    """Our unrolled `params` and `batch_stats` from a torch `state_dict` (NumPy arrays),
    checked against `like` first."""
    check_state_dict(state_dict, expected_shapes(layers, like), model=model)
    flat = {}
    for layer in layers:
        for theirs, collection, leaf in _tensors(layer):
            flat[f"{collection}/{layer.ours}/{leaf}"] = from_torch_layout(layer.kind, leaf, state_dict[theirs])
    variables = weights_lib.unflatten(flat)
    return {name: variables.get(name, {}) for name in weights_lib.COLLECTIONS}


def export_state_dict(variables: dict, layers: list[Layer]) -> dict[str, np.ndarray]:
    """A torch `state_dict` (NumPy arrays, in the torch model's order) from our unrolled variables."""
    state = {}
    for layer in layers:
        for theirs, collection, leaf in _tensors(layer):
            state[theirs] = np.ascontiguousarray(
                to_torch_layout(layer.kind, leaf, _get(variables[collection], f"{layer.ours}/{leaf}"))
            )
        if layer.kind == NORM:
            state[f"{layer.theirs}.{BATCHES_TRACKED}"] = np.zeros((), np.int64)
    return state


def unit_paths(stage_sizes: tuple[int, ...]) -> Iterator[tuple[int, int, str]]:
    """(stage index from 0, unit index within the stage, our unrolled module path) of every
    unit, in order: each stage's `first` unit, then `rest/unit0`, `rest/unit1`, ..."""
    for stage, size in enumerate(stage_sizes):
        for unit in range(size):
            yield stage, unit, f"stage{stage + 1}/" + ("first" if unit == 0 else f"rest/unit{unit - 1}")
