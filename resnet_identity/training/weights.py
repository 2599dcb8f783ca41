"""Converted weights: the one directory format that convert, predict, evaluate and `init_from` share.

A weights directory holds two files:

- `weights.json`: what the numbers are. `format` (`FORMAT`) and `version`; `model` (a
  `create_model` name) and `model_overrides` (its overrides, layout fields `scan`, `remat` and
  `unroll` left out); `num_classes`; `preprocessing` (`Preprocessing`: how an image becomes the
  network's input); `class_names` (one per output, or null); `source` (where the numbers came
  from, free text such as "torchvision:resnet50" or "run:/path/to/workdir@64000").
- `variables.npz`: `params` and `batch_stats` in the unrolled layout (`unit0`, `unit1`, ...;
  `models/stack.py`), one array per leaf, keyed by its path joined with "/", e.g.
  `params/stage1/first/conv1/kernel`, in flax's own axis order (conv kernels HWIO).

Why npz rather than an Orbax checkpoint: a converted model is a few hundred MB written once
and read whole, so one file in NumPy's documented format is all it needs. Anyone can read it
with NumPy alone (no JAX, TensorStore or Orbax version to match), its keys name the layers,
and it goes through `etils.epath` like every other file, so `gs://` works. Orbax's
strengths (sharded, asynchronous, partial writes of training state) serve checkpoints, which
stay Orbax's (`checkpointing.py`).

`weights.json` is written last, so a directory without it is an unfinished write.

`load_run_weights` reads the same from a training run's workdir (its `config.json` and a
checkpoint), so everything that takes weights takes a run too.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import jax
import numpy as np
from etils import epath

from resnet_identity import models
from resnet_identity.data import crops, registry
from resnet_identity.data import normalization as normalization_lib
from resnet_identity.data.base import DatasetError
from resnet_identity.runs import checkpointing
from resnet_identity.runs.files import as_path
from resnet_identity.training import config as config_lib
from resnet_identity.training import config_migration

FORMAT = "resnet_identity.training.weights"
VERSION = 1
METADATA_FILE = "weights.json"
ARRAYS_FILE = "variables.npz"
COLLECTIONS = ("params", "batch_stats")
# Overrides that decide only how variables are laid out, never their numbers (`config.LAYOUT_FIELDS`).
LAYOUT_OVERRIDES = ("scan", "remat", "unroll")
INTERPOLATIONS = ("bilinear", "bicubic")


class WeightsError(ValueError):
    """A weights directory or file that cannot be used; the message says what to do."""


class WeightsMismatchError(WeightsError):
    """Weights of another architecture than the model they are loaded into."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How one image becomes the network's input, at evaluation.

    Resize the shorter side to `resize` pixels (`interpolation`), take the centre `crop` x
    `crop`, scale pixels to [0, 1], subtract `mean` and divide by `std`. Both are per RGB
    channel (3 values) on the 0-1 scale; a run normalised per pixel (v1 Sec. 4.2) stores an
    [H, W, 3] mean and a scalar std.
    """

    resize: int
    crop: int
    mean: Any
    std: Any
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise WeightsError(f"Preprocessing interpolation {self.interpolation!r}: choose one of {INTERPOLATIONS}.")
        if not 0 < self.crop <= self.resize:
            raise WeightsError(f"Preprocessing crop {self.crop} must be positive and at most resize {self.resize}.")

    def to_json(self) -> dict:
        return {
            "resize": int(self.resize),
            "crop": int(self.crop),
            "mean": np.asarray(self.mean).tolist(),
            "std": np.asarray(self.std).tolist(),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_json(cls, data: dict) -> Preprocessing:
        return cls(
            resize=int(data["resize"]),
            crop=int(data["crop"]),
            mean=np.asarray(data["mean"], np.float64),
            std=np.asarray(data["std"], np.float64),
            interpolation=data["interpolation"],
        )


# torchvision's ImageNet weights (the `IMAGENET1K_V1` transforms: `ImageClassification(crop_size=224)`).
IMAGENET_PREPROCESSING = Preprocessing(
    resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bilinear"
)


@dataclasses.dataclass(frozen=True)
class Weights:
    """A model's variables with what is needed to use them (the module docstring's fields)."""

    model: str
    model_overrides: dict
    variables: dict
    preprocessing: Preprocessing
    class_names: list[str] | None
    source: str
    step: int | None = None  # the checkpoint's, for a run's weights

    @property
    def num_classes(self) -> int:
        return int(self.variables["params"]["fc"]["bias"].shape[0])

    def create_model(self, **layout: Any) -> tuple[Any, dict]:
        """The flax model and its variables in the model's layout; `layout` may set the layout
        overrides (`scan`, `remat`, `unroll`) and `dtype`."""
        unknown = sorted(set(layout) - set(LAYOUT_OVERRIDES) - {"dtype"})
        if unknown:
            raise WeightsError(
                f"create_model takes only layout overrides {LAYOUT_OVERRIDES} and dtype, "
                f"not {unknown}: the weights fix the architecture."
            )
        model = models.create_model(self.model, num_classes=self.num_classes, **{**self.model_overrides, **layout})
        like = abstract_variables(model, self.preprocessing.crop)
        return model, models.convert_layout(self.variables, like)


def abstract_variables(model: Any, image_size: int = 32) -> dict:
    """`params` and `batch_stats` of `model` as `jax.ShapeDtypeStruct`s (nothing computed)."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return {name: shapes.get(name, {}) for name in COLLECTIONS}


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """`{"a/b/c": leaf}` for a nested dict, in the dict's own order."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def check_variables(variables: dict, like: dict, *, model: str) -> None:
    """Raises `WeightsMismatchError` naming the first tensor (by path, in `like`'s order) that
    is missing, unexpected or of another shape, when `variables` do not fit `like` (the
    model's abstract variables in the same layout)."""
    got, expected = flatten(variables), flatten(like)
    for name, want in expected.items():
        if name not in got:
            raise WeightsMismatchError(
                f"The weights do not fit {model}: tensor {name} (shape {tuple(want.shape)}) "
                "is missing. Check --model against the file's architecture."
            )
        if tuple(np.shape(got[name])) != tuple(want.shape):
            raise WeightsMismatchError(
                f"The weights do not fit {model}: tensor {name} has shape "
                f"{tuple(np.shape(got[name]))}, expected {tuple(want.shape)}. "
                "Check --model against the file's architecture."
            )
    extra = [name for name in got if name not in expected]
    if extra:
        raise WeightsMismatchError(
            f"The weights do not fit {model}: unexpected tensor {extra[0]} "
            f"(shape {tuple(np.shape(got[extra[0]]))}). Check --model against the file's "
            "architecture."
        )


def save_weights(
    directory: str | epath.PathLike,
    *,
    model: str,
    model_overrides: dict,
    variables: dict,
    preprocessing: Preprocessing,
    class_names: list[str] | None,
    source: str,
) -> Weights:
    """Writes a weights directory (module docstring) and returns what it holds.

    `variables` (`params` and `batch_stats`, in any layout) are checked against `model` first,
    so a mismatch raises `WeightsMismatchError` before anything is written.
    """
    overrides = {k: v for k, v in model_overrides.items() if k not in LAYOUT_OVERRIDES and v is not None}
    variables = {name: variables.get(name, {}) for name in COLLECTIONS}
    unrolled = jax.tree.map(np.asarray, models.stacked_to_unrolled(variables))
    weights = Weights(model, overrides, unrolled, preprocessing, list(class_names) if class_names else None, source)
    module = models.create_model(model, num_classes=weights.num_classes, **overrides, scan=False)
    check_variables(unrolled, abstract_variables(module, preprocessing.crop), model=model)
    if class_names is not None and len(class_names) != weights.num_classes:
        raise WeightsError(f"{len(class_names)} class names for a model with {weights.num_classes} outputs.")

    path = as_path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / METADATA_FILE).unlink(missing_ok=True)  # the directory is unfinished until it is rewritten
    buffer = io.BytesIO()
    np.savez(buffer, **flatten(unrolled))
    (path / ARRAYS_FILE).write_bytes(buffer.getvalue())
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "model_overrides": overrides,
        "num_classes": weights.num_classes,
        "preprocessing": preprocessing.to_json(),
        "class_names": weights.class_names,
        "source": source,
    }
    (path / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
    return weights


def load_weights(directory: str | epath.PathLike) -> Weights:
    """Reads a weights directory; raises `WeightsError` saying what is wrong with it."""
    path = as_path(directory)
    if not (path / METADATA_FILE).exists():
        hint = (
            "it has no weights.json: not a weights directory, or a write that did not finish"
            if path.is_dir()
            else "no such directory"
        )
        raise WeightsError(
            f"Cannot load weights from {path}: {hint}. Make one with "
            "`python -m resnet_identity.convert --from=torchvision ...`."
        )
    try:
        metadata = json.loads((path / METADATA_FILE).read_text())
        if metadata.get("format") != FORMAT or metadata.get("version") != VERSION:
            raise WeightsError(f"{path / METADATA_FILE} is not a {FORMAT} version {VERSION} file.")
        with np.load(io.BytesIO((path / ARRAYS_FILE).read_bytes())) as arrays:
            variables = unflatten({name: arrays[name] for name in arrays.files})
        weights = Weights(
            metadata["model"],
            dict(metadata["model_overrides"]),
            {name: variables.get(name, {}) for name in COLLECTIONS},
            Preprocessing.from_json(metadata["preprocessing"]),
            metadata["class_names"],
            metadata["source"],
        )
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"Cannot load weights from {path}: {type(e).__name__}: {e}. Convert them again.") from e
    if weights.model not in models.MODELS:
        raise WeightsError(f"{path} holds weights of model {weights.model!r}, which this version does not know.")
    return weights


