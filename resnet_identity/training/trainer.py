"""`train_and_evaluate(config, workdir)`: the papers' recipes end to end.

The loop is deliberately plain: build (validated config -> data -> model -> optimiser ->
state), restore the newest good checkpoint if there is one, then step. Every host-side
decision that could lose a run is made here in one place:

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
import functools
import json
import logging
import os
import socket
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from resnet_identity import models
from resnet_identity.data import DatasetError, get_dataset
from resnet_identity.runs import checkpointing, interrupts, lease, preemption
from resnet_identity.runs.files import WriteError, append_text, as_path, write_atomically, write_problem
from resnet_identity.runs.metric_logging import MetricLogger
from resnet_identity.training import config as config_lib
from resnet_identity.training import config_migration, optim, parallel, xla_config
from resnet_identity.training.diagnostics import Diagnostics
from resnet_identity.training.evaluation import Evaluation
from resnet_identity.training.init_from import initialise_from
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


def check_workdir(workdir: str) -> None:
    """Fails early, with what to do, if the workdir (local or gs://) cannot be written or
    the disk is full. The probe file is removed whether or not its write succeeded."""
    path = as_path(workdir)
    # One probe per process: the processes of a multi-host run share the workdir.
    probe = path / f".write_test.{socket.gethostname()}.{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_text("x" * 4096)
        finally:
            probe.unlink(missing_ok=True)
    except OSError as e:
        advice = write_problem(e) or "choose a writable --workdir, fix its permissions, or free disk space."
        raise WriteError(f"Cannot write to workdir {workdir}: {advice} ({e})") from e


def check_saved_config(
    workdir: str, config: ml_collections.ConfigDict, allow_change: bool, *, has_checkpoint: bool = True
) -> None:
    """Refuses to resume a workdir whose saved config differs, unless `allow_change`.

    The layout overrides (`config.LAYOUT_FIELDS`: scan, remat, unroll) may change freely:
    the checkpoint is converted on restore; so may the fields that only decide what is
    recorded (`config.RECORD_FIELDS`: log, eval, checkpoint and diagnostics intervals).
    Only a checkpoint (or a result) binds a workdir to its config: `train_and_evaluate`
    passes `has_checkpoint=False` when there is none yet, so a run that failed before its
    first save (a bad value, an out-of-memory compile) can be rerun with corrected values.
    """
    path = as_path(workdir) / "config.json"
    if not has_checkpoint or not path.exists():
        return
    saved = _read_saved_config(path)
    if saved is None:
        if allow_change:
            return  # record_config moves the damaged file aside
        raise config_lib.ConfigError(
            f"{path} is damaged (not a JSON config), so --config cannot be checked against the config of the "
            f"checkpoints. If --config is that config, rerun with --allow_config_change: the damaged file is kept "
            f"beside it as config.json.damaged-<time> and a new config.json is written. Otherwise use a new --workdir."
        )
    saved = config_migration.migrate(saved)  # an older version's field names read as today's
    diffs = config_lib.differing_fields(
        saved, json.loads(config.to_json()), ignore=config_lib.LAYOUT_FIELDS + config_lib.RECORD_FIELDS
    )
    if diffs and not allow_change:
        raise config_lib.ConfigError(
            f"{path} was written by a run with a different config:\n  - "
            + "\n  - ".join(diffs)
            + "\nUse a new --workdir, or pass --allow_config_change to resume with the new values."
        )


def _read_saved_config(path) -> dict | None:
    """A workdir's `config.json` as written, or None if it is damaged (not a JSON object)."""
    try:
        saved = json.loads(path.read_text())
    except ValueError:  # not JSON, or not text
        return None
    return saved if isinstance(saved, dict) else None


def record_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `config.json`; a different config it replaces (a resume with
    `--allow_config_change`, or a rerun before the first checkpoint) is appended to
    `config_history.jsonl` first, so the config of every earlier step stays on record; a
    damaged one is kept beside it as `config.json.damaged-<time>`."""
    path = as_path(workdir) / "config.json"
    saved = _read_saved_config(path) if path.exists() else {}
    if saved is None:
        aside = path.parent / f"config.json.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        path.rename(aside)
        logging.getLogger(__name__).warning("%s was damaged: kept as %s; a new config.json is written.", path, aside)
    elif saved and config_lib.differing_fields(saved, json.loads(config.to_json())):
        append_text(
            path.parent / "config_history.jsonl",
            json.dumps({"replaced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": saved}) + "\n",
        )
    # Atomically: the other processes may be reading it in check_saved_config.
    write_atomically(path, config.to_json(indent=2))


def build_optimizer(config: ml_collections.ConfigDict):
    """`config.optimizer` and `config.schedule` as (optax transformation, learning rate per step)."""
    return optim.build(
        config, total_steps=config_lib.total_steps(config), steps_per_epoch=config_lib.steps_per_epoch(config)
    )


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


# What a checkpoint records of the machine that wrote it, and what resuming it on another costs.
_MACHINE = {
    "process_count": (
        "written by %d processes and is resumed on %d: training continues, but the order of examples from here on "
        "is not the one an uninterrupted run would have seen (each process reads its own shard of the data)."
    ),
    "device_count": (
        "written on %d devices and is resumed on %d: training continues on the same examples, but its results are "
        "no longer bitwise those of an uninterrupted run (each sum over the batch is split across the devices "
        "differently)."
    ),
}


def _machine() -> dict[str, int]:
    return {"process_count": jax.process_count(), "device_count": jax.device_count()}


def restore_or_init(
    checkpointer: checkpointing.Checkpointer, init, init_key: jax.Array, config, workdir: str, sharding
) -> tuple[TrainState, int]:
    """(state, step) from the newest good checkpoint, or a fresh state at step 0 (with
    `config.init_from`'s weights). A resume on another machine shape is warned about."""
    abstract = jax.eval_shape(init, init_key)
    restored = checkpointer.restore(
        jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract),
        relayout=convert_layout,
    )
    if restored is None:
        options = xla_config.init_compiler_options(jax.default_backend())
        state = init.lower(init_key).compile(compiler_options=options)(init_key)
        return initialise_from(state, config), 0
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
            logging.getLogger(__name__).warning(f"Checkpoint %d was {_MACHINE[field]}", step, saved[field], now)
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
    config_lib.validate(config, num_devices=mesh.devices.size, num_processes=jax.process_count())
    try:
        with lease.hold(workdir):
            return _train_and_evaluate(
                config, workdir, mesh, allow_config_change=allow_config_change, return_state=return_state
            )
    except (interrupts.Stopped, KeyboardInterrupt) as stop:  # before the loop (in it, the watcher saves and returns)
        steps = checkpointing.finalized_steps(as_path(workdir) / "checkpoints")
        stop.saved = (
            f"stopped before step {steps[-1] + 1}, nothing new to save (the newest checkpoint is step {steps[-1]})"
            if steps
            else "stopped before step 1, nothing to save"
        )
        raise


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, mesh, *, allow_config_change: bool, return_state: bool
) -> dict[str, Any]:
    # Set-up: checks that cost nothing come before anything that compiles or writes.
    is_main = jax.process_index() == 0
    check_workdir(workdir)
    checkpoint_dir = as_path(workdir) / "checkpoints"
    check_saved_config(
        workdir, config, allow_config_change, has_checkpoint=bool(checkpointing.finalized_steps(checkpoint_dir))
    )
    dataset = get_dataset(config)  # a missing dataset fails here, before any compile
    total = config_lib.total_steps(config)
    model = models.create_model(config.model, num_classes=dataset.num_classes, **config_lib.model_kwargs(config))
    tx, schedule = build_optimizer(config)
    replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    init_key, step_key = jax.random.split(jax.random.key(config.seed))
    init = jax.jit(functools.partial(create_train_state, model, tx, dataset.image_size), out_shardings=replicated)
    checkpointer = checkpointing.Checkpointer(
        checkpoint_dir,
        every_steps=config.checkpoint_every_steps,
        keep=config.keep_checkpoints,
        storage_retry_s=config.storage_retry_s,
    )
    with interrupts.deferred():  # a signal waits: a step moved aside or a record rewritten is never half done
        state, start_step = restore_or_init(checkpointer, init, init_key, config, workdir, replicated)
        if is_main:  # only once the checkpoint is known to fit this config: a refused resume changes nothing
            record_config(workdir, config)
        logger = MetricLogger(workdir, resumed_from=start_step, is_main=is_main, storage_retry_s=config.storage_retry_s)
    logger.console(
        f"{config.model} on {config.dataset}: {summary_line(state)}, {mesh.devices.size} device(s), "
        f"global batch {config.batch_size}, {total} steps" + (f"; resuming at step {start_step}" if start_step else "")
    )
    train_fn, eval_fn = step_functions(config, model, tx, schedule, dataset, step_key)
    options = xla_config.step_compiler_options(jax.default_backend())
    train_fn = jax.jit(train_fn, donate_argnums=0, out_shardings=(replicated, replicated), compiler_options=options)
    eval_fn = jax.jit(eval_fn, out_shardings=replicated, compiler_options=options)
    batches = dataset.train_batches(
        global_batch_size=config.batch_size,
        start_step=start_step,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    # Logging, evaluation, saving and preemption: one named place each.
    watcher = preemption.PreemptionWatcher(
        start_step=start_step, last_step=total, console=preemption.write_line if is_main else None
    )
    log = TrainLog(
        logger,
        start_step=start_step,
        total=total,
        batch_size=config.batch_size,
        every=config.log_every_steps,
        check=functools.partial(check_finite, checkpointer=checkpointer, workdir=workdir),
    )
    run_eval = Evaluation(
        config, dataset, eval_fn, logger, sharding=batch_sharding, interrupted=lambda: watcher.stop_requested
    )
    diagnostics = Diagnostics(config, model, dataset, logger, sharding=batch_sharding, replicated=replicated)
    run_ahead = preemption.RunAheadBound()  # so that a stop waits for a few steps, not tens

    def save(step: int, state: TrainState) -> None:
        with log.progress.paused():
            check_finite(state, checkpointer, workdir)  # a diverged state is never saved
            checkpointer.maybe_save(step, state, force=True, metadata=_machine())

    def evaluation_due(step: int) -> bool:
        return step == total or step % config.eval_every_steps == 0

    def stop_for_preemption(step: int, state: TrainState) -> dict[str, Any]:
        """The preemption's checkpoint, durable before the run says so and returns."""
        log.write(step, state)  # the partial window, so that the resumed run's logs miss no step
        save(step, state)
        checkpointer.wait()
        owed = evaluation_due(step) and run_eval.completed_step != step
        watcher.saved(step, owed=f"the evaluation at step {step} runs first when the run resumes" if owed else "")
        return {"preempted_at_step": step, "step": step, **({"state": state} if return_state else {})}

    # The loop. Whatever ends it (finish, preemption, divergence, a crash), a save in flight is
    # completed while the watcher still holds the signals, so neither a crash nor a second
    # signal can cost the newest checkpoint; then the checkpointer and the logger close.
    eval_results: dict[str, dict[str, float]] = {}
    step = start_step
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(logger.close)
        cleanup.callback(checkpointer.close)
        cleanup.enter_context(watcher)
        cleanup.callback(checkpointer.wait)
        # An evaluation due at the step resumed from that has no record: a stop (or a crash) cut it short.
        if 0 < start_step < total and evaluation_due(start_step) and (owed := run_eval.unrecorded(start_step)):
            logger.console(f"step {start_step}: the evaluation due here was cut short by a stop; running it now")
            with watcher.between_steps(), log.progress.paused():
                eval_results = run_eval(state, start_step, crops=owed)
            if watcher.stops_at(start_step):
                return stop_for_preemption(start_step, state)
        for step in range(start_step + 1, total + 1):
            started = time.time()
            state, metrics = train_fn(state, parallel.global_batch(next(batches), batch_sharding))
            if step == start_step + 1:  # the first call compiles the step before it runs
                log.progress.exclude(compile_s := time.time() - started)
                logger.console(f"compiled the train step in {compile_s:.1f} s")
            log.add(metrics)
            run_ahead.dispatched(metrics)
            if step % config.log_every_steps == 0 or step == total:
                log.write(step, state)
            diagnostics.maybe_log(step, state)  # every config.diagnostics_every_steps steps
            # Once a step, on every process (a multi-host sync), and before any evaluation:
            # a preempted run saves at once, not after an evaluation that may outlast its grace.
            if watcher.should_stop(step):
                return stop_for_preemption(step, state)
            # A signal while this step is saved or evaluated stops the run at this step.
            with watcher.between_steps():
                # Save before evaluating: an evaluation that fails cannot cost this step's checkpoint.
                if step == total or checkpointer.should_save(step):
                    save(step, state)
                if step % config.eval_every_steps == 0 and step != total:
                    with log.progress.paused():
                        eval_results = run_eval(state, step)
            if watcher.stops_at(step):
                return stop_for_preemption(step, state)
        with watcher.between_steps():
            eval_results = run_eval(state, step)
        if watcher.stops_at(step):  # during the final evaluation: the rerun only evaluates
            return stop_for_preemption(step, state)
        interrupts.stopping("training has finished; exiting")
    final = {"step": step, **{f"{tag}_{k}": v for tag, m in eval_results.items() for k, v in m.items()}}
    if is_main:
        write_atomically(as_path(workdir) / "final_metrics.json", json.dumps(final, indent=2))
    logger.console("final: " + ", ".join(f"{tag} error {100 * m['error']:.2f}%" for tag, m in eval_results.items()))
    return {**final, "state": state} if return_state else final
