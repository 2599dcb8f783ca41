"""Train a ResNet: `python train.py --config=configs/quickstart.py --workdir=DIR`.

Any config field can be overridden (`--config.batch_size=64`) and a config can take a
preset after a colon (`--config=configs/cifar_preact1001.py:smoke`). Rerunning the same
command resumes from the newest good checkpoint in DIR. `--list_config` prints every field
of the chosen config with its value, and trains nothing.

Exit status: 0 when training finished; 75 when SIGTERM, SIGHUP, SIGINT or a preemption
notice stopped it (rerun to resume: the last line says what was saved), when SIGTERM or
SIGHUP came before the first step, or when Cloud Storage stayed away longer than
`storage_retry_s`; 130 for Ctrl-C before the first step; 1 on an error,
printed with what to do; 141 when the reader of its output closed the pipe (`--help | head`).
"""

from resnet_identity.runs import interrupts

if __name__ == "__main__":
    interrupts.catch_early()  # first of all: a signal while the rest imports is acted on, not fatal

import ast  # noqa: E402 (after the handler)
import pathlib  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from resnet_identity import cli  # noqa: E402

CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:preset]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics (a gs:// path works too).")
flags.DEFINE_bool(
    "distributed",
    None,
    "Call jax.distributed.initialize() (multi-host runs). Unset: "
    "only in a multi-host environment (e.g. JAX_COORDINATOR_ADDRESS); --nodistributed: never.",
)
flags.DEFINE_bool("allow_config_change", False, "Resume a workdir whose config.json differs from --config.")
flags.DEFINE_bool("list_config", False, "Print each field of --config, overrides applied, and train nothing.")


def config_lines(tree: dict, prefix: str = "") -> list[str]:
    """`field = value`, one line per leaf, nested fields dotted as on the command line."""
    lines = []
    for key, value in tree.items():
        if isinstance(value, dict):
            lines += config_lines(value, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key} = {value!r}")
    return lines


def config_files() -> list[str]:
    """`configs/NAME.py: what it trains. Presets: ...`, read from each file's docstring."""
    lines = []
    for path in sorted(CONFIGS.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        summary = doc.splitlines()[0] if doc else ""
        presets = next(
            (line.split(":", 1)[1].split(";")[0].strip() for line in doc.splitlines() if line.startswith("Presets")),
            "none",
        )
        lines.append(f"  configs/{path.name}: {summary}\n      presets: {presets}")
    return lines


def help_epilog() -> str:
    from resnet_identity.training import config as config_lib

    fields = [line.split(" = ")[0] for line in config_lines(config_lib.default_config().to_dict())]
    return "\n".join(
        [
            "",
            "configs (a preset goes after a colon: --config=configs/quickstart.py:smoke):",
            *config_files(),
            "",
            "config fields (override any with --config.FIELD=VALUE; "
            "`python train.py --config=FILE --list_config` prints their values):",
            *_wrap(", ".join(fields)),
            "",
            "Library logging is off; --verbosity=0 turns INFO on.",
        ]
    )


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, width=96, initial_indent="  ", subsequent_indent="  ")


def main(argv):
    cli.no_arguments(argv)
    if FLAGS.list_config:
        cli.require(config=FLAGS.config)
        print("\n".join(config_lines(FLAGS.config.to_dict())))
        return 0
    cli.require(config=FLAGS.config, workdir=FLAGS.workdir)
    with interrupts.deferred():  # a signal would break an import halfway
        from resnet_identity.training import parallel

        parallel.maybe_initialize_distributed(FLAGS.distributed)
        from resnet_identity.runs import cloud_storage
        from resnet_identity.training import trainer

    try:
        result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
    except trainer.USER_ERRORS as e:
        cli.fail(str(e))
    except cloud_storage.StorageUnavailableError as e:  # an outage longer than the back-off: a rerun resumes
        print(f"error: {e}", file=sys.stderr, flush=True)
        return interrupts.EXIT_STOPPED
    return trainer.exit_status(result)


if __name__ == "__main__":
    from resnet_identity.training import xla_config

    with interrupts.blocked():  # a signal during the re-execution waits for the new process's handler
        xla_config.use_huge_pages()  # re-executes once: XLA's per-step buffers otherwise page-fault heavily
    cli.run(main, help_epilog=help_epilog)