def load_run_weights(workdir: str | epath.PathLike, step: int | None = None) -> Weights:
    """The parameters and BN statistics of a training run's checkpoint `step` (default: the
    newest), with the run's model, evaluation preprocessing and class names (its
    `config.json`). Reads only: nothing in the workdir is written, moved or cleaned up, so a
    run still training is safe. Raises `WeightsError` saying what is missing."""
    workdir = as_path(workdir)
    config = read_run_config(workdir)
    try:
        state, step = checkpointing.read_saved(workdir / "checkpoints", step)
    except checkpointing.CheckpointRestoreError as e:
        raise WeightsError(str(e)) from e
    variables = {name: jax.tree.map(np.asarray, models.stacked_to_unrolled(state[name])) for name in COLLECTIONS}
    overrides = {k: v for k, v in config_lib.model_kwargs(config).items() if k not in LAYOUT_OVERRIDES}
    try:  # class names and preprocessing are the dataset's facts: a folder's come from its files
        facts, preprocessing = registry.facts(config), run_preprocessing(config)
    except DatasetError as e:
        raise WeightsError(
            f"{workdir}'s class names and preprocessing come from its dataset, which cannot be read now: {e} "
            "Put the data back where the run's config.json says (a relative folder.path is read from "
            "the current directory), then rerun."
        ) from e
    return Weights(
        config.model,
        overrides,
        variables,
        preprocessing,
        list(facts.class_names) if facts.class_names else None,
        f"run:{workdir}@{step}",
        step,
    )


