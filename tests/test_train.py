"""End-to-end training: each data source, configs and presets, sharding and processes."""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from resnet_identity.training import config as config_lib
from resnet_identity.training import trainer
from tests.train_worker import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "train_worker.py")
CONFIGS = [
    "cifar_preact1001",
    "cifar_preact164",
    "cifar_resnet110",
    "cifar_resnet164",
    "imagenet_preact200",
    "imagenet_resnet50",
    "quickstart",
]


def _load(name, preset=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_validates_with_its_presets(name):
    config = _load(name)
    config_lib.validate(config)
    for field in (
        "model",
        "model_overrides",
        "dataset",
        "batch_size",
        "num_train_steps",
        "schedule",
        "optimizer",
        "seed",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
    ):
        assert field in config
    smoke = _load(name, "smoke")
    config_lib.validate(smoke)
    assert smoke.num_train_steps <= 10 and smoke.batch_size <= 8
    assert "python train.py --config=configs/" in open(os.path.join(ROOT, "configs", f"{name}.py")).read()


def test_cifar_recipe_is_the_papers():
    c = _load("cifar_preact1001")
    optimizer, schedule = c.optimizer, c.schedule
    assert (c.batch_size, c.model_overrides.bn_group_size, optimizer.momentum, optimizer.weight_decay) == (
        128,
        64,
        0.9,
        1e-4,
    )
    assert (schedule.name, schedule.learning_rate, tuple(schedule.boundaries), schedule.decay_factor) == (
        "step",
        0.1,
        (32_000, 48_000),
        0.1,
    )
    assert c.num_train_steps == 64_000
    assert (schedule.warmup, schedule.warmup_steps, schedule.warmup_learning_rate) == ("constant", 400, 0.01)
    assert (optimizer.nesterov, optimizer.decay_bn_and_bias, c.label_smoothing) == (False, False, 0.0)
    assert c.normalization == "per_pixel_mean"  # v1 Sec. 4.2; per-channel is the released code's
    released = _load("cifar_preact1001", "released_code")
    assert (released.batch_size, released.optimizer.nesterov, released.num_epochs) == (64, True, 200.0)
    assert released.optimizer.decay_bn_and_bias  # the released code decays BN and biases too
    assert (tuple(released.schedule.boundaries), released.schedule.boundaries_unit) == ((80, 121), "epochs")
    assert released.schedule.warmup_steps == 0
    assert config_lib.total_steps(released) == 200 * 782
    assert released.normalization == "per_channel"
    imagenet = _load("imagenet_preact200")
    assert not imagenet.optimizer.decay_bn_and_bias
    assert (tuple(imagenet.schedule.boundaries), imagenet.schedule.boundaries_unit) == ((30, 60), "epochs")
    assert (imagenet.batch_size, imagenet.model_overrides.bn_group_size, tuple(imagenet.eval_crops)) == (
        256,
        32,
        (224, 320),
    )


def test_cifar100_is_one_override_away():
    c = _load("cifar_preact164")
    c.dataset = "cifar100"
    config_lib.validate(c)


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


# ------------------------------------------------------------------ devices and processes


def _run_worker(workdir, out, *extra, env=None, timeout=600):
    cmd = [sys.executable, WORKER, str(workdir), str(out), *extra]
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def _load_npz(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path):
    """Same global batch and BN groups of 2: sharding over 8 devices changes nothing but rounding."""
    one = _run_worker(tmp_path / "one", tmp_path / "one.npz")
    eight = _run_worker(
        tmp_path / "eight", tmp_path / "eight.npz", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert eight.returncode == 0, eight.stderr[-3000:]
    assert "8 device(s)" in eight.stdout and "1 device(s)" in one.stdout
    a, b = _load_npz(tmp_path / "one.npz"), _load_npz(tmp_path / "eight.npz")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=2e-4, atol=2e-5, err_msg=key)
    loss = lambda out: [json.loads(line)["train/loss"] for line in open(out / "metrics.jsonl") if "train/loss" in line]
    np.testing.assert_allclose(loss(tmp_path / "one"), loss(tmp_path / "eight"), rtol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.mark.slow
def test_two_processes_agree(tmp_path):
    """Two local processes joined by jax.distributed train three steps on one global batch."""
    port = str(_free_port())
    procs = []
    for pid in range(2):
        cmd = [
            sys.executable,
            WORKER,
            str(tmp_path / "multi"),
            str(tmp_path / f"p{pid}.npz"),
            "--process_id",
            str(pid),
            "--num_processes",
            "2",
            "--port",
            port,
        ]
        procs.append(
            subprocess.Popen(
                cmd, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n\n".join(
        f"process {i} exited {p.returncode}:\n{err[-2500:]}" for i, (p, (_, err)) in enumerate(zip(procs, outputs))
    )
    assert "2 device(s)" in outputs[0][0]
    single = _run_worker(tmp_path / "single", tmp_path / "single.npz")
    assert single.returncode == 0, single.stderr[-3000:]
    p0, p1, ref = (_load_npz(tmp_path / f) for f in ("p0.npz", "p1.npz", "single.npz"))
    for key in p0:
        np.testing.assert_array_equal(p0[key], p1[key], err_msg=key)  # replicated: bitwise equal
        np.testing.assert_allclose(p0[key], ref[key], rtol=2e-4, atol=2e-5, err_msg=key)


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


def test_imagenet_recipe_augments_as_the_paper_and_presets_fb_resnet_torch():
    from resnet_identity.training import recipes

    paper = recipes.imagenet("resnet50")
    augment = paper.imagenet2012
    assert (augment.train_crop, augment.pca_lighting, augment.color_jitter) == ("scale", 0.1, 0.0)
    fb = _load("imagenet_resnet50", "fb_resnet_torch")
    config_lib.validate(fb)
    assert (fb.imagenet2012.train_crop, fb.imagenet2012.color_jitter, fb.imagenet2012.pca_lighting) == (
        "scale_aspect",
        0.4,
        0.1,
    )
    assert (fb.normalization, fb.num_epochs) == ("per_channel", 90.0)
    with pytest.raises(ValueError, match="use it with ImageNet configs"):
        recipes.cifar("cifar_preact164", "fb_resnet_torch")
    paper.imagenet2012.train_crop = "random_sized"
    with pytest.raises(
        config_lib.ConfigError,
        match=r"imagenet2012\.train_crop='random_sized' must be 'scale' \(v1: .*\) or 'scale_aspect'",
    ):
        config_lib.validate(paper)


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, False),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"SLURM_NTASKS": "4"}, True),
        ({"SLURM_NTASKS": "1"}, False),  # a one-task SLURM job is single-process
        ({"TPU_WORKER_HOSTNAMES": "a,b", "SLURM_NTASKS": "1"}, False),
    ],
)
def test_multi_host_environments_start_jax_distributed(monkeypatch, env, expected):
    import jax

    from resnet_identity.training import parallel

    for key in parallel._MULTIHOST_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda: calls.append("init"))
    assert parallel.maybe_initialize_distributed(None) is expected  # no --distributed flag: the environment decides
    assert calls == (["init"] if expected else [])
    assert parallel.maybe_initialize_distributed(False) is False  # --nodistributed: never, whatever the environment
    assert calls == (["init"] if expected else [])
    assert parallel.maybe_initialize_distributed(True) and calls[-1:] == ["init"]
