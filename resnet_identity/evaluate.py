"""Evaluate a run's checkpoint, or converted weights, on a config's dataset: top-1 and top-5 error.

  python -m resnet_identity.evaluate --workdir=RUN [--step=N] --config=CONFIG [--crops=224,320,10crop]
  python -m resnet_identity.evaluate --weights=DIR --model=NAME --config=CONFIG [--crops=...]

The dataset and its options come from --config (its `dataset`, `eval_batch_size`, ...); the
network from the run (its config.json and checkpoint, the newest or --step) or from the
weights directory. --crops defaults to the config's `eval_crops` (None: the dataset's first);
`10crop` is fb.resnet.torch's ten-crop test (data/crops.py). Imported weights are evaluated
with their source's preprocessing (weights.json): its normalisation, and on a streamed
dataset its resize interpolation and the shorter side before the centre crop (256 for
torchvision's 224, 235 for timm's); the 320 crop keeps v2's geometry.

Each crop's result is printed and written as `eval_<step N | weights>_<crop>.json` in
--output_dir: by default the run's workdir, or the weights directory for --weights. Nothing
else is written: the checkpoint is read read-only and no lease is taken, so a run may be
evaluated while it trains.
"""

from __future__ import annotations

import dataclasses
import functools
import json

from absl import flags
from ml_collections import config_flags

from resnet_identity import cli
from resnet_identity.files import as_path

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined when it runs rather than at import, so that code importing
    several commands (the tests do) defines no flag twice."""
    config_flags.DEFINE_config_file(
        "config", None, "Config whose dataset is evaluated (configs/*.py[:preset]).", lock_config=True
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


def _network(config):
    """(label, model name, model, variables, weights or None) of the run or the weights named
    by the flags."""
    from resnet_identity import config as config_lib
    from resnet_identity import init_from, models
    from resnet_identity import weights as weights_lib

    if (FLAGS.workdir is None) == (FLAGS.weights is None):
        raise cli.UserError("give either --workdir=RUN (with an optional --step) or --weights=DIR --model=NAME.")
    if FLAGS.weights is not None:
        cli.require(model=FLAGS.model)
        weights = weights_lib.load_weights(FLAGS.weights)
        if FLAGS.model != weights.model:
            raise cli.UserError(
                f"{FLAGS.weights} holds weights of {weights.model}, not {FLAGS.model}; pass --model={weights.model}."
            )
        model, variables = weights.create_model()
        return "weights", weights.model, model, variables, weights
    run_config, variables, step = init_from.read_run(FLAGS.workdir, FLAGS.step)
    num_classes = int(weights_lib.flatten(variables)["params/fc/bias"].shape[0])
    model = models.create_model(run_config.model, num_classes=num_classes, **config_lib.model_kwargs(run_config))
    return f"step{step}", run_config.model, model, variables, None


def evaluate(config) -> list[dict]:
    """Evaluates per the flags (module docstring); returns one result per crop."""
    import jax
    import numpy as np

    from resnet_identity import config as config_lib
    from resnet_identity import parallel, trainer
    from resnet_identity.data import get_dataset, normalization, registry
    from resnet_identity.train_state import TrainState, eval_step

    config_lib.validate(config)
    facts = registry.facts(config)
    crops = parse_crops(FLAGS.crops, config.eval_crops)
    bad = [c for c in crops if c is not None and c not in facts.eval_crops]
    if bad:
        choices = (
            f"choose from {', '.join(map(str, facts.eval_crops))}"
            if facts.eval_crops
            else (f"{config.dataset} is evaluated on whole images: leave --crops out")
        )
        raise cli.UserError(f"--crops {bad} not offered by {config.dataset}; {choices}.")
    label, model_name, model, variables, weights = _network(config)
    dataset = get_dataset(config)
    if weights is not None:  # the source's preprocessing, not the dataset's
        mean, std = (255.0 * np.asarray(v, np.float32) for v in (weights.preprocessing.mean, weights.preprocessing.std))
        changes = {"normalization": normalization.Normalization(mean, std, "weights")}
        if hasattr(dataset, "eval_interpolation"):  # a streamed dataset: also the source's resize
            if weights.preprocessing.crop != dataset.image_size:
                raise cli.UserError(
                    f"the weights were made for {weights.preprocessing.crop}x{weights.preprocessing.crop} inputs and "
                    f"{config.dataset} crops {dataset.image_size}: set --config.{config.dataset}.image_size="
                    f"{weights.preprocessing.crop}."
                )
            changes["eval_interpolation"] = weights.preprocessing.interpolation
            changes["eval_shorter"] = weights.preprocessing.resize
        dataset = dataclasses.replace(dataset, **changes)
    classes = int(np.shape(variables["params"]["fc"]["bias"])[0])
    if classes != dataset.num_classes:
        raise cli.UserError(
            f"the network has {classes} classes and {config.dataset} has {dataset.num_classes}: "
            "evaluate it on the dataset it was trained or converted for."
        )

    mesh = parallel.create_mesh()
    replicated = parallel.replicated(mesh)
    state = TrainState(
        step=np.zeros((), np.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=(),
        nonfinite_step=np.full((), -1, np.int32),
    )
    state = jax.device_put(state, replicated)
    eval_fn = jax.jit(
        functools.partial(eval_step, model=model, transform=dataset.eval_transform), out_shardings=replicated
    )
    output_dir = as_path(FLAGS.output_dir or FLAGS.workdir or FLAGS.weights)
    results = []
    for crop in crops:
        metrics = trainer.evaluate(
            state, dataset, eval_fn, batch_size=config.eval_batch_size, sharding=parallel.batch_sharded(mesh), crop=crop
        )
        name = str(crop if crop is not None else facts.image_size)
        result = {
            "source": FLAGS.workdir or FLAGS.weights,
            "checkpoint": label,
            "model": model_name,
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


def main(argv):
    cli.no_arguments(argv)
    cli.require(config=FLAGS.config)
    from resnet_identity import trainer
    from resnet_identity import weights as weights_lib
    from resnet_identity.data import DatasetError

    try:
        evaluate(FLAGS.config)
    except (*trainer.USER_ERRORS, weights_lib.WeightsError, DatasetError) as e:
        raise cli.UserError(str(e)) from e


if __name__ == "__main__":
    define_flags()
    cli.run(main)
