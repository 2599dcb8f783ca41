"""timm's BatchNorm pre-activation resnetv2 <-> our preact_resnet with timm's stem: parity with
the real timm model code, the named stem, and what cannot be converted.

timm imports torchvision, so it is imported through `interop._torch.import_timm`, which first
declares the two detection-op schemas that the CUDA torchvision wheel's unloadable C extension
would define (see tests/test_interop_torchvision.py and `_torch.py`).
"""

import jax
import numpy as np
import pytest

from resnet_identity import interop, models
from resnet_identity.interop._torch import import_timm
from resnet_identity.training import weights as weights_lib
from tests.test_interop_torchvision import check_parity, randomise_batch_norms, to_torch

timm = import_timm()
import torch  # noqa: E402  (after import_timm)


def test_parity_with_timm_resnetv2_50():
    make = lambda: timm.create_model("resnetv2_50")
    check_parity("timm", "resnetv2_50", make(), make, 64)


def test_timm_weights_are_our_preact_net_with_the_timm_stem_and_its_preprocessing():
    weights = interop.import_state_dict("timm", "resnetv2_50", timm.create_model("resnetv2_50").state_dict())
    assert (weights.model, weights.model_overrides) == ("preact_resnet50", {"stem": "timm", "stride_on": "3x3"})
    model, _ = weights.create_model()
    assert model.stem is models.TimmStem
    cfg = timm.get_pretrained_cfg("resnetv2_50")  # timm's eval transform: shorter side 224 / crop_pct
    assert (weights.preprocessing.crop, weights.preprocessing.resize, weights.preprocessing.interpolation) == (
        224,
        int(224 / cfg.crop_pct),
        cfg.interpolation,
    )
    assert len(weights.class_names) == 1000


def test_the_timm_stem_pools_the_unactivated_conv_output():
    """conv7x7/2 then max-pool, no BN-ReLU: a negative maximum survives the pool (padding is
    -inf, as in torch), and stage 1's first unit pre-activates both of its paths."""
    model = models.create_model("preact_resnet50", num_classes=3, stem="timm", stride_on="3x3", scan=False)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 64, 64, 3)), train=False))
    assert "bn" not in variables["params"]["stem"]
    assert "bn1" in variables["params"]["stage1"]["first"]  # the pre-activation the ImageNet stem supplies
    stem = models.TimmStem(features=2, pre_activation=True, norm=None)
    images = -np.ones((1, 4, 4, 1), np.float32)
    params = {"params": {"conv": {"kernel": np.ones((7, 7, 1, 2), np.float32)}}}
    out = np.asarray(stem.apply(params, images))
    assert out.shape == (1, 1, 1, 2) and (out < 0).all()


def test_what_timm_cannot_hold_is_refused_with_the_reason():
    with pytest.raises(weights_lib.WeightsError, match=r"Unsupported timm model 'resnetv2_18'"):
        interop.import_state_dict("timm", "resnetv2_18", {})
    shapes = weights_lib.abstract_variables(models.create_model("preact_resnet50", num_classes=10, scan=False))
    variables = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)
    papers = weights_lib.Weights("preact_resnet50", {}, variables, weights_lib.IMAGENET_PREPROCESSING, None, "test")
    with pytest.raises(weights_lib.WeightsError, match=r"cannot be exported to timm"):
        interop.export_state_dict(papers, "timm")


def test_timm_safetensors_import_and_export(tmp_path):
    from safetensors.torch import save_file

    reference = randomise_batch_norms(timm.create_model("resnetv2_50", num_classes=5)).eval()
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
    interop.import_file("timm", "resnetv2_50", tmp_path / "model.safetensors", tmp_path / "w")
    name = interop.export_file(weights_lib.load_weights(tmp_path / "w"), "timm", tmp_path / "back.pth")
    assert name == "resnetv2_50"
    loaded = timm.create_model("resnetv2_50", num_classes=5)
    loaded.load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True), strict=True)
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(
            loaded.eval()(to_torch(images)).numpy(), reference(to_torch(images)).numpy(), rtol=0, atol=0
        )
