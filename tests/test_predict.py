"""predict: converted torchvision weights classify a generated image as torchvision does.

The reference is the real torchvision model given torchvision's own `IMAGENET1K_V1`
transforms (resize 256 bilinear, centre 224 crop, ImageNet mean and std) on the same file;
predict itself decodes with Pillow and needs no torch. torchvision is imported through
`interop._torch.import_torchvision` (see tests/test_interop_torchvision.py for why).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from resnet_identity import interop, predict
from resnet_identity.data.images import read_image
from resnet_identity.interop._torch import import_torchvision
from resnet_identity.training import weights as weights_lib
from tests.test_interop_torchvision import randomise_batch_norms

torchvision = import_torchvision()
import torch  # noqa: E402  (after import_torchvision)


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "resnet_identity.predict", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A resnet18 with random weights and BN statistics, its classifier scaled so that the top
    classes stand apart, converted to a weights directory; and two images (PNG, JPEG)."""
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    reference = randomise_batch_norms(torchvision.models.resnet18()).eval()
    with torch.no_grad():
        reference.fc.weight.mul_(30.0)
    torch.save(reference.state_dict(), root / "resnet18.pth")
    interop.import_file("torchvision", "resnet18", root / "resnet18.pth", root / "weights")
    rows, columns = np.mgrid[0:300, 0:400]
    smooth = np.stack([rows / 300, columns / 400, (rows + columns) / 700], -1)
    noise = np.random.default_rng(0).random((300, 400, 3))
    Image.fromarray((255 * (0.7 * smooth + 0.3 * noise)).astype(np.uint8)).save(root / "wide.png")
    Image.fromarray((255 * noise[:, :250]).astype(np.uint8)).save(root / "tall.jpg", quality=95)
    return reference, root


def _torch_outputs(reference, paths):
    transform = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    with torch.no_grad():
        logits = reference(batch)
        features = torch.flatten(
            reference.avgpool(
                reference.layer4(
                    reference.layer3(
                        reference.layer2(
                            reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(batch)))))
                        )
                    )
                )
            ),
            1,
        )
    return torch.softmax(logits, -1).numpy(), features.numpy()


def test_predict_json_matches_the_torchvision_model(converted):
    reference, root = converted
    images = [root / "wide.png", root / "tall.jpg"]
    done = _run(f"--weights={root / 'weights'}", "--model=resnet18", "--json", *images)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    probabilities, _ = _torch_outputs(reference, images)
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    assert [line["image"] for line in lines] == [str(path) for path in images]
    for line, expected in zip(lines, probabilities):
        top = np.argsort(-expected)[:5]
        assert expected[top[0]] > 0.2 and [index for index, _, _ in line["top5"]] == top.tolist()
        assert [name for _, name, _ in line["top5"]] == [_IMAGENET_CATEGORIES[i] for i in top]
        np.testing.assert_allclose([p for _, _, p in line["top5"]], expected[top], rtol=1e-4, atol=1e-6)


def test_features_are_the_classifiers_input(converted, tmp_path):
    reference, root = converted
    images = [root / "wide.png", root / "tall.jpg"]
    weights = weights_lib.load_weights(root / "weights")
    inputs = np.stack([predict.preprocess(read_image(str(path))[0], weights.preprocessing) for path in images])
    probabilities, features = predict.forward(weights, inputs)
    expected_probabilities, expected_features = _torch_outputs(reference, images)
    assert features.shape == (2, 512)
    np.testing.assert_allclose(features, expected_features, rtol=1e-4, atol=1e-4 * np.abs(expected_features).max())
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-5)


def test_bad_input_is_one_message_and_exit_1(converted, tmp_path):
    _, root = converted
    (tmp_path / "notes.jpg").write_text("not an image")
    weights, missing, notes = f"--weights={root / 'weights'}", tmp_path / "missing.png", tmp_path / "notes.jpg"
    for args, message in (
        ((weights, "--model=resnet18", missing), f"error: No such image: {missing}."),
        ((weights, "--model=resnet18", notes), f"error: Cannot read {notes}: not an image format"),
        ((weights, "--model=resnet50", root / "tall.jpg"), f"error: {root / 'weights'} holds weights of our "),
    ):
        done = _run(*args)
        assert done.returncode == 1 and done.stderr.startswith(message), done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""


