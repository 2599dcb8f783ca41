"""`train_and_evaluate(config, workdir)`: the papers' recipes end to end.

The loop is deliberately plain: build (validated config -> data -> model -> optimiser ->
state), restore the newest good checkpoint if there is one, then step. Every host-side
decision that could lose a run is made here in one place:

- the data stream and every random draw are functions of (seed, step), so a resumed run
  continues exactly where the checkpoint left it;
- SIGTERM/SIGINT or a multi-host preemption notice saves at the current step and returns;
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
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_identity import checkpointing, config_migration, lease, models, optim, parallel, preemption, xla_config
from resnet_identity import config as config_lib
from resnet_identity.data import DatasetError, get_dataset
from resnet_identity.diagnostics import Diagnostics
from resnet_identity.files import WriteError, append_text, as_path, write_atomically, write_problem
from resnet_identity.init_from import initialise_from
from resnet_identity.metric_logging import MetricLogger
from resnet_identity.train_state import TrainState, convert_layout, create_train_state, eval_step, train_step


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
# An evaluation running longer than this says how far it has got (ImageNet's takes minutes).
EVAL_PROGRESS_SECONDS = 30.0
# Exit status of a run stopped by SIGTERM/SIGINT or a preemption notice after saving
# (sysexits' EX_TEMPFAIL): not 0, so that a scheduler or a retry loop reruns it.
EXIT_PREEMPTED = 75


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


def evaluate(
    state,
    dataset,
    eval_fn,
    *,
    batch_size: int,
    sharding,
    crop: int | None = None,
    interrupted: Callable[[], bool] = lambda: False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float] | None:
    """Error and loss over the whole test split: each example once (padded, masked), in
    global batches of `batch_size` sharded by `sharding`; None once `interrupted()` (a
    preemption, which must not wait for a long evaluation). `progress` hears how many
    examples are done, every `EVAL_PROGRESS_SECONDS`."""
    totals, done, reported = None, 0, time.time()
    for batch in dataset.eval_batches(
        global_batch_size=batch_size, process_index=jax.process_index(), process_count=jax.process_count(), crop=crop
    ):
        if interrupted():
            return None
        sums = eval_fn(state, parallel.global_batch(batch, sharding))
        if totals is not None:  # one batch in flight, so that `done` counts finished work
            jax.block_until_ready(totals)
            done += batch_size
            if progress is not None and time.time() - reported >= EVAL_PROGRESS_SECONDS:
                progress(f"evaluated {min(done, dataset.num_test):,} of {dataset.num_test:,} examples")
                reported = time.time()
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = parallel.to_host(totals)
    count = float(totals["count"])
    return {
        "error": float(totals["error_sum"]) / count,
        "top5_error": float(totals["top5_error_sum"]) / count,
        "loss": float(totals["loss_sum"]) / count,
        "examples": count,
    }


def summary_line(state: TrainState) -> str:
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state.params))
    return f"{count:,} parameters"


class _Progress:
    """Training images/s and ETA for the console line; time spent compiling, evaluating and
    saving (`exclude`) is left out of the rate."""

    def __init__(self, start_step: int, total: int, batch: int):
        self.total, self.batch = total, batch
        self.last_step, self.last_time, self.excluded = start_step, time.time(), 0.0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leaves the time spent inside the block out of the rate."""
        started = time.time()
        try:
            yield
        finally:
            self.exclude(time.time() - started)

    def line(self, step: int) -> str:
        now = time.time()
        rate = (step - self.last_step) / max(now - self.last_time - self.excluded, 1e-9)
        self.last_step, self.last_time, self.excluded = step, now, 0.0
        minutes, seconds = divmod(round((self.total - step) / max(rate, 1e-9)), 60)
        return f"{rate * self.batch:,.0f} img/s, ETA {minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


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
    with lease.hold(workdir):
        return _train_and_evaluate(
            config, workdir, mesh, allow_config_change=allow_config_change, return_state=return_state
        )


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, mesh, *, allow_config_change: bool, return_state: bool
) -> dict[str, Any]:
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
    replicated = parallel.replicated(mesh)
    key = jax.random.key(config.seed)
    init_key, step_key = jax.random.split(key)

    # Beside each checkpoint, read on resume.
    save_metadata = {"process_count": jax.process_count(), "device_count": jax.device_count()}
    init = jax.jit(functools.partial(create_train_state, model, tx, dataset.image_size), out_shardings=replicated)
    checkpointer = checkpointing.Checkpointer(
        checkpoint_dir, every_steps=config.checkpoint_every_steps, keep=config.keep_checkpoints
    )
    abstract = jax.eval_shape(init, init_key)
    restored = checkpointer.restore(
        jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract),
        relayout=convert_layout,
    )
    if restored is not None:
        state, start_step = restored
        if int(parallel.to_host(state.step)) != start_step:
            raise checkpointing.CheckpointRestoreError(
                f"Checkpoint {start_step} in {workdir}/checkpoints holds a state at step "
                f"{int(parallel.to_host(state.step))}; its directory was renamed or copied. Move it aside to resume "
                "from the previous one."
            )
        saved_meta = checkpointer.metadata(start_step)
        saved_processes = saved_meta.get("process_count", jax.process_count())
        if saved_processes != jax.process_count():
            logging.getLogger(__name__).warning(
                "Checkpoint %d was written by %d processes and is resumed on %d: training continues, but "
                "the order of examples from here on is not the one an uninterrupted run would have seen "
                "(each process reads its own shard of the data).",
                start_step,
                saved_processes,
                jax.process_count(),
            )
        saved_devices = saved_meta.get("device_count", jax.device_count())
        if saved_devices != jax.device_count():
            logging.getLogger(__name__).warning(
                "Checkpoint %d was written on %d devices and is resumed on %d: training continues on the same "
                "examples, but its results are no longer bitwise those of an uninterrupted run (each sum over the "
                "batch is split across the devices differently).",
                start_step,
                saved_devices,
                jax.device_count(),
            )
    else:
        options = xla_config.init_compiler_options(jax.default_backend())
        state, start_step = init.lower(init_key).compile(compiler_options=options)(init_key), 0
        state = initialise_from(state, config)  # config.init_from, on a fresh run only
    if is_main:  # only once the checkpoint is known to fit this config: a refused resume changes nothing
        record_config(workdir, config)
    logger = MetricLogger(workdir, resumed_from=start_step, is_main=is_main)
    logger.console(
        f"{config.model} on {config.dataset}: {summary_line(state)}, {mesh.devices.size} device(s), "
        f"global batch {config.batch_size}, {total} steps" + (f"; resuming at step {start_step}" if start_step else "")
    )

    step_options = xla_config.step_compiler_options(jax.default_backend())
    step_fn = jax.jit(
        functools.partial(
            train_step,
            model=model,
            tx=tx,
            schedule=schedule,
            transform=dataset.train_transform,
            key=step_key,
            label_smoothing=config.label_smoothing,
        ),
        donate_argnums=0,
        out_shardings=(replicated, replicated),
        compiler_options=step_options,
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, model=model, transform=dataset.eval_transform),
        out_shardings=replicated,
        compiler_options=step_options,
    )
    crops = tuple(config.eval_crops) if config.eval_crops else (None,)
    batch_sharding = parallel.batch_sharded(mesh)
    diagnostics = Diagnostics(config, model, dataset, logger, sharding=batch_sharding, replicated=replicated)

    watcher = preemption.PreemptionWatcher(last_step=total, console=preemption.write_line if is_main else None)

    def run_eval(step: int) -> dict[str, float]:
        results = {}
        for crop in crops:
            tag = "test" if crop is None else f"test_{crop}"
            logger.console(
                f"step {step}: evaluating on {dataset.num_test:,} examples"
                + (f" at crop {crop}" if crop else "")
                + "..."
            )
            metrics = evaluate(
                state,
                dataset,
                eval_fn,
                batch_size=config.eval_batch_size,
                sharding=batch_sharding,
                crop=crop,
                interrupted=lambda: watcher.stop_requested,
                progress=lambda line: logger.console(f"step {step}: {line}"),
            )
            if metrics is None:
                break
            logger.write(step, tag, metrics)
            logger.console(
                f"step {step}: {tag} error {100 * metrics['error']:.2f}%, loss {metrics['loss']:.4f} "
                f"({int(metrics['examples'])} examples)"
            )
            results[tag] = metrics
        return results

    def check_finite(step: int) -> None:
        bad = int(parallel.to_host(state.nonfinite_step))
        if bad >= 0:
            last = checkpointer.latest_step()
            kept = (
                f"the last good checkpoint (step {last}) in {workdir}/checkpoints is kept"
                if last is not None
                else "no checkpoint had been written yet, so a rerun starts at step 0"
            )
            raise DivergenceError(
                f"Loss or gradient norm became NaN/Inf at step {bad}. Training stopped; {kept}. An unchanged "
                f"rerun would diverge again at the same step: lower the learning rate, add warm-up or check "
                f"the data, then rerun with the changed values and --allow_config_change."
            )

    batches = dataset.train_batches(
        global_batch_size=config.batch_size,
        start_step=start_step,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    progress = _Progress(start_step, total, config.batch_size)
    pending: list[dict[str, jax.Array]] = []
    step = start_step
    eval_results: dict[str, dict[str, float]] = {}

    def log_window(step: int) -> None:
        """Writes the mean of the steps since the last line, then stops on a NaN/Inf: the
        window that diverged is on record."""
        host = parallel.to_host(pending)  # no device op: a stack would compile per length
        means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        pending.clear()
        logger.write(step, "train", means)
        logger.console(
            f"step {step}/{total}: loss {means['loss']:.4f}, train error "
            f"{100 * means['error']:.2f}%, lr {means['learning_rate']:.4g}, {progress.line(step)}"
        )
        check_finite(step)

    def save_and_stop(step: int) -> dict[str, Any]:
        """The preemption's checkpoint, durable before the run says so and returns."""
        if pending:  # the partial window, so the resumed run's logs miss no step
            log_window(step)  # (each window ends with check_finite)
        checkpointer.maybe_save(step, state, force=True, metadata=save_metadata)
        checkpointer.wait()
        watcher.saved(step)
        return {"preempted_at_step": step, "step": step, **({"state": state} if return_state else {})}

    run_ahead = preemption.RunAheadBound()  # so that a stop waits for a few steps, not tens
    # Whatever ends the loop (finish, preemption, divergence, a crash), a save in flight is
    # completed while the watcher still holds the signals, so neither a crash nor a second
    # signal can cost the newest checkpoint.
    try:
        with watcher:
            try:
                while step < total:
                    started = time.time()
                    state, metrics = step_fn(state, parallel.global_batch(next(batches), batch_sharding))
                    if step == start_step:  # the first call compiles the step before it runs
                        compile_s = time.time() - started
                        progress.exclude(compile_s)
                        logger.console(f"compiled the train step in {compile_s:.1f} s")
                    pending.append(metrics)
                    run_ahead.dispatched(metrics)
                    step += 1
                    if step % config.log_every_steps == 0 or step == total:
                        log_window(step)
                    diagnostics.maybe_log(step, state)  # every config.diagnostics_every_steps steps
                    # Once a step, on every process (a multi-host sync), and before any evaluation:
                    # a preempted run saves at once, not after an evaluation that may outlast its grace.
                    if watcher.should_stop(step):
                        return save_and_stop(step)
                    # Save before evaluating: an evaluation that fails cannot cost this step's checkpoint.
                    if step == total or checkpointer.should_save(step):
                        with progress.paused():
                            check_finite(step)
                            checkpointer.maybe_save(step, state, force=True, metadata=save_metadata)
                    if step % config.eval_every_steps == 0 and step != total:
                        with progress.paused():
                            eval_results = run_eval(step)
                eval_results = run_eval(step)
                if watcher.stop_requested:  # during the final evaluation: the rerun only evaluates
                    return save_and_stop(step)
            finally:
                checkpointer.wait()
    finally:
        checkpointer.close()
        logger.close()
    final = {"step": step, **{f"{tag}_{k}": v for tag, m in eval_results.items() for k, v in m.items()}}
    if is_main:
        write_atomically(as_path(workdir) / "final_metrics.json", json.dumps(final, indent=2))
    logger.console("final: " + ", ".join(f"{tag} error {100 * m['error']:.2f}%" for tag, m in eval_results.items()))
    return {**final, "state": state} if return_state else final
