"""Identity-mapping diagnostics: known answers (a zeroed branch, a constant gate), scanned and
unrolled layouts alike, and the trainer's log every N steps (nothing when off)."""

import json

import jax
import numpy as np
import pytest

from resnet_identity import models
from resnet_identity.analysis import experiments
from resnet_identity.training import diagnostics, trainer
from resnet_identity.training.config import default_config

IMAGES = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))


def measures(model, variables):
    return {
        k: float(v)
        for k, v in jax.jit(lambda v, x: diagnostics.identity_measures(model, v, x, jax.random.key(0)))(
            variables, IMAGES
        ).items()
    }


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_preact20"])
def test_a_zeroed_branch_has_ratio_zero(name):
    model = models.create_model(name, num_classes=10, depth=8, zero_init_last=True)  # F(x) = 0 at the start
    found = measures(model, model.init(jax.random.key(0), IMAGES, train=False))
    assert found == {"stage1/branch_ratio": 0.0, "stage2/branch_ratio": 0.0, "stage3/branch_ratio": 0.0}


def test_the_ratio_is_the_same_scanned_and_unrolled_and_positive():
    scanned = models.create_model("cifar_preact20", num_classes=10, depth=32, remat="nested")  # 2 blocks of 2 units
    variables = scanned.init(jax.random.key(0), IMAGES, train=False)
    unrolled = scanned.clone(scan=False, remat=False)
    found = measures(scanned, variables)
    assert found == pytest.approx(measures(unrolled, models.stacked_to_unrolled(variables)), rel=1e-5)
    assert sorted(found) == ["stage1/branch_ratio", "stage2/branch_ratio", "stage3/branch_ratio"]
    assert all(v > 0 for v in found.values())


def test_a_gate_with_a_zero_kernel_is_sigmoid_of_its_bias():
    model = models.create_model(
        "cifar_resnet20", num_classes=10, depth=14, unit="exclusive_gating", unit_options={"gate_bias_init": -6.0}
    )
    variables = model.init(jax.random.key(0), IMAGES, train=False)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: np.zeros_like(a) if "gate" in str(path) and "kernel" in str(path) else a, variables["params"]
    )
    found = measures(model, {**variables, "params": params})
    for stage in (1, 2, 3):
        assert found[f"stage{stage}/gate"] == pytest.approx(1 / (1 + np.exp(6.0)), rel=1e-5)
        assert found[f"stage{stage}/branch_ratio"] > 0
    plain = models.create_model("cifar_plain20", num_classes=10, depth=8)  # no shortcut, no F: nothing
    assert measures(plain, plain.init(jax.random.key(0), IMAGES, train=False)) == {}


def test_the_trainer_logs_every_n_steps_and_nothing_when_off(tmp_path):
    config = default_config()
    config.model, config.dataset = "cifar_resnet20", "digits"
    config.model_overrides.depth = 8
    config.model_overrides.unit = "shortcut_only_gating"
    config.batch_size, config.eval_batch_size = 8, 360
    experiments.scale_budget(config, 4)
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 4
    assert config.diagnostics_every_steps == 0  # off by default
    config.diagnostics_every_steps = 2
    trainer.train_and_evaluate(config, str(tmp_path / "on"))
    records = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if any(k.startswith("diagnostics/") for k in r)]
    assert [r["step"] for r in logged] == [2, 4]
    assert set(logged[0]) == {"step"} | {
        f"diagnostics/stage{s}/{m}" for s in (1, 2, 3) for m in ("branch_ratio", "gate")
    }

    class NoLogger:
        def write(self, *args):
            raise AssertionError("logged while off")

    off = diagnostics.Diagnostics(
        0, model=None, dataset=None, logger=NoLogger(), batch_size=8, seed=0, sharding=None, replicated=None
    )
    off.maybe_log(100, state=None)
    assert not hasattr(off, "measure")  # nothing built, nothing compiled
