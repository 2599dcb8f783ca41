"""Fine-tuning (`config.init_from`) on a generated folder dataset: from a run's checkpoint of
another number of classes, what is loaded equals the source and the classifier starts afresh;
a mismatch names its tensor. Every path is relative, as the README writes them: init_from and
the read-only commands read the runs from the current directory.

The converted-weights source (torchvision's resnet18 through `resnet_identity.interop`) runs
when that package is present, with the `finetune` preset on 36 images.

The read-only commands on a fine-tuned run, as the docs type them, are checked in
tests/test_docs_commands.py on the docs' own run: `evaluate --workdir` agrees with the run's
final evaluation, `predict --workdir --json` names the run's classes, and `convert --to=torchvision
--workdir` loads strictly into torchvision and gives the run's logits."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from folder_images import write_folder

from resnet_identity.training import config_migration, init_from, recipes, trainer
from resnet_identity.training import weights as weights_lib

pytest.importorskip("tensorflow")


def _config(**fields):
    return config_migration.as_config(
        {  # old-style schedule names: valid in any version (RENAMED)
            "model": "cifar_resnet20",
            "batch_size": 4,
            "eval_batch_size": 4,
            "num_train_steps": 2,
            "lr_boundaries": [1],
            "warmup_steps": 0,
            "log_every_steps": 2,
            "eval_every_steps": 2,
            "checkpoint_every_steps": 2,
            **fields,
        }
    )


def test_fine_tune_a_runs_checkpoint_on_a_folder_of_other_classes(tmp_path, capsys, monkeypatch):
    # Every path relative, as the README writes them: the folder, init_from, and the read-only
    # commands' --workdir, from the run's own directory.
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "images")
    trainer.train_and_evaluate(
        _config(dataset="synthetic", synthetic={"image_size": 8, "num_classes": 10}, eval_batch_size=256), "source"
    )
    config = _config(dataset="folder", folder={"path": "images", "image_size": 32}, init_from="source")
    trainer.train_and_evaluate(config, "tuned")
    out = capsys.readouterr().out
    assert "init_from: loaded 95 tensors" in out  # all 97 but the classifier's two
    assert "initialised afresh: params/fc/bias (3,) (source (10,)), params/fc/kernel (64, 3) (source (64, 10))" in out
    trainer.train_and_evaluate(config, "tuned")  # a resumed run ignores init_from
    out = capsys.readouterr().out
    assert "resuming at step 2" in out and "init_from" not in out

    # What was loaded equals the source; the classifier is the fresh state's.
    _, source, _ = init_from.read_run("source")
    state = _fresh_state(config)
    loaded = init_from.initialise_from(
        state, config.init_from, model=config.model, overrides=config.model_overrides.to_dict()
    )
    ours = weights_lib.flatten(jax.device_get({"params": loaded.params, "batch_stats": loaded.batch_stats}))
    theirs = weights_lib.flatten(source)
    for name, value in ours.items():
        if name in init_from.CLASSIFIER:
            np.testing.assert_array_equal(value, weights_lib.flatten(jax.device_get(state.params))[name[7:]])
        else:
            np.testing.assert_array_equal(value, theirs[name])

    # The class names come from the folder: with it gone, exporting the run is one line, no traceback.
    (tmp_path / "images").rename(tmp_path / "images.moved")
    exported = _command("convert", "--to=torchvision", "--workdir=tuned", "--out=tuned.pth", cwd=tmp_path)
    assert exported.returncode == 1 and "Traceback" not in exported.stderr, exported.stderr[-3000:]
    assert exported.stderr.strip().startswith("error:") and "Put the data back" in exported.stderr
    assert not (tmp_path / "tuned.pth").exists()


def _command(name, *args, cwd):
    return subprocess.run(
        [sys.executable, "-m", f"resnet_identity.{name}", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def _fresh_state(config):
    import functools

    from resnet_identity import models
    from resnet_identity.training import parallel
    from resnet_identity.training.train_state import create_train_state

    model = models.create_model(config.model, num_classes=3)
    tx, _ = trainer.build_optimizer(config)
    init = jax.jit(
        functools.partial(create_train_state, model, tx, 32), out_shardings=parallel.replicated(parallel.create_mesh())
    )
    return init(jax.random.key(5))


def test_a_mismatched_model_names_the_first_tensor():
    source = {
        "params": {"stem": {"conv": {"kernel": np.zeros((3, 3, 3, 16))}}, "fc": {"bias": np.zeros(10)}},
        "batch_stats": {},
    }
    target = {
        "params": {"stem": {"conv": {"kernel": np.zeros((3, 3, 3, 32))}}, "fc": {"bias": np.zeros(3)}},
        "batch_stats": {},
    }
    with pytest.raises(init_from.InitFromError, match=r"tensor params/stem/conv/kernel has shape \(3, 3, 3, 16\)"):
        init_from.merge(source, target)
    merged, loaded, fresh = init_from.merge(
        {**source, "params": {**source["params"], "stem": target["params"]["stem"]}}, target
    )
    assert loaded == ["params/stem/conv/kernel"] and fresh == ["params/fc/bias (3,) (source (10,))"]


def test_fine_tune_converted_torchvision_weights_with_the_finetune_preset_on_36_images(tmp_path, capsys, monkeypatch):
    interop = pytest.importorskip("resnet_identity.interop")
    from resnet_identity.interop._torch import import_torchvision

    torchvision = import_torchvision()
    state_dict = torchvision.models.resnet18().state_dict()
    weights = interop.import_state_dict("torchvision", "resnet18", state_dict)
    weights_lib.save_weights(
        tmp_path / "weights",
        model=weights.model,
        model_overrides=weights.model_overrides,
        variables=weights.variables,
        preprocessing=weights.preprocessing,
        class_names=None,
        source="torchvision:resnet18 (random)",
    )
    # The documented command's config (configs/imagenet_resnet50.py:finetune, whose batch of 16
    # fits a folder of 36 images, 24 of them for training), with resnet18 at 32x32 to keep it short.
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "photos", per_class=(8, 4))
    config = recipes.imagenet("resnet18", "finetune")
    config.folder.path = "photos"
    config.folder.image_size = 32
    config.init_from = "weights"
    trainer.train_and_evaluate(config, "tuned")
    out = capsys.readouterr().out
    assert "from weights" in out and "params/fc/kernel (512, 3) (source (512, 1000))" in out
    assert "step 10/10" in out  # one step of 16 per epoch
    loaded = init_from.initialise_from(
        _fresh_state(config), config.init_from, model=config.model, overrides=config.model_overrides.to_dict()
    )
    conv = np.asarray(jax.device_get(loaded.params["stem"]["conv"]["kernel"]))
    np.testing.assert_array_equal(conv, weights.variables["params"]["stem"]["conv"]["kernel"])
