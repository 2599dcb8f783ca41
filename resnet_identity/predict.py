"""Classify images, or extract their features, with a run's checkpoint or converted weights.

  python -m resnet_identity.predict --weights=DIR --model=NAME [--json] IMAGE...
  python -m resnet_identity.predict --workdir=RUN [--step=N] [--json] IMAGE...
  python -m resnet_identity.predict --weights=DIR --model=NAME --features=OUT.npz IMAGE...

Reads JPEG, PNG and the other files Pillow opens, in each pixel mode `data/images.py` lists
(16-bit and float images scaled to 8 bits as training decodes them, transparency dropped, EXIF
orientation applied, an animated image's first frame, with a note), without TensorFlow or
torch, and prints each image's five likeliest classes with their names and probabilities;
--json prints one line per image instead, `{"image": ..., "top5": [[class_index, class_name, probability], ...]}`.
--features writes each image's pooled features (the input of the classifier) to OUT.npz:
`features` [images, channels] in the order given, and `images` (the paths).

Each image is preprocessed as the weights' source did (weights.json; for torchvision's:
shorter side resized to 256 bilinear, centre 224 crop, ImageNet mean and std), or as the run
evaluates (its dataset's crop and normalisation). Sizes and crop offsets are computed as
torchvision's `Resize` and `CenterCrop` compute them, so a torchvision model given the same
image sees the same pixels.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
from absl import flags

from resnet_identity import cli
from resnet_identity.data.images import ImageError, read_image
from resnet_identity.runs.files import as_path

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined when it runs rather than at import, so that code importing
    several commands (the tests do) defines no flag twice."""
    flags.DEFINE_string("workdir", None, "A run's workdir: use its checkpoint.")
    flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step (default: the newest).")
    flags.DEFINE_string("weights", None, "A weights directory from `python -m resnet_identity.convert`.")
    flags.DEFINE_string("model", None, "With --weights: the weights' model (one of ours, as in their weights.json).")
    flags.DEFINE_boolean("json", False, "Print one JSON line per image instead of text.")
    flags.DEFINE_string("features", None, "Write the pooled features to this .npz file instead of classifying.")


TOP = 5
BATCH = 16  # images per forward pass; the last batch is padded, so one compile serves all


def preprocess(image: np.ndarray, preprocessing) -> np.ndarray:
    """float32 [crop, crop, 3] network input from a uint8 RGB image (`weights.Preprocessing`)."""
    from PIL import Image

    height, width = image.shape[:2]
    short, long = sorted((height, width))
    size = (preprocessing.resize, int(preprocessing.resize * long / short))  # torchvision's Resize(int)
    new_height, new_width = size if height <= width else size[::-1]
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[preprocessing.interpolation]
    resized = np.asarray(Image.fromarray(image).resize((new_width, new_height), resample), np.float32)
    crop = preprocessing.crop
    top, left = int(round((new_height - crop) / 2.0)), int(round((new_width - crop) / 2.0))  # torchvision's CenterCrop
    window = resized[top : top + crop, left : left + crop] / 255.0
    return ((window - np.asarray(preprocessing.mean)) / np.asarray(preprocessing.std)).astype(np.float32)


def forward(weights, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, classes], pooled features [N, channels]) of preprocessed images."""
    import flax.linen as nn
    import jax

    model, variables = weights.create_model()

    def features_and_logits(images):
        captured = {}

        def capture_classifier_input(next_fun, args, kwargs, context):
            if context.module.name == "fc" and context.method_name == "__call__":
                captured["features"] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(capture_classifier_input):
            logits = model.apply(variables, images, train=False)
        return captured["features"], jax.nn.softmax(logits)

    run = jax.jit(features_and_logits)
    features, probabilities = [], []
    for start in range(0, len(inputs), BATCH):
        chunk = inputs[start : start + BATCH]
        padded = np.concatenate([chunk, np.zeros((BATCH - len(chunk),) + chunk.shape[1:], chunk.dtype)])
        f, p = run(padded)
        features.append(np.asarray(f)[: len(chunk)])
        probabilities.append(np.asarray(p)[: len(chunk)])
    return np.concatenate(probabilities), np.concatenate(features)


def top_classes(probabilities: np.ndarray, class_names: list[str] | None) -> list[list]:
    """[[class_index, class_name, probability], ...], likeliest first."""
    order = np.argsort(-probabilities, kind="stable")[:TOP]
    return [[int(i), class_names[i] if class_names else f"class {i}", float(probabilities[i])] for i in order]


def predict(images: list[str]) -> list[str]:
    """The lines to print for the flags and `images` (module docstring)."""
    from resnet_identity.training import weights as weights_lib

    if not images:
        raise cli.UserError("give at least one image file: python -m resnet_identity.predict ... IMAGE...")
    pixels = []
    for path in images:  # every image is checked before anything compiles
        image, note = read_image(path)
        if note:
            print(f"note: {note}", file=sys.stderr, flush=True)
        pixels.append(image)
    weights = weights_lib.load_weights_or_run(
        workdir=FLAGS.workdir, step=FLAGS.step, weights=FLAGS.weights, model=FLAGS.model
    )
    inputs = np.stack([preprocess(image, weights.preprocessing) for image in pixels])
    probabilities, features = forward(weights, inputs)
    if FLAGS.features is not None:
        buffer = io.BytesIO()
        np.savez(buffer, features=features, images=np.asarray(images))
        as_path(FLAGS.features).write_bytes(buffer.getvalue())
        return [
            f"Wrote {FLAGS.features}: features {features.shape[0]} x {features.shape[1]} ({weights.model}, "
            "the classifier's input)."
        ]
    lines = []
    for path, row in zip(images, probabilities):
        top = top_classes(row, weights.class_names)
        if FLAGS.json:
            lines.append(json.dumps({"image": path, "top5": top}))
        else:
            lines.append(path)
            lines += [f"  {probability:7.2%}  {name} ({index})" for index, name, probability in top]
    return lines


def main(argv: list[str]) -> None:
    from resnet_identity.training import weights as weights_lib

    try:
        lines = predict(argv[1:])
    except (weights_lib.WeightsError, ImageError, OSError) as e:  # OSError: an unwritable --features path
        raise cli.UserError(str(e)) from e
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