def read_run_config(workdir: str | epath.PathLike) -> Any:
    """A training run's config (its `config.json`, older field names migrated); raises
    `WeightsError` when `workdir` is not a run's."""
    path = as_path(workdir) / "config.json"
    if not path.exists():
        raise WeightsError(f"{as_path(workdir)} is not a training run's workdir: it has no config.json.")
    try:
        return config_migration.as_config(json.loads(path.read_text()))
    except (ValueError, UnicodeDecodeError) as e:
        raise WeightsError(f"Cannot read {path}: {e}. It is not a config.json that train.py wrote.") from e


def run_preprocessing(config: Any) -> Preprocessing:
    """A run's evaluation preprocessing for an image of any size: the dataset's single-crop
    evaluation (`data/crops.py`; a dataset of whole small images: resized to its size) and
    its normalisation."""
    facts = registry.facts(config)
    size = facts.image_size
    resize, crop = crops.eval_resize(size, size) if facts.eval_crops else (size, size)
    settings = registry.settings(config)
    try:  # fixed constants need no data
        normalization = normalization_lib.resolve(settings.normalization, config.dataset, None)
    except ValueError:  # statistics of the training split
        from resnet_identity.data import get_dataset

        normalization = get_dataset(config).normalization
    return Preprocessing(
        resize=resize,
        crop=crop,
        mean=np.asarray(normalization.mean, np.float64) / 255.0,
        std=np.asarray(normalization.std, np.float64) / 255.0,
        interpolation="bicubic" if facts.eval_crops else "bilinear",
    )


def load_weights_or_run(
    *, workdir: str | None = None, step: int | None = None, weights: str | None = None, model: str | None = None
) -> Weights:
    """What a command's `--workdir=RUN [--step=N]` or `--weights=DIR --model=NAME` name, with
    `model` checked against the weights' own (a `WeightsError` says what to pass)."""
    if (workdir is None) == (weights is None):
        raise WeightsError("give either --workdir=RUN (with an optional --step) or --weights=DIR --model=NAME.")
    if workdir is not None:
        return load_run_weights(workdir, step)
    loaded = load_weights(weights)
    if model != loaded.model:
        raise WeightsError(
            f"{weights} holds weights of our {loaded.model} (from {loaded.source}); pass "
            f"--model={loaded.model}" + ("." if model is None else f", not --model={model}.")
        )
    return loaded
