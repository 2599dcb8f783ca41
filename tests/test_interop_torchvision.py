"""torchvision's ResNets <-> ours: parity with the real torchvision model code, export, errors.

torchvision is imported through `interop._torch.import_torchvision`: PyPI's torchvision wheel
is a CUDA build whose C extension does not load against the CPU torch wheel, and without the
two detection-op schemas it declares first, `import torchvision` fails on `torchvision::nms`
(the ResNets are pure Python and never call those ops; see `_torch.py`).

Parity is checked on random weights with every BatchNorm given random statistics, with
whole-batch BN (`bn_group_size=None`, our default) as torch computes it. Errors are
||ours - theirs|| / ||theirs||; torch's own float32 train-mode logits are ~5e-5 from its
float64 ones on ResNet-50 at 64x64 (2 x 2 values per channel in stage 4), 2.5e-5 at 128x128,
so ResNet-50 is checked at 128.
"""

import subprocess
import sys

import jax
import numpy as np
import pytest

from resnet_identity import interop, models
from resnet_identity.interop._torch import import_torchvision
from resnet_identity.training import weights as weights_lib

torchvision = import_torchvision()
import torch  # noqa: E402  (after import_torchvision, the one place that says how torch is imported)

TOLERANCE = 1e-4


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


def randomise_batch_norms(module: "torch.nn.Module", seed: int = 0) -> "torch.nn.Module":
    """Random BN scale, shift and running statistics, so that a swapped or misread tensor shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                for tensor, low, high in (
                    (layer.weight, 0.5, 1.5),
                    (layer.bias, -0.5, 0.5),
                    (layer.running_mean, -0.5, 0.5),
                    (layer.running_var, 0.5, 1.5),
                ):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return module


def to_torch(images: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def check_parity(source: str, name: str, reference: "torch.nn.Module", make_reference, image_size: int) -> dict:
    """Eval logits, train-mode logits and the running statistics after one training step,
    and the export -> `load_state_dict(strict=True)` -> logits round trip; returns the errors."""
    torch.manual_seed(0)
    reference = randomise_batch_norms(reference).eval()
    weights = interop.import_state_dict(source, name, reference.state_dict())
    model, variables = weights.create_model()  # scanned, our default layout
    images = np.random.default_rng(0).standard_normal((2, image_size, image_size, 3)).astype(np.float32)
    errors = {}
    with torch.no_grad():
        errors["eval"] = relative_error(model.apply(variables, images, train=False), reference(to_torch(images)))
        reference.train()
        theirs = reference(to_torch(images))
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    errors["train"] = relative_error(logits, theirs)
    stepped = weights_lib.Weights(
        weights.model,
        weights.model_overrides,
        {"params": variables["params"], "batch_stats": updates["batch_stats"]},
        weights.preprocessing,
        weights.class_names,
        weights.source,
    )
    exported_name, exported = interop.export_state_dict(stepped, source)
    assert exported_name == name
    for statistic in ("running_mean", "running_var"):
        errors[statistic] = max(
            relative_error(exported[key], value)
            for key, value in reference.state_dict().items()
            if key.endswith(statistic)
        )
    loaded = make_reference()
    loaded.load_state_dict({key: torch.from_numpy(np.array(value)) for key, value in exported.items()}, strict=True)
    with torch.no_grad():
        errors["round_trip"] = relative_error(
            model.apply({"params": variables["params"], "batch_stats": updates["batch_stats"]}, images, train=False),
            loaded.eval()(to_torch(images)),
        )
    print(f"{source} {name} at {image_size}x{image_size}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert all(error < TOLERANCE for error in errors.values()), errors
    return errors


@pytest.mark.parametrize("name,image_size", [("resnet18", 64), ("resnet50", 128)])
def test_parity_with_torchvision(name, image_size):
    make = getattr(torchvision.models, name)
    check_parity("torchvision", name, make(), make, image_size)


def test_scanned_and_unrolled_layouts_import_and_export_alike(tmp_path):
    reference = randomise_batch_norms(torchvision.models.resnet18())
    weights = interop.import_state_dict("torchvision", "resnet18", reference.state_dict())
    _, expected = interop.export_state_dict(weights, "torchvision")
    images = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32)
    outputs = []
    for layout in ({"scan": False}, {"scan": True, "remat": "nested"}):
        model, variables = weights.create_model(**layout)
        outputs.append(np.asarray(model.apply(variables, images, train=False)))
        relaid = weights_lib.Weights(
            weights.model,
            weights.model_overrides,
            variables,
            weights.preprocessing,
            weights.class_names,
            weights.source,
        )
        _, exported = interop.export_state_dict(relaid, "torchvision")
        assert list(exported) == list(expected)
        for key in expected:
            np.testing.assert_array_equal(exported[key], expected[key])
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)  # two programs, same numbers


def test_a_file_of_another_architecture_names_the_first_mismatched_tensor():
    resnet18 = torchvision.models.resnet18().state_dict()
    with pytest.raises(
        weights_lib.WeightsMismatchError,
        match=r"torchvision's resnet34: tensor layer1\.2\.conv1\.weight \(expected shape "
        r"\(64, 64, 3, 3\)\) is missing",
    ):
        interop.import_state_dict("torchvision", "resnet34", resnet18)
    with pytest.raises(
        weights_lib.WeightsMismatchError,
        match=r"torchvision's resnet50: tensor layer1\.0\.conv1\.weight has shape \(64, 64, 3, 3\), "
        r"expected shape \(64, 64, 1, 1\)",
    ):
        interop.import_state_dict("torchvision", "resnet50", resnet18)
    resnet18["extra.weight"] = torch.zeros(3)
    with pytest.raises(weights_lib.WeightsMismatchError, match=r"unexpected tensor extra\.weight \(shape \(3,\)\)"):
        interop.import_state_dict("torchvision", "resnet18", resnet18)


def test_the_papers_stride_placement_is_not_exported_as_torchvisions():
    shapes = weights_lib.abstract_variables(models.create_model("resnet50", num_classes=10, scan=False))
    variables = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)
    weights = weights_lib.Weights("resnet50", {}, variables, weights_lib.IMAGENET_PREPROCESSING, None, "test")
    with pytest.raises(weights_lib.WeightsError, match=r"stride_on='1x1' is a different network"):
        interop.export_state_dict(weights, "torchvision")


def _convert(*args):
    return subprocess.run(
        [sys.executable, "-m", "resnet_identity.convert", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_convert_command_round_trips_and_refuses_the_wrong_architecture(tmp_path):
    reference = randomise_batch_norms(torchvision.models.resnet18(num_classes=7))
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    done = _convert("--from=torchvision", "--model=resnet18", tmp_path / "resnet18.pth", f"--out={tmp_path / 'w'}")
    assert done.returncode == 0, done.stderr
    assert weights_lib.load_weights(tmp_path / "w").num_classes == 7
    done = _convert(
        "--to=torchvision", f"--weights={tmp_path / 'w'}", "--model=resnet18", f"--out={tmp_path / 'back.pth'}"
    )
    assert done.returncode == 0, done.stderr
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    torchvision.models.resnet18(num_classes=7).load_state_dict(back, strict=True)
    for key, value in reference.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(back[key], value, rtol=0, atol=0)

    done = _convert("--from=torchvision", "--model=resnet34", tmp_path / "resnet18.pth", f"--out={tmp_path / 'x'}")
    assert done.returncode == 1
    assert done.stderr.startswith("error: The file does not hold torchvision's resnet34: tensor layer1.2.conv1.weight")
    assert "Traceback" not in done.stderr and not (tmp_path / "x").exists()
