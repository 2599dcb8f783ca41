"""Evaluate a run's checkpoint, or converted weights, on a config's dataset: top-1 and top-5 error.

  python -m resnet_identity.evaluate --workdir=RUN [--step=N] [--config=CONFIG] [--crops=224,320,10crop]
  python -m resnet_identity.evaluate --weights=DIR --model=NAME --config=CONFIG [--crops=...]

The dataset and its options come from --config (its `dataset`, `eval_batch_size`, ...); for a
run, by default, from the run's own config.json. The network comes from the run (its
config.json and checkpoint, the newest or --step) or from the weights directory, both read by
`weights.load_weights_or_run`. Fields only training reads (the batch size, BN groups, the
budget, the optimiser) are not checked. --crops defaults to the config's `eval_crops` (None:
the dataset's first); `10crop` is fb.resnet.torch's ten-crop test (data/crops.py). Imported
weights are evaluated with their source's preprocessing (weights.json): its normalisation, and
on a streamed dataset its resize interpolation and the shorter side before the centre crop (256
for torchvision's 224, 235 for timm's); the 320 crop keeps v2's geometry.

Each crop's result is printed and written as `eval_<step N | weights>_<crop>.json` in
--output_dir (created if its parent exists; checked before anything is evaluated): by default
the run's workdir, or the weights directory for --weights. Nothing else is written: the
checkpoint is read read-only and no lease is taken, so a run may be evaluated while it trains.
"""

from __future__ import annotations

import dataclasses
import functools
import json

from absl import flags
from ml_collections import config_flags

from resnet_identity import cli
from resnet_identity.runs.files import as_path

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined when it runs rather than at import, so that code importing
    several commands (the tests do) defines no flag twice."""
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config whose dataset is evaluated (configs/*.py[:preset]); with --workdir, by default the run's own.",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "A run's workdir: evaluate its checkpoint.")
    flags.DEFINE_integer("step", None, "The checkpoint step to evaluate (default: the newest).")
    flags.DEFINE_string("weights", None, "A weights directory from `python -m resnet_identity.convert`.")
    flags.DEFINE_string("model", None, "With --weights: the model they are for (a `create_model` name).")
    flags.DEFINE_list("crops", None, "Evaluation crops, e.g. 224,320,10crop (default: the config's eval_crops).")
    flags.DEFINE_string(
        "output_dir", None, "Where the eval_*.json files go (default: the workdir, or the weights directory)."
    )


def parse_crops(values: list[str] | None, default: tuple | None) -> tuple:
    """`["224", "10crop"]` -> (224, "10crop"); None -> the config's crops, or (None,)."""
    if values is None:
        return tuple(default) if default else (None,)
    return tuple(int(v) if v.strip().isdigit() else v.strip() for v in values)


def output_directory():
    """--output_dir (default: the run's workdir or the weights directory), created if its parent
    exists; checked before anything is evaluated, so that no result is lost at the end."""
    output_dir = as_path(FLAGS.output_dir or FLAGS.workdir or FLAGS.weights)
    if FLAGS.output_dir is not None and not output_dir.is_dir():
        if output_dir.exists():
            raise cli.UserError(f"--output_dir={FLAGS.output_dir} is a file, not a folder; choose a folder.")
        if not output_dir.parent.is_dir():
            raise cli.UserError(
                f"--output_dir={FLAGS.output_dir}: its parent folder {output_dir.parent} does not exist; create it "
                "or choose another folder."
            )
        try:
            output_dir.mkdir()
        except OSError as e:
            raise cli.UserError(f"Cannot create --output_dir={FLAGS.output_dir}: {e.strerror or e}.") from e
    return output_dir


