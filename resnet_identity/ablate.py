"""v2 Tables 1 and 2, by their old command: an alias of `python -m resnet_identity.reproduce`.

  python -m resnet_identity.ablate --table=1 --workdir=DIR [--config=FILE] [--preset=quick]
  python -m resnet_identity.ablate --table=2 --model=cifar_resnet164 --workdir=DIR [--depth=N]

The same as `reproduce v2-table1` / `reproduce v2-table2`, with Table 2's rows of one network
(`--model`, ResNet-110 by default), `--rows` naming unit variants (`original,full_preact`) and
`--depth` setting every row's depth. Every other flag is `reproduce`'s (`--help` lists them).
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from resnet_identity import cli, reproduce  # reproduce.define_flags defines the flags the two commands share
from resnet_identity.analysis import experiments

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined when it runs rather than at import, so that code importing
    several commands (the tests do) defines no flag twice."""
    flags.DEFINE_enum(
        "table", None, ["1", "2"], "v2 Table 1 (shortcut scaling/gating) or Table 2 (activation placement)."
    )
    flags.DEFINE_enum(
        "model",
        "cifar_resnet110",
        ["cifar_resnet110", "cifar_resnet164"],
        "Network: cifar_resnet110 (Tables 1, 2) or cifar_resnet164 (Table 2).",
    )
    flags.DEFINE_integer("depth", None, "Every row at this depth (6n+2 for ResNet-110's family, 9n+2 for 164's).")
    flags.mark_flag_as_required("table")


def row_keys(table: str, model: str, variants: list[str] | None) -> list[str]:
    """`reproduce`'s row keys for the Table `table` rows of `model`, or of its `variants` only."""
    if table == "1":
        if model != "cifar_resnet110":
            raise cli.UserError(f"v2 Table 1 reports ResNet-110 only, not {model}; drop --model.")
        return list(variants or [])
    suffix = model.removeprefix("cifar_resnet")
    ours = [row.key for row in experiments.V2_TABLE2.rows if row.model == model]
    return [f"{v}-{suffix}" for v in variants] if variants else ours


def main(argv):
    cli.no_arguments(argv)
    overrides = dict(config_flags.get_override_values(FLAGS["config"]))
    if FLAGS.depth is not None:
        overrides["model_overrides.depth"] = FLAGS.depth
    rows = row_keys(FLAGS.table, FLAGS.model, FLAGS.rows)
    return reproduce.run(f"v2-table{FLAGS.table}", rows or None, overrides)


if __name__ == "__main__":
    from resnet_identity.training import xla_config

    xla_config.use_huge_pages()
    sys.argv = reproduce.with_default_config(sys.argv)
    reproduce.define_flags()
    define_flags()
    cli.run(main)
