"""The trainer (`training/trainer.py`): training end to end on each data source, and never
losing a run: kills, preemption, corrupt checkpoints, divergence, and resumes that do not fit
the workdir (the same mistakes through `train.py`: test_train.py; config values: test_config.py).
Where a test needs a process of its own (kills, signals, exit statuses), the trainer runs in
`train_worker.py` or `train.py`."""

import json
import os
import random
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_identity.data import DatasetNotPreparedError
from resnet_identity.training import config as config_lib
from resnet_identity.training import evaluation, trainer
from tests.test_config import _config
from tests.test_recipes import _load
from tests.train_worker import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "train_worker.py")


def _worker_cmd(workdir, out, steps, *overrides):
    cmd = [sys.executable, WORKER, str(workdir), str(out), "--steps", str(steps)]
    for o in overrides:
        cmd += ["--override", o]
    return cmd


def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}


def _train_py(workdir, *overrides):
    """`train.py` on the quickstart config with `--config.` overrides (`name=value`)."""
    config = "--config=" + os.path.join(ROOT, "configs", "quickstart.py")
    return [sys.executable, os.path.join(ROOT, "train.py"), config, f"--workdir={workdir}"] + [
        f"--config.{o}" for o in overrides
    ]


def _npz(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _run_until_killed(cmd, kill_after_step, sig):
    """Starts `cmd`, waits until it logs `step kill_after_step/`, then sends `sig`."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {kill_after_step}/"):
            proc.send_signal(sig)
            break
    rest, _ = proc.communicate(timeout=300)
    return proc.returncode, "".join(lines) + rest


@pytest.mark.slow
def test_sigkill_three_times_then_resume_is_bitwise_identical(tmp_path):
    steps = 12
    every = ("checkpoint_every_steps=2",)
    reference = subprocess.run(
        _worker_cmd(tmp_path / "ref", tmp_path / "ref.npz", steps, *every),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    rng = random.Random(0)
    cmd = _worker_cmd(tmp_path / "killed", tmp_path / "killed.npz", steps, *every)
    kill_steps = sorted(rng.sample(range(2, steps), 3))
    for kill_at in kill_steps:
        code, output = _run_until_killed(cmd, kill_at, signal.SIGKILL)
        assert code == -signal.SIGKILL, output[-2000:]
    final = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resuming at step" in final.stdout
    a, b = _npz(tmp_path / "ref.npz"), _npz(tmp_path / "killed.npz")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # The metrics record has each step exactly once.
    steps_logged = [
        json.loads(line)["step"] for line in open(tmp_path / "killed" / "metrics.jsonl") if "train/loss" in line
    ]
    assert steps_logged == list(range(1, steps + 1))


@pytest.mark.slow
def test_sigterm_saves_at_current_step_and_exits_for_a_rerun(tmp_path):
    """`train.py` itself: it saves, says how to resume, and exits 75 (not 0, which a
    scheduler would read as a finished run)."""
    cmd = _train_py(
        tmp_path / "run",
        "num_train_steps=400",
        "log_every_steps=1",
        "checkpoint_every_steps=1000",
        "eval_every_steps=1000",
    )
    code, output = _run_until_killed(cmd, 3, signal.SIGTERM)
    assert code == trainer.EXIT_PREEMPTED == 75, output[-3000:]
    assert "received SIGTERM: saving step" in output and "rerun the same command to resume" in output
    saved = int(output.split("saved step ")[1].split(";")[0])
    assert saved >= 3
    assert str(saved) in os.listdir(tmp_path / "run" / "checkpoints")


class _PoisonedFromStep:
    """A dataset whose batches from `step` on (1-based) are all-255 images that normalise to NaN."""

    def __init__(self, dataset, step):
        self._dataset, self._step = dataset, step

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def train_batches(self, *, start_step, **kwargs):
        for index, batch in enumerate(self._dataset.train_batches(start_step=start_step, **kwargs), start_step + 1):
            yield {**batch, "image": np.full_like(batch["image"], 255)} if index >= self._step else batch

    def train_transform(self, images, rng):
        return jnp.where(jnp.all(images == 255), jnp.nan, self._dataset.train_transform(images, rng))


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = trainer.get_dataset
    monkeypatch.setattr(trainer, "get_dataset", lambda config: _PoisonedFromStep(real(config), step=3))
    config = tiny_config(steps=6)
    config.checkpoint_every_steps = 2
    with pytest.raises(trainer.DivergenceError, match=r"NaN/Inf at step 3\..*last good checkpoint \(step 2\)"):
        trainer.train_and_evaluate(config, str(tmp_path))
    steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert steps == [2]
    monkeypatch.undo()
    resumed = trainer.train_and_evaluate(config, str(tmp_path))  # the kept checkpoint resumes
    assert resumed["step"] == 6


def test_truncated_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    config = tiny_config(steps=4)
    config.checkpoint_every_steps = 2
    trainer.train_and_evaluate(config, str(tmp_path))
    step4 = tmp_path / "checkpoints" / "4"
    biggest = max((p for p in step4.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 2)
    config.num_train_steps = 5
    result = trainer.train_and_evaluate(config, str(tmp_path), allow_config_change=True)
    assert result["step"] == 5
    assert "step 4" in caplog.text and "unreadable" in caplog.text
    assert (tmp_path / "checkpoints" / "corrupt" / "4").exists()  # kept for inspection


def test_final_metrics_and_logs_survive_a_resume(tmp_path):
    config = tiny_config(steps=3)
    trainer.train_and_evaluate(config, str(tmp_path))
    first = json.load(open(tmp_path / "final_metrics.json"))
    config.num_train_steps = 4
    config.schedule.boundaries = (3,)
    trainer.train_and_evaluate(config, str(tmp_path), allow_config_change=True)
    second = json.load(open(tmp_path / "final_metrics.json"))
    assert first["step"] == 3 and second["step"] == 4
    # The replaced config stays on record.
    history = [json.loads(line) for line in open(tmp_path / "config_history.jsonl")]
    assert [h["config"]["num_train_steps"] for h in history] == [3]
    assert json.load(open(tmp_path / "config.json"))["num_train_steps"] == 4
    logged = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl") if "train/loss" in line]
    assert logged == [1, 2, 3, 4]


def test_tfds_cifar_resume_is_bitwise_identical(tmp_path, monkeypatch):
    """Stopped at step 2 (as on preemption) and rerun, the TFDS CIFAR-10 run ends bit-identical."""
    pytest.importorskip("tensorflow_datasets")
    from tests.cifar_archive import prepare_tiny_cifar

    prepare_tiny_cifar("cifar10", tmp_path / "data", train=40, test=40)
    config = tiny_config(steps=4)
    config.dataset = "cifar10"
    config.data_dir = str(tmp_path / "data")
    config.eval_batch_size = 24

    def run(workdir):
        return trainer.train_and_evaluate(config, str(workdir), return_state=True)

    reference = run(tmp_path / "reference")["state"]
    original = trainer.preemption.PreemptionWatcher.should_stop
    monkeypatch.setattr(trainer.preemption.PreemptionWatcher, "should_stop", lambda self, step: step == 2)
    stopped = run(tmp_path / "resumed")
    assert stopped["preempted_at_step"] == 2
    monkeypatch.setattr(trainer.preemption.PreemptionWatcher, "should_stop", original)
    resumed = run(tmp_path / "resumed")["state"]
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_failed_evaluation_does_not_cost_the_checkpoint_due_at_the_same_step(tmp_path, monkeypatch):
    """Checkpoint first, then evaluate: an evaluation that fails (out of memory, a bad crop)
    at a step where both are due leaves that step's checkpoint, so a rerun does not redo it."""
    config = tiny_config(steps=4)
    config.eval_every_steps = config.checkpoint_every_steps = 2

    def failing_evaluate(*args, **kwargs):
        raise MemoryError("evaluation ran out of memory")

    monkeypatch.setattr(evaluation, "evaluate_split", failing_evaluate)
    with pytest.raises(MemoryError):
        trainer.train_and_evaluate(config, str(tmp_path))
    assert "2" in os.listdir(tmp_path / "checkpoints")


def test_a_run_that_failed_before_its_first_checkpoint_can_be_rerun_with_other_values(tmp_path):
    """Only a checkpoint binds a workdir to its config: fixing a value that failed the first
    start (here a stale config.json from a different learning rate) needs no flag."""
    stale = tiny_config(steps=2)
    stale.schedule.learning_rate = 0.5
    (tmp_path / "config.json").write_text(stale.to_json(indent=2))
    config = tiny_config(steps=2)
    trainer.train_and_evaluate(config, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["schedule"]["learning_rate"] == config.schedule.learning_rate


def test_divergence_before_any_checkpoint_says_a_rerun_starts_over(tmp_path, monkeypatch):
    real = trainer.get_dataset
    monkeypatch.setattr(trainer, "get_dataset", lambda config: _PoisonedFromStep(real(config), step=2))
    with pytest.raises(
        trainer.DivergenceError,
        match="at step 2.*no checkpoint had been written yet.*rerun with the changed values and --allow_config_change",
    ):
        trainer.train_and_evaluate(tiny_config(steps=4), str(tmp_path))


def test_train_py_prints_an_error_without_a_traceback_and_exits_1(tmp_path):
    cmd = _train_py(tmp_path, "model=resnet_1001")
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "error: " in result.stderr and "is not a model" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_checkpoint_whose_directory_names_another_step_is_refused(tmp_path):
    """The trainer resumes the data stream at the directory's step and the RNG at the
    state's: a renamed or copied step directory would silently desynchronise them."""
    from resnet_identity.runs.checkpointing import CheckpointRestoreError

    config = tiny_config(steps=2)
    trainer.train_and_evaluate(config, str(tmp_path))
    os.rename(tmp_path / "checkpoints" / "2", tmp_path / "checkpoints" / "3")
    config.num_train_steps = 4
    config.schedule.boundaries = (3,)
    with pytest.raises(CheckpointRestoreError, match="Checkpoint 3 .* holds a state at step 2"):
        trainer.train_and_evaluate(config, str(tmp_path), allow_config_change=True)


def test_resuming_on_another_process_count_warns_that_the_data_order_changes(tmp_path, caplog):
    config = tiny_config(steps=2)
    trainer.train_and_evaluate(config, str(tmp_path))
    meta = next((tmp_path / "checkpoints" / "2" / "meta").glob("*"))
    record = json.loads(meta.read_text())
    assert record["process_count"] == 1
    meta.write_text(json.dumps({**record, "process_count": 2}))
    config.num_train_steps = 3
    config.schedule.boundaries = (2,)
    trainer.train_and_evaluate(config, str(tmp_path), allow_config_change=True)
    assert "written by 2 processes and is resumed on 1" in caplog.text


def test_a_damaged_metadata_item_costs_nothing_but_a_warning(tmp_path, caplog):
    config = tiny_config(steps=2)
    trainer.train_and_evaluate(config, str(tmp_path))
    meta = next((tmp_path / "checkpoints" / "2" / "meta").glob("*"))
    meta.write_text('{"st')  # torn mid-write
    config.num_train_steps = 3
    config.schedule.boundaries = (2,)
    result = trainer.train_and_evaluate(config, str(tmp_path), allow_config_change=True)
    assert result["step"] == 3
    assert "metadata beside checkpoint 2" in caplog.text and "state is intact" in caplog.text
    assert not (tmp_path / "checkpoints" / "corrupt").exists()


def test_a_preempted_run_saves_before_evaluating_and_logs_its_partial_window(tmp_path, monkeypatch):
    from resnet_identity.runs import preemption

    config = tiny_config(steps=6)
    config.log_every_steps = 3
    config.eval_every_steps = 4  # due at the step the notice arrives
    evaluated = []
    real_evaluate = evaluation.evaluate_split
    monkeypatch.setattr(evaluation, "evaluate_split", lambda *a, **k: evaluated.append(1) or real_evaluate(*a, **k))
    with monkeypatch.context() as m:
        m.setattr(preemption.PreemptionWatcher, "should_stop", lambda self, step: step == 4)
        assert trainer.train_and_evaluate(config, str(tmp_path))["preempted_at_step"] == 4
    assert not evaluated
    assert os.listdir(tmp_path / "checkpoints") == ["4"]
    trainer.train_and_evaluate(config, str(tmp_path))
    logged = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl") if "train/loss" in line]
    assert logged == [3, 4, 6]
    # the evaluation the stop skipped is done by the resumed run, before it trains on
    evaluated = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl") if "test/error" in line]
    assert evaluated == [4, 6]


def test_saves_in_flight_are_awaited_while_signals_are_still_caught(tmp_path, monkeypatch):
    """A second SIGTERM while the preemption (or final) checkpoint is being written must be
    caught, not kill the process with the step half-written."""
    from resnet_identity.runs import checkpointing, preemption

    handlers, in_flight = [], []
    real_save, real_wait = checkpointing.Checkpointer.maybe_save, checkpointing.Checkpointer.wait

    def save(self, *args, **kwargs):
        in_flight.append(True)
        return real_save(self, *args, **kwargs)

    def wait(self):
        if in_flight:
            handlers.append(signal.getsignal(signal.SIGTERM))
            in_flight.clear()
        return real_wait(self)

    monkeypatch.setattr(checkpointing.Checkpointer, "maybe_save", save)
    monkeypatch.setattr(checkpointing.Checkpointer, "wait", wait)
    config = tiny_config(steps=3)
    with monkeypatch.context() as m:
        m.setattr(preemption.PreemptionWatcher, "should_stop", lambda self, step: step == 2)
        trainer.train_and_evaluate(config, str(tmp_path))
    trainer.train_and_evaluate(config, str(tmp_path))  # resumes at 2 and finishes at 3
    assert len(handlers) == 2
    assert all(h not in (signal.SIG_DFL, signal.SIG_IGN, None) for h in handlers), handlers


def test_the_window_that_diverged_is_logged(tmp_path, monkeypatch):
    real = trainer.get_dataset
    monkeypatch.setattr(trainer, "get_dataset", lambda config: _PoisonedFromStep(real(config), step=2))
    with pytest.raises(trainer.DivergenceError, match="at step 2"):
        trainer.train_and_evaluate(tiny_config(steps=4), str(tmp_path))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if "train/loss" in line]
    assert [r["step"] for r in records] == [1, 2]
    finite = [all(np.isfinite(v) for k, v in r.items() if k != "step") for r in records]
    assert finite == [True, False]  # the NaN/Inf gradient norm of step 2 is on record


def test_a_run_resumes_under_another_layout_without_losing_a_step(tmp_path, monkeypatch):
    """A checkpoint saved scanned (remat "nested") resumes unrolled, with no
    --allow_config_change, and ends where an uninterrupted run ends; a workdir holding
    steps in both layouts restores its newest step in either, quarantining nothing."""
    from resnet_identity.runs import checkpointing, preemption
    from resnet_identity.training.train_state import convert_layout

    def config(**overrides):
        c = tiny_config(steps=3)
        c.model_overrides.depth = 20  # 2 repeated units a stage
        c.model_overrides.remat = "nested"
        c.checkpoint_every_steps = 1
        for k, v in overrides.items():
            c.model_overrides[k] = v
        return c

    reference = trainer.train_and_evaluate(config(), str(tmp_path / "reference"), return_state=True)["state"]
    with monkeypatch.context() as m:  # a preemption after step 2
        m.setattr(preemption.PreemptionWatcher, "should_stop", lambda self, step: step == 2)
        assert trainer.train_and_evaluate(config(), str(tmp_path / "run"))["preempted_at_step"] == 2
    resumed = trainer.train_and_evaluate(config(scan=False, remat=None), str(tmp_path / "run"), return_state=True)
    assert resumed["step"] == 3
    assert "unit1" in resumed["state"].params["stage1"]["rest"]
    as_reference = convert_layout(resumed["state"], reference)
    for a, b in zip(jax.tree.leaves(as_reference), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    history = [json.loads(line) for line in (tmp_path / "run" / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["config"]["model_overrides"]["scan"] is None  # the replaced config is on record

    checkpoints = str(tmp_path / "run" / "checkpoints")
    with checkpointing.Checkpointer(checkpoints, every_steps=1, keep=3) as checkpointer:
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), reference)
        state, step = checkpointer.restore(target, relayout=convert_layout)
    assert step == 3 and not os.path.exists(os.path.join(checkpoints, "corrupt"))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(as_reference)):
        np.testing.assert_array_equal(a, b)


def test_a_signal_during_a_save_stops_at_the_step_being_saved(tmp_path, monkeypatch):
    """A real SIGTERM while step 2's checkpoint is being written: the run stops at step 2 (no
    further step is trained), and the evaluation due there is done by the resumed run."""
    from resnet_identity.runs import checkpointing

    real_save = checkpointing.Checkpointer.maybe_save

    def save_then_signal(self, step, *args, **kwargs):
        saved = real_save(self, step, *args, **kwargs)
        if step == 2:
            signal.raise_signal(signal.SIGTERM)  # while the asynchronous write runs
        return saved

    config = tiny_config(steps=4)
    config.checkpoint_every_steps = config.eval_every_steps = 2
    with monkeypatch.context() as m:
        m.setattr(checkpointing.Checkpointer, "maybe_save", save_then_signal)
        assert trainer.train_and_evaluate(config, str(tmp_path))["preempted_at_step"] == 2
    assert os.listdir(tmp_path / "checkpoints") == ["2"]
    assert trainer.train_and_evaluate(config, str(tmp_path))["step"] == 4
    evaluated = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl") if "test/error" in line]
    assert evaluated == [2, 4]


def _final(workdir):
    with open(os.path.join(workdir, "final_metrics.json")) as f:
        return json.load(f)


def test_digits_end_to_end(tmp_path):
    config = tiny_config(steps=4)
    config.eval_batch_size = 128  # 360 test examples: 3 batches, the last padded and masked
    result = trainer.train_and_evaluate(config, str(tmp_path))
    final = _final(tmp_path)
    assert final["step"] == 4 and final["test_examples"] == 360
    assert 0 <= final["test_error"] <= 1 and np.isfinite(final["test_loss"])
    assert result["test_error"] == final["test_error"]
    assert json.load(open(tmp_path / "config.json"))["model"] == "cifar_preact20"
    assert any(p.startswith("events.out.tfevents") for p in os.listdir(tmp_path))
    from resnet_identity.runs.metric_logging import read_metrics

    series = read_metrics(str(tmp_path))
    assert sorted(series["train/loss"]) == [1, 2, 3, 4] and 3 in series["train/learning_rate"]


def test_synthetic_end_to_end_with_smoke_preset(tmp_path):
    config = _load("cifar_preact164", "smoke")
    config.model_overrides.depth = 11
    trainer.train_and_evaluate(config, str(tmp_path))
    assert _final(tmp_path)["test_examples"] == 256


def test_tfds_cifar10_end_to_end(tmp_path):
    """The CIFAR recipe on records TFDS's own builder prepared (from a tiny archive served on
    127.0.0.1, tests/cifar_archive.py), not on mock data."""
    pytest.importorskip("tensorflow_datasets")
    from tests.cifar_archive import prepare_tiny_cifar

    prepare_tiny_cifar("cifar10", tmp_path / "data", train=40, test=40)
    config = _load("cifar_resnet110", "smoke")
    config.dataset = "cifar10"
    config.data_dir = str(tmp_path / "data")
    config.model_overrides.depth = 8
    config.eval_batch_size = 24
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert _final(tmp_path / "run")["test_examples"] == 40


def test_bad_config_fails_before_compiling(tmp_path):
    config = tiny_config(steps=3)
    config.batch_size = 15
    with pytest.raises(config_lib.ConfigError, match="bn_group_size=2 does not divide batch_size=15"):
        trainer.train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "config.json")


