"""Torch `state_dict`s <-> our `Weights` (`weights.py` directories): reading and writing the
files, converting through a source's tables (`torchvision.py`, `timm.py`), and saving the result.
The package's `__init__` re-exports what users call (`interop.import_file`, ...).
"""

from __future__ import annotations

import io
import pickle
import re
from types import ModuleType
from typing import Any

import numpy as np
from etils import epath

from resnet_identity import models
from resnet_identity.data import imagenet
from resnet_identity.interop import mapping
from resnet_identity.interop import timm as timm_converter
from resnet_identity.interop import torchvision as torchvision_converter
from resnet_identity.runs.files import as_path
from resnet_identity.training import weights as weights_lib

CONVERTERS: dict[str, ModuleType] = {"torchvision": torchvision_converter, "timm": timm_converter}


def converter(source: str) -> ModuleType:
    if source not in CONVERTERS:
        raise weights_lib.WeightsError(f"Unknown weights source {source!r}; choose one of {', '.join(CONVERTERS)}.")
    return CONVERTERS[source]


def imagenet_class_names() -> list[str]:
    """The ImageNet class names in the order of every ImageNet classifier here (torchvision's list)."""
    from resnet_identity.interop._torch import import_torchvision

    import_torchvision()
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def import_state_dict(source: str, name: str, state_dict: dict[str, Any]) -> weights_lib.Weights:
    """`Weights` (not saved) of `source`'s model `name` from its `state_dict` (arrays or
    tensors). Raises `weights.WeightsMismatchError` naming the first tensor that does not fit."""
    convert = converter(source)
    model, overrides = convert.our_model(name)
    state_dict = {key: _to_numpy(value) for key, value in state_dict.items()}
    classifier = next(layer.theirs for layer in convert.layers(name) if layer.ours == "fc")
    num_classes = int(np.shape(state_dict.get(f"{classifier}.bias", np.zeros(imagenet.NUM_CLASSES)))[0])
    module = models.create_model(model, num_classes=num_classes, scan=False, **overrides)
    like = weights_lib.abstract_variables(module)
    variables = mapping.import_variables(state_dict, convert.layers(name), like, model=f"{source}'s {name}")
    return weights_lib.Weights(
        model,
        overrides,
        variables,
        convert.preprocessing(name),
        imagenet_class_names() if num_classes == imagenet.NUM_CLASSES else None,
        f"{source}:{name}",
    )


def export_state_dict(weights: weights_lib.Weights, source: str) -> tuple[str, dict[str, np.ndarray]]:
    """(`source`'s model name, its `state_dict` as NumPy arrays) for `weights`; raises
    `weights.WeightsError` when `source` has no model of their architecture."""
    convert = converter(source)
    name = convert.torch_name(weights.model, weights.model_overrides)
    unrolled = models.stacked_to_unrolled(weights.variables)
    return name, mapping.export_state_dict(unrolled, convert.layers(name))


def read_state_dict(path: str | epath.PathLike) -> dict[str, Any]:
    """A `state_dict` from a `.pth` file (`torch.save`d, read with `weights_only=True`) or a
    `.safetensors` file (read with NumPy, torch not needed)."""
    path = as_path(path)
    if not path.exists():
        raise weights_lib.WeightsError(f"No such weights file: {path}.")
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        from safetensors.numpy import load

        return load(data)
    from resnet_identity.interop._torch import import_torch

    torch = import_torch()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:  # not a pickle torch reads
            raise weights_lib.WeightsError(_unreadable(path, e)) from e
        raise weights_lib.WeightsError(  # weights_only refused a pickled object that is not a tensor
            f"{path} holds Python objects besides tensors ({found.group(1)}: a whole model saved with "
            "torch.save(model)?), which are not unpickled because that could run code from the file. Save "
            "`model.state_dict()` with torch.save and convert that file."
        ) from e
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError... for a damaged file
        raise weights_lib.WeightsError(_unreadable(path, e)) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a training checkpoint
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise weights_lib.WeightsError(
            f"{path} holds a {type(state).__name__}, not a state_dict; save `model.state_dict()` with torch.save."
        )
    return state


def _unreadable(path: epath.Path, error: Exception) -> str:
    # Torch's own text is left out: its advice (weights_only=False, miniz internals) is not the user's fix.
    return (
        f"Cannot read {path}: it is not a file torch.save wrote, or it is truncated or damaged "
        f"({type(error).__name__}). Save or download it again."
    )


def write_state_dict(state_dict: dict[str, np.ndarray], path: str | epath.PathLike) -> None:
    """Saves a `state_dict` of torch tensors with `torch.save` (`.pth`) or as `.safetensors`."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save

        path.write_bytes(save({k: np.ascontiguousarray(v) for k, v in state_dict.items()}))
        return
    from resnet_identity.interop._torch import import_torch

    torch = import_torch()
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, buffer)
    path.write_bytes(buffer.getvalue())


def import_file(source: str, name: str, path: str | epath.PathLike, out: str | epath.PathLike) -> weights_lib.Weights:
    """Converts `source`'s `name` weights in `path` into the weights directory `out`."""
    weights = import_state_dict(source, name, read_state_dict(path))
    return save_converted(weights, out, weights.preprocessing, f"{weights.source} ({path})")


def save_converted(
    weights: weights_lib.Weights, out: str | epath.PathLike, preprocessing: weights_lib.Preprocessing, source: str
) -> weights_lib.Weights:
    return weights_lib.save_weights(
        out,
        model=weights.model,
        model_overrides=weights.model_overrides,
        variables=weights.variables,
        preprocessing=preprocessing,
        class_names=weights.class_names,
        source=source,
    )


def export_file(weights: weights_lib.Weights, source: str, path: str | epath.PathLike) -> str:
    """Writes `weights` as a `state_dict` of `source`'s model; returns that model's name."""
    name, state_dict = export_state_dict(weights, source)
    write_state_dict(state_dict, path)
    return name


def _to_numpy(value: Any) -> np.ndarray:
    """A copy: `Tensor.numpy()` shares the tensor's memory, which torch updates in place
    (BN statistics, in training mode) and JAX may adopt without copying."""
    if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no NumPy dtype
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy().copy()
    return np.array(value)
