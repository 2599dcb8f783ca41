"""`train_and_evaluate(config, workdir)`: the papers' recipes end to end.

The run is plain: `config.validate` works out the plan once (the dataset's facts, the model,
the optimiser, the run's length); `set_up` checks the workdir, reads the data and restores the
newest good checkpoint if there is one (or starts afresh); the loop (`_Run`) steps. Every
host-side decision that could lose a run is made here in one place:

- the data stream and every random draw are functions of (seed, step), so a resumed run
  continues exactly where the checkpoint left it;
- SIGTERM, SIGHUP, SIGINT or a multi-host preemption notice saves at the current step and
  returns; one before the loop stops the run with nothing to save (`interrupts.Stopped`); an
  evaluation a stop (or a crash) cut short is run first when the run resumes;
- a non-finite loss or gradient norm stops with an error naming the step, before any
  checkpoint of that state can be written;
- `config.json`, `metrics.jsonl`, TensorBoard events and `final_metrics.json` live in the
  workdir and survive resumption.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from resnet_identity.data import DatasetError
from resnet_identity.runs import checkpointing, interrupts, lease, preemption
from resnet_identity.runs.files import WriteError, as_path, check_workdir, write_atomically
from resnet_identity.runs.metric_logging import MetricLogger
from resnet_identity.training import config as config_lib
from resnet_identity.training import optim, parallel, xla_config
from resnet_identity.training.diagnostics import Diagnostics
from resnet_identity.training.evaluation import RunEvaluation
from resnet_identity.training.init_from import initialise_from
from resnet_identity.training.saved_config import check_saved_config, record_config
from resnet_identity.training.train_log import TrainLog
from resnet_identity.training.train_state import TrainState, convert_layout, create_train_state, eval_step, train_step


class DivergenceError(FloatingPointError):
    """Loss or gradient norm became NaN/Inf; the message names the step."""


# Errors whose message already says what to do: the command-line entry points print the
# message alone, without a traceback, and exit 1.
USER_ERRORS = (
    config_lib.ConfigError,
    DatasetError,
    WriteError,
    checkpointing.CheckpointRestoreError,
    DivergenceError,
    lease.WorkdirInUseError,
)
# Exit status of a run stopped by a signal or a preemption notice after saving (sysexits'
# EX_TEMPFAIL): not 0, so that a scheduler or a retry loop reruns it.
EXIT_PREEMPTED = interrupts.EXIT_STOPPED


def exit_status(result: dict[str, Any]) -> int:
    """0 for a finished run, `EXIT_PREEMPTED` for one that saved and stopped early."""
    return EXIT_PREEMPTED if "preempted_at_step" in result else 0


def build_optimizer(config: ml_collections.ConfigDict):
    """`config.optimizer` and `config.schedule` as (optax transformation, learning rate per step),
    for code that builds a step without a whole run (the trainer takes them from its plan)."""
    return optim.build(
        config.schedule,
        config.optimizer,
        total_steps=config_lib.total_steps(config),
        steps_per_epoch=config_lib.steps_per_epoch(config),
    )


def get_dataset(plan: config_lib.Plan):
    """The plan's dataset (`data.get_dataset` of its config, whose checks `validate` made):
    reads, or downloads, its data."""
    return plan.dataset_spec.load(plan.dataset_options, plan.dataset_settings)


def summary_line(state: TrainState) -> str:
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state.params))
    return f"{count:,} parameters"


def step_functions(config: ml_collections.ConfigDict, model, tx, schedule, dataset, key: jax.Array):
    """The recipe's train and eval steps as functions of (state, batch), for the caller to jit."""
    train = functools.partial(
        train_step,
        model=model,
        tx=tx,
        schedule=schedule,
        transform=dataset.train_transform,
        key=key,
        label_smoothing=config.label_smoothing,
    )
    return train, functools.partial(eval_step, model=model, transform=dataset.eval_transform)


# What a checkpoint records of the machine that wrote it: how to count it now, and what
# resuming it on another costs.
_MACHINE = {
    "process_count": (
        jax.process_count,
        "written by %d processes and is resumed on %d: training continues, but the order of examples from here on "
        "is not the one an uninterrupted run would have seen (each process reads its own shard of the data).",
    ),
    "device_count": (
        jax.device_count,
        "written on %d devices and is resumed on %d: training continues on the same examples, but its results are "
        "no longer bitwise those of an uninterrupted run (each sum over the batch is split across the devices "
        "differently).",
    ),
}