def test_processes_sharing_a_workdir_check_it_without_tripping_over_each_other(tmp_path):
    """The processes of a multi-host run check and write one workdir at the same moment. They
    once shared one write-probe file (one removed it under the other) and read config.json
    while it was being rewritten; either failure stalled the peers in their first collective."""
    script = (
        "import sys\n"
        "from resnet_identity.training.saved_config import check_saved_config\n"
        "from resnet_identity.runs.files import check_workdir, write_atomically\n"
        "from tests.train_worker import tiny_config\n"
        "config = tiny_config(3)\n"
        "for _ in range(300):\n"
        "    check_workdir(sys.argv[1])\n"
        "    check_saved_config(sys.argv[1], config, allow_change=False)\n"
        "    if sys.argv[2] == '0':  # the main process writes, as in train_and_evaluate\n"
        "        write_atomically(sys.argv[1] + '/config.json', config.to_json(indent=2))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), str(i)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT},
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(e[-1500:] for e in errors)
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_digits_training_needs_no_tensorflow(tmp_path):
    """Embedded-data training runs with TensorFlow and TFDS made unimportable."""
    script = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['tensorflow_datasets'] = None\n"
        "from tests.train_worker import tiny_config\n"
        "from resnet_identity.training import trainer\n"
        f"trainer.train_and_evaluate(tiny_config(steps=2), {str(tmp_path)!r})\n"
        "assert 'tensorflow' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(tmp_path / "final_metrics.json")


def test_conflicting_saved_config_is_refused_unless_allowed(tmp_path):
    trainer.train_and_evaluate(tiny_config(steps=2), str(tmp_path))
    changed = _config(schedule__learning_rate=0.05)
    changed.num_train_steps = 2
    changed.schedule.boundaries = (1,)
    with pytest.raises(config_lib.ConfigError, match=r"(?s)schedule.learning_rate: 0.1 -> 0.05.*--allow_config_change"):
        trainer.train_and_evaluate(changed, str(tmp_path))
    trainer.train_and_evaluate(changed, str(tmp_path), allow_config_change=True)


def test_fields_that_only_decide_what_is_recorded_change_without_the_flag(tmp_path):
    trainer.train_and_evaluate(tiny_config(steps=2), str(tmp_path))
    changed = tiny_config(steps=2)
    changed.log_every_steps, changed.diagnostics_every_steps, changed.keep_checkpoints = 2, 2, 1
    assert trainer.train_and_evaluate(changed, str(tmp_path))["step"] == 2
    changed.seed = 1  # what is trained still binds
    with pytest.raises(config_lib.ConfigError, match=r"seed: 0 -> 1"):
        trainer.train_and_evaluate(changed, str(tmp_path))


def test_unwritable_workdir_is_reported_with_what_to_do(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="Cannot write to workdir.*is a file, not a directory. Choose another workdir"):
        trainer.train_and_evaluate(tiny_config(steps=2), str(blocker / "run"))


def test_missing_dataset_is_reported_with_what_to_do(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    config = tiny_config(steps=2)
    config.dataset = "cifar10"
    config.data_dir = str(tmp_path / "no_data")
    config.tfds_download = False
    with pytest.raises(DatasetNotPreparedError, match="cifar10"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_refused_resume_leaves_the_saved_config_as_it_was(tmp_path):
    """Even with --allow_config_change, a checkpoint of another model is refused, and the
    workdir must still accept the config that wrote it, as the error advises."""
    trainer.train_and_evaluate(tiny_config(steps=2), str(tmp_path))
    saved = (tmp_path / "config.json").read_text()
    deeper = tiny_config(steps=2)
    deeper.model_overrides.depth = 14
    with pytest.raises(trainer.checkpointing.CheckpointLayoutError, match="Resume with that run's config"):
        trainer.train_and_evaluate(deeper, str(tmp_path), allow_config_change=True)
    assert (tmp_path / "config.json").read_text() == saved
    assert not (tmp_path / "config_history.jsonl").exists()
    assert trainer.train_and_evaluate(tiny_config(steps=2), str(tmp_path))["step"] == 2
