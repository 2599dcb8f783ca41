"""Train a ResNet: `python train.py --config=configs/cifar_preact1001.py --workdir=DIR`.

Any config field can be overridden (`--config.batch_size=64`) and a config can take a
preset after a colon (`--config=configs/cifar_preact1001.py:smoke`). Rerunning the same
command resumes from the newest good checkpoint in DIR.

Exit status: 0 when training finished; 75 when SIGTERM/SIGINT or a preemption notice
stopped it after saving (rerun to resume); 1 on an error, printed with what to do.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:preset]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (multi-host runs). Unset: "
                  "only in a multi-host environment (e.g. JAX_COORDINATOR_ADDRESS); --nodistributed: never.")
flags.DEFINE_bool("allow_config_change", False, "Resume a workdir whose config.json differs from --config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from resnet_identity import parallel

    parallel.maybe_initialize_distributed(FLAGS.distributed)
    from resnet_identity import trainer

    try:
        result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
    except trainer.USER_ERRORS as e:
        sys.exit(f"error: {e}")
    return trainer.exit_status(result)


if __name__ == "__main__":
    from resnet_identity import xla_config

    xla_config.use_huge_pages()  # re-executes once: XLA's per-step buffers otherwise page-fault heavily
    app.run(main)