def _machine() -> dict[str, int]:
    return {field: count() for field, (count, _) in _MACHINE.items()}


def restore_or_init(
    checkpointer: checkpointing.Checkpointer,
    init,
    init_key: jax.Array,
    workdir: str,
    sharding,
    *,
    start: Callable[[TrainState], TrainState] = lambda state: state,
) -> tuple[TrainState, int]:
    """(state, step) from the newest good checkpoint, or a fresh state at step 0, passed
    through `start` (`initialise_from`: `config.init_from`'s weights). A resume on another
    machine shape is warned about."""
    abstract = jax.eval_shape(init, init_key)
    restored = checkpointer.restore(
        jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract),
        relayout=convert_layout,
    )
    if restored is None:
        options = xla_config.init_compiler_options(jax.default_backend())
        state = init.lower(init_key).compile(compiler_options=options)(init_key)
        return start(state), 0
    state, step = restored
    held = int(parallel.to_host(state.step))
    if held != step:
        raise checkpointing.CheckpointRestoreError(
            f"Checkpoint {step} in {workdir}/checkpoints holds a state at step {held}; its directory was renamed "
            "or copied. Move it aside to resume from the previous one."
        )
    saved = checkpointer.metadata(step)
    for field, now in _machine().items():
        if saved.get(field, now) != now:
            logging.getLogger(__name__).warning(f"Checkpoint %d was {_MACHINE[field][1]}", step, saved[field], now)
    return state, step


def check_finite(state: TrainState, checkpointer: checkpointing.Checkpointer, workdir: str) -> None:
    """Raises `DivergenceError` naming the first step whose loss or gradient norm was NaN/Inf."""
    bad = int(parallel.to_host(state.nonfinite_step))
    if bad < 0:
        return
    last = checkpointer.latest_step()
    kept = (
        f"the last good checkpoint (step {last}) in {workdir}/checkpoints is kept"
        if last is not None
        else "no checkpoint had been written yet, so a rerun starts at step 0"
    )
    raise DivergenceError(
        f"Loss or gradient norm became NaN/Inf at step {bad}. Training stopped; {kept}. An unchanged rerun would "
        f"diverge again at the same step: lower the learning rate, add warm-up or check the data, then rerun "
        f"with the changed values and --allow_config_change."
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False, return_state: bool = False
) -> dict[str, Any]:
    """Trains per `config`, resuming from `workdir`; returns the final metrics.

    With `return_state`, the result also holds the final `TrainState` under "state"
    (for notebooks and tests). The run holds the workdir's lease throughout: a second run
    on it raises `lease.WorkdirInUseError` before writing anything.
    """
    mesh = parallel.create_mesh()
    # Before the lease, which creates the workdir: a bad value leaves nothing behind.
    plan = config_lib.validate(config, num_devices=mesh.devices.size, num_processes=jax.process_count())
    try:
        with lease.hold(workdir):
            ready = set_up(plan, workdir, mesh, allow_config_change=allow_config_change)
            return _Run(ready, plan, return_state=return_state)()
    except (interrupts.Stopped, KeyboardInterrupt) as stop:  # before the loop (in it, the watcher saves and returns)
        steps = checkpointing.finalized_steps(as_path(workdir) / "checkpoints")
        stop.saved = (
            f"stopped before step {steps[-1] + 1}, nothing new to save (the newest checkpoint is step {steps[-1]})"
            if steps
            else "stopped before step 1, nothing to save"
        )
        raise


@dataclasses.dataclass
class SetUp:
    """What `set_up` readies for the loop: the state it starts from and what steps it."""

    workdir: str
    state: TrainState
    start_step: int
    dataset: Any
    train_fn: Callable
    eval_fn: Callable
    batches: Iterator
    checkpointer: checkpointing.Checkpointer
    logger: MetricLogger
    replicated: jax.sharding.Sharding
    batch_sharding: jax.sharding.Sharding


