"""v1 Fig. 7's layer responses, on networks with a known answer and on a real training run."""

import jax
import numpy as np
import pytest

from resnet_identity import models
from resnet_identity.analysis import experiments, layer_response, signal
from resnet_identity.training import trainer
from resnet_identity.training.config import default_config

LAYERS_OF_RESNET8 = ["stem/bn"] + [f"stage{s}/{u}/bn{i}" for s in (1, 2, 3) for u in ("first",) for i in (1, 2)]


@pytest.fixture(scope="module")
def resnet8():
    model = models.create_model("cifar_resnet20", num_classes=10, depth=8, scan=False)
    variables = signal.init_variables(model)
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    return model, variables, images


def with_bn(variables, name: str, factor: float):
    """`variables` with BN `name`'s gamma and beta multiplied by `factor`."""
    params = jax.tree.map(np.array, variables["params"])
    node = params
    for part in name.split("/"):
        node = node[part]
    node["scale"], node["bias"] = factor * node["scale"], factor * node["bias"]
    return {**variables, "params": params}


def test_every_branch_layer_is_read_in_network_order(resnet8):
    responses = layer_response.layer_responses(*resnet8)
    assert list(responses.names) == LAYERS_OF_RESNET8  # one BN per 3x3 conv: 1 + 2 per unit
    assert np.all(responses.std > 0)
    assert list(responses.sorted()) == sorted(responses.std, reverse=True)


def test_a_zeroed_branch_responds_with_zero_std(resnet8):
    model, variables, images = resnet8
    zeroed = with_bn(variables, "stage2/first/bn2", 0.0)  # F(x) = 0 in that unit: y = h(x)
    responses = layer_response.layer_responses(model, zeroed, images)
    assert responses.std[LAYERS_OF_RESNET8.index("stage2/first/bn2")] == 0.0
    assert np.all(np.delete(responses.std, LAYERS_OF_RESNET8.index("stage2/first/bn2")) > 0)


def test_scaling_a_bn_scales_its_response_exactly(resnet8):
    model, variables, images = resnet8
    before = layer_response.layer_responses(model, variables, images).std
    after = layer_response.layer_responses(model, with_bn(variables, "stage1/first/bn1", 3.0), images).std
    layer = LAYERS_OF_RESNET8.index("stage1/first/bn1")
    np.testing.assert_allclose(after[:layer], before[:layer])  # upstream: untouched
    np.testing.assert_allclose(after[layer], 3 * before[layer], rtol=1e-5)


def test_plain_and_preact_nets_and_the_scanned_layout():
    images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    plain = models.create_model("cifar_plain20", num_classes=10, depth=8)  # scanned: converted to unrolled
    variables = plain.init(jax.random.key(0), images, train=False)
    assert len(layer_response.layer_responses(plain, variables, images).std) == 7
    preact = models.create_model("cifar_preact20", num_classes=10, depth=14, scan=False)
    responses = layer_response.layer_responses(preact, signal.init_variables(preact), images)
    # A bare stem, then two BNs per unit; the head's final BN-ReLU is not a layer's response.
    assert len(responses.std) == 12 and "final_bn" not in responses.names


def test_responses_of_a_training_run(tmp_path):
    config = default_config()
    config.model, config.dataset = "cifar_plain20", "digits"
    config.model_overrides.depth = 8
    config.batch_size, config.eval_batch_size = 8, 360
    experiments.scale_budget(config, 2)
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
    trainer.train_and_evaluate(config, str(tmp_path))
    responses, model = layer_response.run_responses(tmp_path, num_images=16)
    assert len(responses.std) == 7 and np.all(np.isfinite(responses.std)) and model.stage_sizes == (1, 1, 1)