def evaluate_from_flags(config) -> list[dict]:
    """Evaluates per the flags (module docstring); returns one result per crop."""
    import jax

    from resnet_identity.training import config as config_lib
    from resnet_identity.training import evaluation, parallel
    from resnet_identity.training import weights as weights_lib

    plan = config_lib.validate(config, training=False)
    output_dir = output_directory()
    crops = chosen_crops(plan)
    weights = weights_lib.load_weights_or_run(
        workdir=FLAGS.workdir, step=FLAGS.step, weights=FLAGS.weights, model=FLAGS.model
    )
    label = "weights" if weights.step is None else f"step{weights.step}"
    model, variables = weights.create_model()
    dataset = dataset_for(plan, weights, variables)
    mesh = parallel.create_mesh()
    state, eval_fn = _state_and_step(model, variables, dataset, parallel.replicated(mesh))
    # No batch larger than the test split (rounded up to the devices): padding a small split to
    # ImageNet's 250 would only cost memory, ten times over at 10crop.
    batch_size = min(config.eval_batch_size, -(-dataset.num_test // mesh.size) * mesh.size)
    results = []
    for crop in crops:
        metrics = evaluation.evaluate_split(
            state, dataset, eval_fn, batch_size=batch_size, sharding=parallel.batch_sharded(mesh), crop=crop
        )
        name = str(crop if crop is not None else plan.facts.image_size)
        result = {
            "source": FLAGS.workdir or FLAGS.weights,
            "checkpoint": label,
            "model": weights.model,
            "dataset": config.dataset,
            "crop": name,
            "top1_error": metrics["error"],
            "top5_error": metrics["top5_error"],
            "loss": metrics["loss"],
            "examples": int(metrics["examples"]),
        }
        if jax.process_index() == 0:
            (output_dir / f"eval_{label}_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
            print(
                f"{config.dataset} {name}: top-1 error {100 * result['top1_error']:.2f}%, top-5 error "
                f"{100 * result['top5_error']:.2f}%, loss {result['loss']:.4f} ({result['examples']} examples)",
                flush=True,
            )
        results.append(result)
    return results


def chosen_crops(plan) -> tuple:
    """--crops (default: the config's `eval_crops`), each one the dataset offers."""
    facts, dataset = plan.facts, plan.config.dataset
    crops = parse_crops(FLAGS.crops, plan.config.eval_crops)
    bad = [c for c in crops if c is not None and c not in facts.eval_crops]
    if bad:
        choices = (
            f"choose from {', '.join(map(str, facts.eval_crops))}"
            if facts.eval_crops
            else (f"{dataset} is evaluated on whole images: leave --crops out")
        )
        raise cli.UserError(f"--crops {bad} not offered by {dataset}; {choices}.")
    return crops


def dataset_for(plan, weights, variables: dict):
    """The plan's dataset, with imported weights' own preprocessing; its classes those of the
    network."""
    import numpy as np

    from resnet_identity.data import normalization
    from resnet_identity.training.trainer import get_dataset

    dataset, name = get_dataset(plan), plan.config.dataset
    if FLAGS.weights is not None:  # the source's preprocessing, not the dataset's
        mean, std = (255.0 * np.asarray(v, np.float32) for v in (weights.preprocessing.mean, weights.preprocessing.std))
        changes = {"normalization": normalization.Normalization(mean, std, "weights")}
        if hasattr(dataset, "eval_interpolation"):  # a streamed dataset: also the source's resize
            if weights.preprocessing.crop != dataset.image_size:
                raise cli.UserError(
                    f"the weights were made for {weights.preprocessing.crop}x{weights.preprocessing.crop} inputs and "
                    f"{name} crops {dataset.image_size}: set --config.{name}.image_size="
                    f"{weights.preprocessing.crop}."
                )
            changes["eval_interpolation"] = weights.preprocessing.interpolation
            changes["eval_shorter"] = weights.preprocessing.resize
        dataset = dataclasses.replace(dataset, **changes)
    classes = int(np.shape(variables["params"]["fc"]["bias"])[0])
    if classes != dataset.num_classes:
        raise cli.UserError(
            f"the network has {classes} classes and {name} has {dataset.num_classes}: "
            "evaluate it on the dataset it was trained or converted for."
        )
    return dataset


def _state_and_step(model, variables: dict, dataset, replicated):
    """The network's variables as a replicated `TrainState`, and its jitted eval step."""
    import jax
    import numpy as np

    from resnet_identity.training.train_state import TrainState, eval_step

    state = TrainState(
        step=np.zeros((), np.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=(),
        nonfinite_step=np.full((), -1, np.int32),
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, model=model, transform=dataset.eval_transform), out_shardings=replicated
    )
    return jax.device_put(state, replicated), eval_fn


def main(argv):
    cli.no_arguments(argv)
    from resnet_identity.data import DatasetError
    from resnet_identity.training import trainer
    from resnet_identity.training import weights as weights_lib

    try:
        config = FLAGS.config
        if config is None:
            if FLAGS.workdir is None:
                raise cli.UserError(
                    "give a run's --workdir=RUN (evaluated on its own config's dataset unless --config is given), "
                    "or --weights=DIR --model=NAME with --config=CONFIG (the dataset to evaluate on)."
                )
            config = weights_lib.read_run_config(FLAGS.workdir)
        evaluate_from_flags(config)
    except (*trainer.USER_ERRORS, weights_lib.WeightsError, DatasetError) as e:
        raise cli.UserError(str(e)) from e


if __name__ == "__main__":
    define_flags()
    cli.run(main)