def set_up(plan: config_lib.Plan, workdir: str, mesh, *, allow_config_change: bool) -> SetUp:
    """The workdir checked, the dataset, the state (restored or fresh), the logger and the
    compiled steps. Checks that cost nothing come before anything that compiles or writes."""
    config, is_main = plan.config, jax.process_index() == 0
    check_workdir(workdir)
    checkpoint_dir = as_path(workdir) / "checkpoints"
    has_checkpoint = bool(checkpointing.finalized_steps(checkpoint_dir))
    check_saved_config(workdir, config, allow_config_change, has_checkpoint=has_checkpoint)
    dataset = get_dataset(plan)  # a missing dataset fails here, before any compile
    replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    init_key, step_key = jax.random.split(jax.random.key(config.seed))
    init = functools.partial(create_train_state, plan.model, plan.optimizer, dataset.image_size)
    start = functools.partial(
        initialise_from,
        source=config.init_from,
        step=config.init_from_step,
        model=config.model,
        overrides=plan.model_kwargs,
    )
    checkpointer = checkpointing.Checkpointer(
        checkpoint_dir,
        every_steps=config.checkpoint_every_steps,
        keep=config.keep_checkpoints,
        storage_retry_s=config.storage_retry_s,
    )
    with interrupts.deferred():  # a signal waits: a step moved aside or a record rewritten is never half done
        state, start_step = restore_or_init(
            checkpointer, jax.jit(init, out_shardings=replicated), init_key, workdir, replicated, start=start
        )
        if is_main:  # only once the checkpoint is known to fit this config: a refused resume changes nothing
            record_config(workdir, config)
        logger = MetricLogger(workdir, resumed_from=start_step, is_main=is_main, storage_retry_s=config.storage_retry_s)
    logger.console(
        f"{config.model} on {config.dataset}: {summary_line(state)}, {mesh.devices.size} device(s), "
        f"global batch {config.batch_size}, {plan.total_steps} steps"
        + (f"; resuming at step {start_step}" if start_step else "")
    )
    train_fn, eval_fn = step_functions(config, plan.model, plan.optimizer, plan.learning_rate, dataset, step_key)
    options = xla_config.step_compiler_options(jax.default_backend())
    batches = dataset.train_batches(
        global_batch_size=config.batch_size,
        start_step=start_step,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return SetUp(
        workdir,
        state,
        start_step,
        dataset,
        jax.jit(train_fn, donate_argnums=0, out_shardings=(replicated, replicated), compiler_options=options),
        jax.jit(eval_fn, out_shardings=replicated, compiler_options=options),
        batches,
        checkpointer,
        logger,
        replicated,
        batch_sharding,
    )


class _Run:
    """The loop, with one named place each for logging, evaluation, saving and preemption."""

    def __init__(self, ready: SetUp, plan: config_lib.Plan, *, return_state: bool):
        config, self.ready, self.state, self.return_state = plan.config, ready, ready.state, return_state
        self.total, self.eval_every, self.log_every = plan.total_steps, config.eval_every_steps, config.log_every_steps
        self.is_main = jax.process_index() == 0
        self.watcher = preemption.PreemptionWatcher(
            start_step=ready.start_step, last_step=self.total, console=preemption.write_line if self.is_main else None
        )
        self.log = TrainLog(
            ready.logger,
            start_step=ready.start_step,
            total=self.total,
            batch_size=config.batch_size,
            every=self.log_every,
            check=functools.partial(check_finite, checkpointer=ready.checkpointer, workdir=ready.workdir),
        )
        self.evaluation = RunEvaluation(
            ready.dataset,
            ready.eval_fn,
            ready.logger,
            crops=plan.eval_crops,
            batch_size=config.eval_batch_size,
            sharding=ready.batch_sharding,
            interrupted=lambda: self.watcher.stop_requested,
        )
        self.diagnostics = Diagnostics(
            config.diagnostics_every_steps,
            plan.model,
            ready.dataset,
            ready.logger,
            batch_size=config.batch_size,
            seed=config.seed,
            sharding=ready.batch_sharding,
            replicated=ready.replicated,
        )
        self.run_ahead = preemption.RunAheadBound()  # so that a stop waits for a few steps, not tens

    def __call__(self) -> dict[str, Any]:
        """Trains to the end, or to a preemption's checkpoint. Whatever ends the loop (finish,
        preemption, divergence, a crash), a save in flight is completed while the watcher still
        holds the signals, so neither a crash nor a second signal can cost the newest
        checkpoint; then the checkpointer and the logger close."""
        ready = self.ready
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(ready.logger.close)
            cleanup.callback(ready.checkpointer.close)
            cleanup.enter_context(self.watcher)
            cleanup.callback(ready.checkpointer.wait)
            stopped = self._owed_evaluation() or self._steps()
            if stopped:
                return stopped
            step = max(ready.start_step, self.total)
            with self.watcher.between_steps():
                eval_results = self.evaluation(self.state, step)
            if self.watcher.stops_at(step):  # during the final evaluation: the rerun only evaluates
                return self._stop(step)
            interrupts.stopping("training has finished; exiting")
        final = {"step": step, **{f"{tag}_{k}": v for tag, m in eval_results.items() for k, v in m.items()}}
        if self.is_main:
            write_atomically(as_path(ready.workdir) / "final_metrics.json", json.dumps(final, indent=2))
        ready.logger.console(
            "final: " + ", ".join(f"{tag} error {100 * m['error']:.2f}%" for tag, m in eval_results.items())
        )
        return {**final, "state": self.state} if self.return_state else final

    def _owed_evaluation(self) -> dict[str, Any] | None:
        """An evaluation due at the step resumed from that has no record (a stop or a crash cut
        it short), run first; the stop's result if a stop comes during it."""
        start = self.ready.start_step
        if 0 < start < self.total and self._evaluation_due(start) and (owed := self.evaluation.unrecorded(start)):
            self.ready.logger.console(f"step {start}: the evaluation due here was cut short by a stop; running it now")
            with self.watcher.between_steps(), self.log.progress.paused():
                self.evaluation(self.state, start, crops=owed)
            if self.watcher.stops_at(start):
                return self._stop(start)
        return None

    def _steps(self) -> dict[str, Any] | None:
        """Every step to the last; the stop's result if a stop comes first."""
        ready, watcher = self.ready, self.watcher
        for step in range(ready.start_step + 1, self.total + 1):
            started = time.time()
            self.state, metrics = ready.train_fn(
                self.state, parallel.global_batch(next(ready.batches), ready.batch_sharding)
            )
            if step == ready.start_step + 1:  # the first call compiles the step before it runs
                self.log.progress.exclude(compile_s := time.time() - started)
                ready.logger.console(f"compiled the train step in {compile_s:.1f} s")
            self.log.add(metrics)
            self.run_ahead.dispatched(metrics)
            if step % self.log_every == 0 or step == self.total:
                self.log.write(step, self.state)
            self.diagnostics.maybe_log(step, self.state)  # every config.diagnostics_every_steps steps
            # Once a step, on every process (a multi-host sync), and before any evaluation:
            # a preempted run saves at once, not after an evaluation that may outlast its grace.
            if watcher.should_stop(step):
                return self._stop(step)
            # A signal while this step is saved or evaluated stops the run at this step.
            with watcher.between_steps():
                # Save before evaluating: an evaluation that fails cannot cost this step's checkpoint.
                if step == self.total or ready.checkpointer.should_save(step):
                    self._save(step)
                if step % self.eval_every == 0 and step != self.total:
                    with self.log.progress.paused():
                        self.evaluation(self.state, step)
            if watcher.stops_at(step):
                return self._stop(step)
        return None

    def _evaluation_due(self, step: int) -> bool:
        return step == self.total or step % self.eval_every == 0

    def _save(self, step: int) -> None:
        with self.log.progress.paused():
            check_finite(self.state, self.ready.checkpointer, self.ready.workdir)  # a diverged state is never saved
            self.ready.checkpointer.maybe_save(step, self.state, force=True, metadata=_machine())

    def _stop(self, step: int) -> dict[str, Any]:
        """The preemption's checkpoint, durable before the run says so and returns."""
        self.log.write(step, self.state)  # the partial window, so that the resumed run's logs miss no step
        self._save(step)
        self.ready.checkpointer.wait()
        owed = self._evaluation_due(step) and self.evaluation.completed_step != step
        self.watcher.saved(step, owed=f"the evaluation at step {step} runs first when the run resumes" if owed else "")
        return {"preempted_at_step": step, "step": step, **({"state": self.state} if self.return_state else {})}
