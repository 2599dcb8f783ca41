"""The converted-weights directory format (`resnet_identity/training/weights.py`)."""

import json

import jax
import numpy as np
import pytest

from resnet_identity import models
from resnet_identity.training import weights as weights_lib

PREPROCESSING = weights_lib.Preprocessing(resize=36, crop=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def _variables(name, **overrides):
    model = models.create_model(name, num_classes=10, **overrides)
    return model, model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)


def test_weights_round_trip_from_a_scanned_layout_into_any_layout(tmp_path):
    model, variables = _variables("cifar_preact20", scan=True, remat="nested")
    names = [f"class {i}" for i in range(10)]
    weights_lib.save_weights(
        tmp_path / "w",
        model="cifar_preact20",
        model_overrides={"scan": True, "remat": "nested"},
        variables=variables,
        preprocessing=PREPROCESSING,
        class_names=names,
        source="test",
    )
    loaded = weights_lib.load_weights(tmp_path / "w")
    assert (loaded.model, loaded.model_overrides, loaded.class_names, loaded.source, loaded.num_classes) == (
        "cifar_preact20",
        {},
        names,
        "test",
        10,
    )
    assert loaded.preprocessing.to_json() == PREPROCESSING.to_json()
    assert "unit0" in loaded.variables["params"]["stage1"]["rest"]  # stored unrolled
    images = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    expected = model.apply(variables, images, train=False)
    # Back in the layout they were saved from, the weights are the same bits.
    _, same_layout = loaded.create_model(scan=True, remat="nested")
    jax.tree.map(np.testing.assert_array_equal, same_layout, variables)
    # Another layout is another program, equal up to float32 rounding (the suite compiles at
    # XLA's lowest backend level, where scanned and unrolled fusions round differently).
    for layout in ({}, {"scan": False}, {"scan": True, "remat": "block"}):
        rebuilt, rebuilt_variables = loaded.create_model(**layout)
        np.testing.assert_allclose(
            rebuilt.apply(rebuilt_variables, images, train=False), expected, rtol=1e-5, atol=1e-6
        )


def test_saving_weights_of_another_architecture_names_the_first_mismatched_tensor(tmp_path):
    _, variables = _variables("cifar_preact20")
    with pytest.raises(weights_lib.WeightsMismatchError, match=r"cifar_preact32: tensor params/stage1/rest/unit2/"):
        weights_lib.save_weights(
            tmp_path / "w",
            model="cifar_preact32",
            model_overrides={},
            variables=variables,
            preprocessing=PREPROCESSING,
            class_names=None,
            source="test",
        )
    assert not (tmp_path / "w").exists()
    _, wide = _variables("cifar_resnet20")
    with pytest.raises(
        weights_lib.WeightsMismatchError, match=r"tensor params/fc/bias has shape \(20,\), expected \(10,\)"
    ):
        weights_lib.check_variables(
            jax.tree.map(lambda a: np.zeros(a.shape[:-1] + (a.shape[-1] * 2,)), wide),
            weights_lib.abstract_variables(models.create_model("cifar_resnet20", num_classes=10)),
            model="cifar_resnet20",
        )


def test_a_directory_that_is_not_weights_says_so(tmp_path):
    with pytest.raises(weights_lib.WeightsError, match="no such directory"):
        weights_lib.load_weights(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(weights_lib.WeightsError, match="has no weights.json"):
        weights_lib.load_weights(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "weights.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(weights_lib.WeightsError, match="is not a resnet_identity.training.weights version 1 file"):
        weights_lib.load_weights(tmp_path / "other")


def test_run_weights_are_the_checkpoints_in_the_runs_model_and_preprocessing(tmp_path):
    from resnet_identity.training import trainer
    from tests.train_worker import tiny_config

    config = tiny_config(2)
    config.model_overrides.remat = "nested"
    result = trainer.train_and_evaluate(config, str(tmp_path / "run"), return_state=True)
    loaded = weights_lib.load_run_weights(tmp_path / "run")
    assert (loaded.model, loaded.model_overrides, loaded.source) == (
        "cifar_preact20",
        {"depth": 8, "bn_group_size": 2},
        f"run:{tmp_path / 'run'}@2",
    )
    assert loaded.class_names == [str(i) for i in range(10)]
    assert (loaded.preprocessing.resize, loaded.preprocessing.crop) == (32, 32)
    state = result["state"]
    unrolled = models.stacked_to_unrolled({"params": state.params, "batch_stats": state.batch_stats})
    jax.tree.map(np.testing.assert_array_equal, loaded.variables, unrolled)
    # predict --workdir's path: any image through the run's preprocessing and network
    from resnet_identity import predict
    from resnet_identity.data import get_dataset

    np.testing.assert_allclose(loaded.preprocessing.mean, get_dataset(config).normalization.mean / 255.0, rtol=1e-6)
    image = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    inputs = predict.preprocess(image, loaded.preprocessing)[None]
    probabilities, _ = predict.forward(loaded, inputs)
    model = models.create_model("cifar_preact20", num_classes=10, depth=8, bn_group_size=2)
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, inputs, train=False)
    np.testing.assert_allclose(probabilities, jax.nn.softmax(logits), rtol=1e-5, atol=1e-6)
    with pytest.raises(weights_lib.WeightsError, match=r"no checkpoint at step 5; it has steps \[2\]"):
        weights_lib.load_run_weights(tmp_path / "run", step=5)
    with pytest.raises(weights_lib.WeightsError, match="has no config.json"):
        weights_lib.load_run_weights(tmp_path)
