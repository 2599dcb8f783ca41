"""Every table and training-curve figure of both papers, as one command.

  python -m resnet_identity.reproduce EXPERIMENT --workdir=DIR [--config=FILE] [--seeds=N]
      [--rows=KEY,...] [--preset=quick] [--steps=N] [--config.FIELD=VALUE ...]

Experiments (`resnet_identity/analysis/experiments.py` declares their rows):
  v1-table6   CIFAR-10 plain and ResNet-20/32/44/56/110 (--rows=resnet1202 for ResNet-1202)
  v1-fig6     training curves of plain-20/32/44/56 and ResNet-20..110 (v1 Fig. 6)
  v2-table1   v2 Table 1: scaling and gating the shortcut of ResNet-110
  v2-table2   v2 Table 2: BN and ReLU around the addition, ResNet-110 and -164
  v2-table3   original vs pre-activation ResNet-164 and -1001, CIFAR-10 and CIFAR-100
  v2-fig6     training curves of ResNet-1001, original vs pre-activation (v2 Fig. 6)
  v2-table5   ImageNet pre-act ResNet-152/200 (and the originals) at 224 and 320 crops

Each row trains with its paper recipe (or with --config's recipe, budget and dataset), for
--seeds seeds, each a normal train.py run in DIR/<row>/seed<seed>. Rerunning the command
resumes unfinished runs and skips finished ones; on a pod slice run the same command on every
host, as train.py. DIR/table.md sets each row's figure, best (mean±std) over seeds, beside
the paper's (read from docs/papers.md); DIR/table.png plots them (DIR/curves.png for a
figure); DIR/summary.json holds every run's final metrics and workdir. A run that diverges
is "fail" with its reason, as is a v2 Table 1-2 row above 20% test error (--fail_above).

--preset=quick shrinks every CIFAR row to one unit per stage and 20 steps of batch 16 on the
embedded digits: a check that everything runs on a CPU in minutes, not the papers' experiment.

The console holds one line per run as it finishes (its test error, or why it failed, and
where it stands in the whole table), then table.md; on a terminal, a progress bar over the
whole table follows the run in training. Each run's own output, what train.py would print, goes
to its workdir's train.log.

Exit status: 0 when every run finished; 75 when a run was preempted after saving (rerun to
resume); 1 on an error, printed with what to do.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

import jax
from absl import flags
from ml_collections import config_flags

from resnet_identity import cli
from resnet_identity.analysis import experiments, runs
from resnet_identity.runs.files import append_text, as_path, is_local
from resnet_identity.training import parallel, trainer

# With no --config, this file is the config file: its `get_config` gives `--config.FIELD=VALUE`
# overrides the schema to be checked against; each row then trains with its paper recipe.
DEFAULT_CONFIG = as_path(__file__)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined when it runs rather than at import, so that code importing
    several commands (the tests do) defines no flag twice."""
    config_flags.DEFINE_config_file(
        "config",
        None,
        "A training config file (configs/*.py[:preset]) whose recipe, budget and "
        "dataset every row uses instead of its paper recipe. Unset: each row's paper recipe.",
        lock_config=True,
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "Directory for the runs, table.md, table.png/curves.png and summary.json (a gs:// path works too).",
    )
    flags.DEFINE_integer("seeds", 1, "Runs per row, with seeds config.seed, config.seed + 1, ...")
    flags.DEFINE_list("rows", None, "Only these rows (keys as in table.md); default: the experiment's rows.")
    flags.DEFINE_enum("preset", None, list(experiments.PRESETS), "quick: one unit per stage, 20 steps on the digits.")
    flags.DEFINE_integer("steps", None, "Training steps per run; the LR boundaries and warm-up scale with it.")
    flags.DEFINE_float(
        "fail_above",
        None,
        "Test error (a fraction) above which a row is 'fail'. Default: the "
        "experiment's (0.20 for v2 Tables 1-2, as the paper; none elsewhere).",
    )
    flags.DEFINE_bool(
        "distributed",
        None,
        "As train.py: call jax.distributed.initialize() (unset: when the environment is multi-host).",
    )


RUN_LOG = "train.log"
BAR_WIDTH = 20
_STEP = re.compile(r"step (\d+)/(\d+):")  # the trainer's progress lines, "step 50/300: loss ..."


