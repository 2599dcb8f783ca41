"""Starting a run from another's weights (`training/init_from.py`): every tensor is taken from
the source whatever its layout, a classifier of another class count starts afresh, and a
source of another network is refused naming the setting to change, before the state is touched."""

import jax
import numpy as np
import pytest

from resnet_identity import models
from resnet_identity.training import config as config_lib
from resnet_identity.training import init_from
from resnet_identity.training import weights as weights_lib
from tests.train_worker import tiny_config


def _random_variables(name, num_classes, seed, **overrides):
    """`params` and `batch_stats` of the model, random (no compiled init)."""
    model = models.create_model(name, num_classes=num_classes, **overrides)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False))
    rng = np.random.default_rng(seed)
    return {
        collection: jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), abstract[collection])
        for collection in weights_lib.COLLECTIONS
    }


def test_a_scanned_ten_class_source_fills_an_unrolled_three_class_model_but_its_classifier():
    source = _random_variables("cifar_preact164", 10, seed=1, depth=47, remat="nested")
    target = _random_variables("cifar_preact164", 3, seed=2, depth=47, scan=False)
    merged, loaded, fresh = init_from.merge(source, target)

    assert jax.tree.structure(merged) == jax.tree.structure(target)  # laid out as the model is
    assert [a.shape for a in jax.tree.leaves(merged)] == [a.shape for a in jax.tree.leaves(target)]
    ours, theirs, before = (weights_lib.flatten(models.stacked_to_unrolled(tree)) for tree in (merged, source, target))
    assert sorted(loaded) == sorted(set(ours) - set(init_from.CLASSIFIER))
    for name in loaded:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    features = before["params/fc/kernel"].shape[0]
    assert sorted(fresh) == [
        "params/fc/bias (3,) (source (10,))",
        f"params/fc/kernel ({features}, 3) (source ({features}, 10))",
    ]
    for name in init_from.CLASSIFIER:  # as initialised, not the source's
        np.testing.assert_array_equal(ours[name], before[name], err_msg=name)


def _save(directory, model, **overrides):
    weights_lib.save_weights(
        directory,
        model=model,
        model_overrides=overrides,
        variables=_random_variables(model, 10, seed=0, **overrides),
        preprocessing=weights_lib.Preprocessing(resize=32, crop=32, mean=(0.5,) * 3, std=(0.25,) * 3),
        class_names=None,
        source="test",
    )


def _initialise(state, config):
    """`initialise_from` with the fields of `config` the trainer passes it."""
    return init_from.initialise_from(
        state,
        config.init_from,
        step=config.init_from_step,
        model=config.model,
        overrides=config_lib.model_kwargs(config),
    )


def test_a_source_of_another_network_is_refused_naming_what_to_set(tmp_path):
    config = tiny_config(steps=2)  # cifar_preact20 at depth 8
    untouched = object()  # the checks come before the state is read
    assert _initialise(untouched, config) is untouched  # no init_from: nothing to do

    (tmp_path / "empty").mkdir()
    config.init_from = str(tmp_path / "empty")
    with pytest.raises(init_from.InitFromError, match="is not a run's workdir .* nor a weights directory"):
        _initialise(untouched, config)

    _save(tmp_path / "v1", "cifar_resnet20", depth=8)
    config.init_from = str(tmp_path / "v1")
    with pytest.raises(
        init_from.InitFromError, match=r"a cifar_resnet20; this run's model is cifar_preact20\. Set --config.model"
    ):
        _initialise(untouched, config)

    _save(tmp_path / "deeper", "cifar_preact20", depth=14)
    config.init_from = str(tmp_path / "deeper")
    with pytest.raises(
        init_from.InitFromError, match=r"model_overrides\.depth=14; this run has 8.*--config\.model_overrides\.depth=14"
    ):
        _initialise(untouched, config)
    config.init_from_step = 2
    with pytest.raises(init_from.InitFromError, match="init_from_step is for a run's workdir"):
        _initialise(untouched, config)