def _write_modes(root):
    """{name: (path, the uint8 RGB it must decode to)} for real files of each pixel mode, written by
    Pillow, from one 8-bit grey picture and its RGB twin."""
    rows, columns = np.mgrid[0:64, 0:80]
    grey = ((rows * 3 + columns * 2 + 37 * np.sin(columns / 5.0)) % 256).astype(np.uint8)
    rgb = np.stack([grey, 255 - grey, np.roll(grey, 7, axis=1)], -1)
    as_rgb = np.repeat(grey[..., None], 3, -1)
    files = {}

    def save(name, image, expected, **options):
        image.save(root / name, **options)
        files[name] = (root / name, expected)

    save("grey8.png", Image.fromarray(grey), as_rgb)
    save("grey16.png", Image.fromarray(grey.astype(np.uint16) * 257), as_rgb)  # Pillow writes I;16
    save("grey16.tif", Image.fromarray((grey.astype(np.uint16) << 8) + 255), as_rgb)  # high byte counts
    save("int32.tif", Image.fromarray(grey.astype(np.int32) << 23, "I"), as_rgb)
    save("float32.tif", Image.fromarray(grey.astype(np.float32) / 255.0, "F"), as_rgb)
    save("grey_alpha.png", Image.fromarray(np.stack([grey, 255 - grey], -1), "LA"), as_rgb)
    save("rgba.png", Image.fromarray(np.concatenate([rgb, grey[..., None]], -1), "RGBA"), rgb)
    palette = Image.fromarray(rgb).quantize(16)
    palette_rgb = np.asarray(palette.convert("RGB"))
    save("palette.png", palette, palette_rgb)
    transparent = palette.copy()
    transparent.info["transparency"] = 3  # palette entry 3 is transparent: its colour is kept
    save("palette_transparent.png", transparent, palette_rgb, transparency=3)
    save("palette_alpha.tif", Image.fromarray(np.stack([grey, 255 - grey], -1), "LA").convert("PA"), as_rgb)
    save(
        "cmyk.tif",
        Image.fromarray(rgb).convert("CMYK"),
        np.asarray(Image.fromarray(rgb).convert("CMYK").convert("RGB")),
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels are shown rotated 90 degrees clockwise
    save("rotated.png", Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))), rgb, exif=exif)
    frames = [Image.fromarray(grey), Image.fromarray(255 - grey)]
    save("animated.gif", frames[0], as_rgb, save_all=True, append_images=frames[1:])
    save("white.png", Image.fromarray(np.full_like(grey, 255)), np.full_like(as_rgb, 255))
    return files


def test_every_pixel_mode_decodes_to_the_values_training_sees(tmp_path):
    from resnet_identity.data import images

    for name, (path, expected) in _write_modes(tmp_path).items():
        pixels, note = images.read_image(str(path))
        assert pixels.dtype == np.uint8 and pixels.shape == expected.shape, name
        np.testing.assert_array_equal(pixels, expected, err_msg=name)
        assert (note is not None) == (name == "animated.gif"), name
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"  # the mode Pillow's convert("RGB") clips to white
    assert (np.asarray(Image.open(tmp_path / "grey16.png").convert("RGB")) == 255).mean() > 0.9


def test_a_16_bit_png_predicts_as_its_8_bit_twin_not_as_white(converted, tmp_path):
    _, root = converted
    files = _write_modes(tmp_path)
    names = ["grey8.png", "grey16.png", "white.png", "animated.gif"]
    done = _run(f"--weights={root / 'weights'}", "--model=resnet18", "--json", *(files[n][0] for n in names))
    assert done.returncode == 0, done.stderr
    top = {name: json.loads(line)["top5"] for name, line in zip(names, done.stdout.splitlines())}
    assert top["grey16.png"] == top["grey8.png"] == top["animated.gif"]
    assert top["white.png"] != top["grey8.png"]
    assert done.stderr.splitlines() == [f"note: {files['animated.gif'][0]} is animated (2 frames); the first is used."]