class ConsoleReport:
    """The console of a table's runs: one line per run as it ends, and on a terminal a progress
    bar over the whole table, redrawn from the running run's "step N/M" lines. Everything a run
    prints goes to its workdir's train.log instead (appended: a resumed run keeps its start)."""

    def __init__(self, workdir: str, total: int, *, show: bool):
        self.workdir, self.total, self.show = as_path(workdir), total, show
        self.done, self.started = 0, time.monotonic()
        self.bar = show and sys.stderr.isatty()
        if show:
            print(f"{total} run(s); each run's full log is {workdir}/<row>/seed<S>/{RUN_LOG}.", flush=True)

    def run(self, config: Any, directory: Any) -> runs.RunResult | None:
        """`runs.run_once` with its output in train.log; prints the run's line."""
        name = str(directory.relative_to(self.workdir))
        before = (directory / runs.FINAL_METRICS).exists() or (directory / runs.FAILURE).exists()
        started = time.monotonic()
        self._draw(name, 0.0)
        with self._output_to(directory / RUN_LOG, name):
            result = runs.run_once(config, directory)
        self.done += 1
        if self.show:
            self._clear()
            print(f"[{self.done}/{self.total}] {name}: {self._outcome(result, before, started)}", flush=True)
        return result

    @staticmethod
    def _outcome(result: runs.RunResult | None, before: bool, started: float) -> str:
        if result is None:
            return "preempted after saving; rerun the same command to resume"
        if result.failure:
            return f"fail: {result.failure}"
        errors = ", ".join(
            f"{key.removesuffix('_error').replace('_', ' ')} error {100 * value:.2f}%"
            for key, value in result.metrics.items()
            if key.startswith("test") and key.endswith("error")
        )
        took = "finished earlier" if before else f"in {_duration(time.monotonic() - started)}"
        return f"{errors or 'no test error recorded'} ({took})"

    @contextlib.contextmanager
    def _output_to(self, log: Any, name: str) -> Iterator[None]:
        if not self.show:  # other processes print nothing (their trainer logs at INFO)
            yield
            return
        log.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            if is_local(log):  # line by line, so that the log is there while the run trains
                sink: TextIO = stack.enter_context(open(log, "a", buffering=1))
            else:  # a Cloud Storage object is written whole, once the run ends
                sink = io.StringIO()
                stack.callback(lambda: append_text(log, sink.getvalue()))
            with contextlib.redirect_stdout(_RunOutput(sink, lambda line: self._step(name, line))):
                yield

    def _step(self, name: str, line: str) -> None:
        found = _STEP.match(line)
        if found:
            self._draw(f"{name} {line.split(':')[0]}", int(found[1]) / max(int(found[2]), 1))

    def _draw(self, status: str, fraction: float) -> None:
        if not self.bar:
            return
        filled = round(BAR_WIDTH * (self.done + fraction) / max(self.total, 1))
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        text = f"[{bar}] {self.done}/{self.total} runs, {_duration(time.monotonic() - self.started)}: {status}"
        width = shutil.get_terminal_size().columns
        sys.stderr.write("\r\033[K" + text[: width - 1])
        sys.stderr.flush()

    def _clear(self) -> None:
        if self.bar:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


class _RunOutput:
    """A run's stdout: written to `sink`, each complete line also handed to `on_line`."""

    def __init__(self, sink: TextIO, on_line: Callable[[str], None]):
        self._sink, self._on_line, self._partial = sink, on_line, ""

    def write(self, text: str) -> int:
        self._sink.write(text)
        *complete, self._partial = (self._partial + text).split("\n")
        for line in complete:
            self._on_line(line)
        return len(text)

    def flush(self) -> None:
        self._sink.flush()


def _duration(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


def get_config():
    """The config schema, no recipe: `--config` when none is given (`with_default_config`)."""
    from resnet_identity.training.config import default_config

    return default_config()


def with_default_config(argv: list[str]) -> list[str]:
    """`argv` with `--config=DEFAULT_CONFIG` (the config schema, standing for "each row's
    paper recipe") where it names no config, so that `--config.FIELD=VALUE` overrides are
    parsed, and their mistakes reported, as `train.py`'s are."""
    if any(a in ("--config", "-config") or a.startswith(("--config=", "-config=")) for a in argv):
        return argv
    return [argv[0], f"--config={DEFAULT_CONFIG}", *argv[1:]]


def run(name: str, rows: list[str] | None, overrides: Mapping[str, Any]) -> int:
    """The command with the flags' values: prints a line per run and table.md; returns the exit status."""
    cli.require(workdir=FLAGS.workdir)
    parallel.maybe_initialize_distributed(FLAGS.distributed)
    try:
        total = len(experiments.EXPERIMENTS[name].select(rows)) * FLAGS.seeds
        report = ConsoleReport(FLAGS.workdir, total, show=jax.process_index() == 0)
        table = runs.run_experiment(
            experiments.EXPERIMENTS[name],
            FLAGS.workdir,
            base=None if config_flags.get_config_filename(FLAGS["config"]) == str(DEFAULT_CONFIG) else FLAGS.config,
            overrides=overrides,
            preset=FLAGS.preset,
            steps=FLAGS.steps,
            seeds=FLAGS.seeds,
            rows=rows,
            fail_above=FLAGS.fail_above,
            run=report.run,
        )
    except (ValueError, OSError, *trainer.USER_ERRORS) as e:
        cli.fail(str(e))
    if table is None:
        print("Preempted: rerun the same command to resume.")
        return trainer.EXIT_PREEMPTED
    print(table.rstrip("\n"))
    return 0


def main(argv):
    if len(argv) != 2 or argv[1] not in experiments.EXPERIMENTS:
        given = f"got {argv[1:]}" if len(argv) != 2 else f"{argv[1]!r} is not one"
        cli.fail(f"name one experiment ({given}): {', '.join(experiments.EXPERIMENTS)}. `--help` says what each is.")
    return run(argv[1], FLAGS.rows, config_flags.get_override_values(FLAGS["config"]))


if __name__ == "__main__":
    from resnet_identity.training import xla_config

    xla_config.use_huge_pages()  # as train.py: re-executes once, for XLA:CPU's per-step buffers
    sys.argv = with_default_config(sys.argv)
    define_flags()
    cli.run(main)
