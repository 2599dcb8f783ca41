"""Convert weights between torchvision or timm and resnet-identity (docs/pretrained.md).

  python -m resnet_identity.convert --from=torchvision --model=resnet50 --pretrained=IMAGENET1K_V1 --out=DIR
  python -m resnet_identity.convert --from=timm --model=resnetv2_50 --pretrained=a1h_in1k --out=DIR
  python -m resnet_identity.convert --from=torchvision --model=resnet50 resnet50.pth --out=DIR
  python -m resnet_identity.convert --to=torchvision --workdir=RUN [--step=N] --out=FILE.pth
  python -m resnet_identity.convert --to=timm --weights=DIR --model=NAME --out=FILE.pth

--from converts the named torchvision model (resnet18/34/50/101/152) or timm model
(resnetv2_50/101/152) into a weights directory (`resnet_identity/training/weights.py`) for our
equivalent network, with the source's preprocessing and ImageNet class names. The weights are
the library's published ones (--pretrained: torchvision's weights name, timm's tag, or DEFAULT;
downloaded into, or read from, the library's own cache: `interop/pretrained.py`), or a torch
`state_dict` file given as the argument (`.pth`, or timm's `.safetensors`). --to writes the
`state_dict` of a run's checkpoint (the newest, or --step) or of a weights directory
(--model: the weights' model, one of ours), which loads into the torch model with
`load_state_dict(strict=True)`; `.safetensors` output too. A file of another architecture is
refused, naming the first tensor that does not fit.
"""

from __future__ import annotations

from absl import flags

from resnet_identity import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined when it runs rather than at import, so that code importing
    several commands (the tests do) defines no flag twice."""
    flags.DEFINE_enum("from", None, ["torchvision", "timm"], "Import: the library whose weights file is given.")
    flags.DEFINE_enum("to", None, ["torchvision", "timm"], "Export: the library whose state_dict is written.")
    flags.DEFINE_string(
        "model",
        None,
        "With --from: the source's model name (resnet50, resnetv2_50, ...); with "
        "--weights: the weights' model (one of ours, as in their weights.json).",
    )
    flags.DEFINE_string(
        "pretrained",
        None,
        "With --from: download the library's published weights of this name (torchvision: IMAGENET1K_V1, ...; "
        "timm: a tag such as a1h_in1k; DEFAULT: the library's default) instead of reading a file.",
    )
    flags.DEFINE_string("workdir", None, "Export a run's checkpoint.")
    flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step (default: the newest).")
    flags.DEFINE_string("weights", None, "Export a weights directory.")
    flags.DEFINE_string("out", None, "With --from: the weights directory to write; with --to: the .pth file.")


def convert(argv: list[str]) -> str:
    """Runs the conversion the flags ask for; returns the line to print."""
    from resnet_identity import interop
    from resnet_identity.training import weights as weights_lib

    source, target = FLAGS["from"].value, FLAGS.to
    if (source is None) == (target is None):
        raise cli.UserError(
            "give one of --from=torchvision|timm (import a .pth file) or --to=torchvision|timm "
            "(export a run or a weights directory)."
        )
    cli.require(out=FLAGS.out)
    if source is not None:
        cli.require(model=FLAGS.model)
        if FLAGS.pretrained is not None:
            if len(argv) != 1:
                raise cli.UserError(
                    f"--pretrained downloads the weights: leave out the file {argv[1:]}, or --pretrained."
                )
            weights = interop.import_pretrained(source, FLAGS.model, FLAGS.pretrained, FLAGS.out)
        elif len(argv) != 2:
            raise cli.UserError(
                f"--from={source} takes one weights file (.pth or .safetensors), got {argv[1:]}; or name the "
                "published weights to download with --pretrained (e.g. --pretrained=DEFAULT)."
            )
        else:
            weights = interop.import_file(source, FLAGS.model, argv[1], FLAGS.out)
        overrides = ", ".join(f"{k}={v!r}" for k, v in weights.model_overrides.items())
        return f"Wrote {FLAGS.out}: our {weights.model} ({overrides or 'no overrides'}) from {weights.source}."
    if FLAGS.pretrained is not None:
        raise cli.UserError("--pretrained goes with --from (importing weights), not with --to.")
    cli.no_arguments(argv)
    weights = weights_lib.load_weights_or_run(
        workdir=FLAGS.workdir, step=FLAGS.step, weights=FLAGS.weights, model=FLAGS.model
    )
    name = interop.export_file(weights, target, FLAGS.out)
    return f"Wrote {FLAGS.out}: {target}'s {name} state_dict from {weights.source}."


def main(argv: list[str]) -> None:
    from resnet_identity.training import weights as weights_lib

    try:
        print(convert(argv), flush=True)
    except (weights_lib.WeightsError, ImportError) as e:
        raise cli.UserError(str(e)) from e


if __name__ == "__main__":
    define_flags()
    cli.run(main)
