"""Runs every row of v2 Table 1 or Table 2 and reports each test error beside the paper's.

  python -m resnet_identity.ablate --table=1 --config=configs/quickstart.py --workdir=DIR [--steps=N]
  python -m resnet_identity.ablate --table=2 --config=configs/cifar_resnet110.py --workdir=DIR
  python -m resnet_identity.ablate --table=2 --model=cifar_resnet164 --config=configs/cifar_resnet164.py --workdir=DIR
  python -m resnet_identity.ablate --table=1 --config=configs/quickstart.py --preset=quick --workdir=DIR

Table 1 (what multiplies the shortcut and F) runs on ResNet-110 with v1 units; Table 2 (where
BN and ReLU sit) on ResNet-110 or, with --model=cifar_resnet164, ResNet-164. The recipe and
budget come from --config (any field overridable, e.g. --config.learning_rate=0.05); --depth
and --steps shrink a run, keeping the LR schedule's shape. Each row trains in DIR/<row>, so
rerunning the command resumes unfinished rows and skips finished ones. A row that diverges
(NaN/Inf) or ends above 20% test error is reported as "fail", with the reason. Results go to
DIR/table.md and DIR/table.png. The work is done by `resnet_identity.analysis.ablation`.

Presets (--preset): quick = depth 8 (three units) and 200 steps; with configs/quickstart.py
(digits, no download) a row takes about a minute on two free CPU cores.
"""

from __future__ import annotations

import copy
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from resnet_identity import parallel, trainer
from resnet_identity.analysis import ablation, paper
from resnet_identity.files import write_atomically

PRESETS = {"quick": {"depth": 8, "steps": 200}}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training recipe and budget (configs/*.py[:preset]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for the rows' workdirs, table.md and table.png.")
flags.DEFINE_enum("table", None, ["1", "2"], "v2 Table 1 (shortcut scaling/gating) or Table 2 (activation placement).")
flags.DEFINE_string("model", "cifar_resnet110", "Network: cifar_resnet110 (Tables 1, 2) or cifar_resnet164 (Table 2).")
flags.DEFINE_integer("depth", None, "Override the network's depth (6n+2 for ResNet-110's family, 9n+2 for 164's).")
flags.DEFINE_integer("steps", None, "Training steps per row; the LR boundaries and warm-up scale with it.")
flags.DEFINE_enum("preset", None, sorted(PRESETS), "A depth/steps preset; --depth and --steps override it.")
flags.DEFINE_list("rows", None, "Only these rows (keys as in table.md); default: every row of the table.")
flags.DEFINE_float("fail_above", paper.FAIL_ERROR, "Test error above which a row counts as 'fail' (paper: 0.20).")
flags.mark_flags_as_required(["config", "workdir", "table"])


def main(argv):
    del argv
    parallel.maybe_initialize_distributed(None)  # as train.py: a multi-host environment is detected
    base = copy.deepcopy(FLAGS.config)
    preset = PRESETS.get(FLAGS.preset, {})
    depth = FLAGS.depth if FLAGS.depth is not None else preset.get("depth")
    steps = FLAGS.steps if FLAGS.steps is not None else preset.get("steps")
    if steps is not None:
        ablation.scale_budget(base, steps)
    table = int(FLAGS.table)
    try:
        results = ablation.run_table(base, table, FLAGS.workdir, model=FLAGS.model, depth=depth,
                                     rows=FLAGS.rows, fail_above=FLAGS.fail_above)
    except trainer.USER_ERRORS as e:
        sys.exit(f"error: {e}")
    if results is None:
        print("Preempted: rerun the same command to resume.")
        return trainer.EXIT_PREEMPTED
    report = ablation.markdown_report(results, table, base, FLAGS.model, depth, FLAGS.fail_above)
    write_atomically(os.path.join(FLAGS.workdir, "table.md"), report)
    title = report.splitlines()[0].lstrip("# ") + f" ({FLAGS.model}" + (f", depth {depth})" if depth else ")")
    ablation.plot_report(results, FLAGS.model, FLAGS.fail_above, title, os.path.join(FLAGS.workdir, "table.png"))
    print(report)


if __name__ == "__main__":
    from resnet_identity import xla_config

    xla_config.use_huge_pages()  # as train.py: re-executes once, for XLA:CPU's per-step buffers
    app.run(main)
