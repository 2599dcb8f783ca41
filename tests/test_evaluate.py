"""`python -m resnet_identity.evaluate` on converted weights and a generated folder dataset: each
crop mode's top-1 and top-5 error and loss, checked against a direct forward pass over the same
crops; the eval_*.json files; a bad --crops as one line and exit status 1."""

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from folder_images import write_folder

from resnet_identity import models
from resnet_identity.data import get_dataset
from resnet_identity.training import weights as weights_lib

pytest.importorskip("tensorflow")

CLASSES = tuple(f"class{i}" for i in range(7))  # more than five, so that top-5 can err
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    write_folder(root / "images", per_class=(1, 2), classes=CLASSES)
    model = models.create_model("cifar_resnet20", num_classes=len(CLASSES))
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(
            lambda v: v + 0.1 * jax.random.uniform(jax.random.key(1), v.shape), variables["batch_stats"]
        ),
    }
    weights_lib.save_weights(
        root / "weights",
        model="cifar_resnet20",
        model_overrides={},
        variables=variables,
        preprocessing=weights_lib.Preprocessing(resize=40, crop=32, mean=MEAN, std=STD, interpolation="bilinear"),
        class_names=list(CLASSES),
        source="test: random",
    )
    config = root / "config.py"
    config.write_text(
        "from resnet_identity.training.config import default_config\n\n\ndef get_config():\n"
        "    c = default_config()\n    c.dataset = 'folder'\n"
        f"    c.folder.path = {str(root / 'images')!r}\n    c.folder.image_size = 32\n"
        "    c.model = 'cifar_resnet20'\n    c.batch_size = 4\n    c.eval_batch_size = 4\n    return c\n"
    )
    return root, model, variables


def _evaluate(*args):
    return subprocess.run(
        [sys.executable, "-m", "resnet_identity.evaluate", *args], capture_output=True, text=True, timeout=600
    )


def test_each_crop_mode_matches_a_direct_forward_pass(setup):
    root, model, variables = setup
    result = _evaluate(
        f"--weights={root / 'weights'}",
        "--model=cifar_resnet20",
        f"--config={root / 'config.py'}",
        "--crops=32,46,10crop",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "top-1 error" in result.stdout and "top-5 error" in result.stdout

    dataset = get_dataset({"dataset": "folder", "folder": {"path": str(root / "images"), "image_size": 32}})
    # The weights' preprocessing: 32 from a shorter side of 40 (not 37), bilinear.
    dataset = dataclasses.replace(dataset, eval_shorter=40, eval_interpolation="bilinear")
    for crop in (32, 46, "10crop"):
        saved = json.loads((root / "weights" / f"eval_weights_{crop}.json").read_text())
        batches = list(dataset.eval_batches(global_batch_size=14, crop=crop))
        images = np.concatenate([b["image"][b["mask"]] for b in batches]).astype(np.float32)
        labels = np.concatenate([b["label"][b["mask"]] for b in batches])
        views = images.reshape((-1, *images.shape[-3:]))
        inputs = (views / 255.0 - np.asarray(MEAN)) / np.asarray(STD)  # the weights' normalisation
        logits = np.asarray(model.apply(variables, inputs, train=False), np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs = (probs / probs.sum(-1, keepdims=True)).reshape(len(labels), -1, len(CLASSES)).mean(1)
        label_probs = probs[np.arange(len(labels)), labels]
        top1 = np.mean(probs.argmax(-1) != labels)
        top5 = np.mean((probs > label_probs[:, None]).sum(-1) >= 5)
        assert saved["examples"] == len(labels) == 14
        assert saved["top1_error"] == pytest.approx(top1, abs=1e-9)
        assert saved["top5_error"] == pytest.approx(top5, abs=1e-9)
        assert saved["loss"] == pytest.approx(-np.log(label_probs).mean(), rel=1e-4)


def test_a_bad_crop_is_one_line_and_exit_1(setup):
    root, _, _ = setup
    result = _evaluate(
        f"--weights={root / 'weights'}", "--model=cifar_resnet20", f"--config={root / 'config.py'}", "--crops=99"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --crops [99] not offered by folder; choose from 32, 46, 10crop."
    ]
    assert "Traceback" not in result.stderr


def test_an_output_dir_whose_parent_is_missing_is_one_line_before_any_work(setup, tmp_path):
    root, _, _ = setup
    missing = tmp_path / "missing" / "results"
    result = _evaluate(
        f"--weights={root / 'weights'}",
        "--model=cifar_resnet20",
        f"--config={root / 'config.py'}",
        f"--output_dir={missing}",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --output_dir={missing}: its parent folder {missing.parent} does not exist; create it or choose "
        "another folder."
    ]
    assert result.stdout == ""  # nothing was evaluated
