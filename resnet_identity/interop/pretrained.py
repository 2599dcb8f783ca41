"""Published weights, fetched through the library's own cache: torchvision's weight enums and
timm's Hugging Face hub files.

    state_dict, origin, preprocessing = fetch("torchvision", "resnet50", "IMAGENET1K_V1")
    state_dict, origin, preprocessing = fetch("timm", "resnetv2_50", "a1h_in1k")

torchvision's weights download to torch hub's cache, `$TORCH_HOME/hub/checkpoints/<the URL's
file name>` (`~/.cache/torch` by default), through `WeightsEnum.get_state_dict`, which reads
that file instead when it is already there. timm's live in the Hugging Face hub's cache
(`$HF_HOME/hub`, `~/.cache/huggingface` by default), as `model.safetensors` of the repository
that timm's `pretrained_cfg` names; a cached file is read without asking the hub (whose client
retries an unreachable server for about half a minute before it falls back to the cache).
A machine without network therefore converts whatever those caches hold, and is told where the
file goes when they do not hold it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from etils import epath

from resnet_identity.interop import state_dicts
from resnet_identity.interop.state_dicts import read_state_dict
from resnet_identity.training import weights as weights_lib

DEFAULT = "DEFAULT"  # torchvision's name for a model's recommended weights; for timm, its default tag


def fetch(source: str, name: str, tag: str) -> tuple[dict[str, Any], str, weights_lib.Preprocessing]:
    """(`state_dict`, where it came from, the evaluation preprocessing published with it) of
    `source`'s weights `tag` for model `name`; raises `weights.WeightsError` saying what to do
    when they cannot be had."""
    return {"torchvision": _torchvision, "timm": _timm}[source](name, tag)


def _offline_advice(source: str, name: str, cached: str) -> str:
    return (
        f"On a machine with network, run this same command, then copy {cached} to the same path here "
        f"(or convert the file directly: python -m resnet_identity.convert --from={source} --model={name} FILE "
        "--out=DIR)."
    )


def _torchvision(name: str, tag: str) -> tuple[dict[str, Any], str, weights_lib.Preprocessing]:
    from resnet_identity.interop._torch import import_torch, import_torchvision

    torch = import_torch()
    import_torchvision()
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    choices = [DEFAULT, *(w.name for w in enum)]
    if tag not in choices:
        raise weights_lib.WeightsError(
            f"torchvision has no weights {tag!r} for {name}; choose one of {', '.join(choices)}."
        )
    weights = enum[tag] if tag != DEFAULT else enum.DEFAULT
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        state_dict = weights.get_state_dict(progress=True, weights_only=True)
    except OSError as e:  # no network (urllib's URLError), or an unwritable cache
        raise weights_lib.WeightsError(
            f"Cannot download torchvision's {name} {weights.name} weights from {weights.url} ({e}). "
            + _offline_advice("torchvision", name, cached)
        ) from e
    except Exception as e:  # torch.load's errors for a damaged cached file
        raise weights_lib.WeightsError(
            f"Cannot read the cached {cached} ({type(e).__name__}); delete it and run the command again to "
            "download it afresh."
        ) from e
    # Their evaluation transform (`ImageClassification`): IMAGENET1K_V2's shorter side is 232, not 256.
    resize = weights.transforms.keywords.get("resize_size", weights_lib.IMAGENET_PREPROCESSING.resize)
    crop = weights.transforms.keywords.get("crop_size", weights_lib.IMAGENET_PREPROCESSING.crop)
    preprocessing = dataclasses.replace(weights_lib.IMAGENET_PREPROCESSING, resize=resize, crop=crop)
    return state_dict, f"{weights.name} ({cached})", preprocessing


def _timm(name: str, tag: str) -> tuple[dict[str, Any], str, weights_lib.Preprocessing]:
    from resnet_identity.interop import timm as timm_converter
    from resnet_identity.interop._torch import import_timm

    timm = import_timm()
    timm_converter.our_model(name)  # an unsupported model is refused before any download
    tags = [model.split(".", 1)[1] for model in timm.list_pretrained(name) if model.split(".", 1)[0] == name]
    if not tags:
        raise weights_lib.WeightsError(f"timm publishes no weights for {name}; choose another model or convert a file.")
    tag = timm.get_pretrained_cfg(name).tag if tag == DEFAULT else tag
    if tag not in tags:
        choices = ", ".join([DEFAULT, *tags])
        raise weights_lib.WeightsError(f"timm has no weights {tag!r} for {name}; choose one of {choices}.")
    repository = timm.get_pretrained_cfg(f"{name}.{tag}").hf_hub_id
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    path = try_to_load_from_cache(repository, "model.safetensors")
    if not isinstance(path, str):  # not cached (None, or a marker that the hub has no such file)
        try:
            path = hf_hub_download(repository, "model.safetensors")
        except (OSError, EntryNotFoundError) as e:  # offline and not cached (an OSError), or not on the hub
            from huggingface_hub.constants import HF_HUB_CACHE

            raise weights_lib.WeightsError(
                f"Cannot download timm's {name}.{tag} weights (model.safetensors of the Hugging Face repository "
                f"{repository}), and they are not in the Hugging Face cache ({type(e).__name__}). "
                + _offline_advice("timm", name, os.path.join(HF_HUB_CACHE, f"models--{repository.replace('/', '--')}"))
            ) from e

    return read_state_dict(path), f"{tag} ({path})", timm_converter.preprocessing(f"{name}.{tag}")


def import_pretrained(source: str, name: str, tag: str, out: str | epath.PathLike) -> weights_lib.Weights:
    """Converts `source`'s published weights `tag` of `name` (downloaded through the library's
    own cache: `fetch`) into the weights directory `out`, with their preprocessing."""
    state_dict, origin, preprocessing = fetch(source, name, tag)
    weights = state_dicts.import_state_dict(source, name, state_dict)
    return state_dicts.save_converted(weights, out, preprocessing, f"{weights.source} {origin}")
