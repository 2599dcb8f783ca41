"""The crop protocols of the streamed datasets (imagenet2012, folder), as facts: no TensorFlow.

`imagenet_preprocess.py` implements them in tf.data; this module names them, so that the
registry's facts and config validation need no TensorFlow.

Training crops (`<dataset>.train_crop`): "scale", v1's scale augmentation (shorter side drawn
from [256, 480], a random 224 crop; v1 Sec. 3.4, kept by v2), or "scale_aspect",
fb.resnet.torch's random-sized crop (v2 Table 5's "scale + aspect" row).

Evaluation crops (`eval_crops`), for a network trained at `image_size` s:
- s: the shorter side resized to round(s * 256 / 224), the centre s x s crop (ImageNet's
  224-from-256 single crop);
- round(s * 320 / 224): the shorter side resized to that size and the centre square (v2
  Table 5: "a 320x320 crop from an image whose shorter side is 320");
- "10crop": fb.resnet.torch's ten-crop test: the four corners and the centre at s after the
  shorter side is resized to round(s * 256 / 224), and their mirror images; the softmax
  outputs of the ten are averaged (`train_state.eval_step`).
At s = 224 these are ImageNet's 224, 320 and 10crop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resnet_identity.data.base import Option

SCALE = "scale"
SCALE_ASPECT = "scale_aspect"
TRAIN_CROPS = (SCALE, SCALE_ASPECT)
TEN_CROP = "10crop"
# Options of every streamed dataset, nested under its name in the config.
STREAM_OPTIONS = {
    # v1's shorter side in [256, 480] + random crop; "scale_aspect": fb.resnet.torch's.
    "train_crop": Option(SCALE, str),
    # fb.resnet.torch's ColorJitter strength (0.4 there); 0 is off.
    "color_jitter": Option(0.0, float),
    # Std of AlexNet's PCA lighting noise (0.1 in v1's colour augmentation); 0 is off.
    "pca_lighting": Option(0.0, float),
    # Examples (still-encoded images) in the training shuffle buffer.
    "shuffle_buffer": Option(10_000, int),
}


def eval_crops(image_size: int) -> tuple[int | str, ...]:
    """The evaluation crops of a network trained at `image_size` (module docstring)."""
    return (image_size, round(image_size * 320 / 224), TEN_CROP)


def eval_resize(crop: int | str, image_size: int, shorter: int | None = None) -> tuple[int, int]:
    """(shorter side, crop side) of evaluation crop `crop` (one of `eval_crops(image_size)`);
    `shorter` replaces round(image_size * 256 / 224) (imported weights' own, e.g. timm's 235)."""
    if crop not in eval_crops(image_size):
        raise ValueError(
            f"Evaluation crop {crop!r} is not one of {eval_crops(image_size)} (a network trained at {image_size})."
        )
    if crop == image_size or crop == TEN_CROP:
        return shorter or round(image_size * 256 / 224), image_size
    return crop, crop


def check_stream_options(options: Mapping[str, Any]) -> list[str]:
    """Messages for the invalid values among `STREAM_OPTIONS`."""
    errors = []
    if options["train_crop"] not in TRAIN_CROPS:
        errors.append(
            f"train_crop={options['train_crop']!r} must be 'scale' (v1: shorter side in [256, 480], "
            "random 224 crop) or 'scale_aspect' (fb.resnet.torch's random-sized crop)."
        )
    for name in ("color_jitter", "pca_lighting"):
        if not options[name] >= 0:
            errors.append(f"{name}={options[name]!r} must be >= 0 (0 turns it off).")
    if not options["shuffle_buffer"] >= 1:
        errors.append(f"shuffle_buffer={options['shuffle_buffer']!r} must be >= 1.")
    return errors
