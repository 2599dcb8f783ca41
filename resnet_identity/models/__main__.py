"""`python -m resnet_identity.models [NAME] [--num-classes N] [--override key=value ...]`.

Without a name, lists every model. With one, prints its parameters per stage, the
total, and forward multiply-adds at the family's input size (32 for CIFAR, 224 for ImageNet),
with as many classes as the dataset of the family's paper recipe has (its `Facts`).
"""

from __future__ import annotations

import argparse
import ast

from resnet_identity import cli
from resnet_identity.data import registry as datasets
from resnet_identity.models import registry, summary
from resnet_identity.training import recipes


def _parse_override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resnet_identity.models", description=__doc__)
    parser.add_argument("name", nargs="?", help="model name; omit to list all")
    parser.add_argument(
        "--num-classes", type=int, default=None, help="default: the classes of the paper recipe's dataset"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"create_model override, repeatable; keys: {', '.join(registry.OVERRIDES)}",
    )
    args = parser.parse_args(argv)
    if args.name is None:
        for name in registry.available_models():
            spec = registry.MODELS[name]
            print(f"{name:<20} {spec.family:<9} depth {spec.depth:<5} unit {spec.unit}")
        return
    if args.name not in registry.MODELS:
        parser.error(f"unknown model {args.name!r}; run without a name to list them")
    num_classes = args.num_classes
    if num_classes is None:
        # The family's paper recipe names the dataset, whose facts give the default classes.
        paper_recipe = recipes.BY_FAMILY[registry.MODELS[args.name].family](args.name)
        num_classes = datasets.facts(paper_recipe).num_classes
    overrides = dict(_parse_override(o) for o in args.override)
    try:
        model = registry.create_model(args.name, num_classes=num_classes, **overrides)
    except ValueError as e:
        parser.error(str(e))
    size = registry.input_size(args.name)
    print(f"{args.name} ({num_classes} classes, {size}x{size} input)")
    for module, count in summary.stage_table(model, size):
        print(f"  {module:<10} {count:>14,d} parameters")
    macs = summary.forward_macs(model, size)
    print(f"  forward    {macs / 1e9:>14.3f} G multiply-adds per image")


if __name__ == "__main__":
    with cli.closed_pipe_is_quiet():  # `python -m resnet_identity.models | head`
        main()
