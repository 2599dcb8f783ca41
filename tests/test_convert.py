"""`convert --from=... --pretrained=...`: torchvision's and timm's published weights through
their own caches, and the files convert cannot read.

There is no network here, so a random-weights file stands in for each download, saved where
the library's own loader reads it: `$TORCH_HOME/hub/checkpoints/<the weights URL's file name>`
(torchvision's `WeightsEnum.get_state_dict`) and the Hugging Face hub's cache layout under
`$HF_HOME` (timm's `model.safetensors`). The real loading code then runs. "Offline" is made
certain with a proxy address where nothing listens (torchvision) and `HF_HUB_OFFLINE=1`
(timm, whose client would otherwise retry for half a minute).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from resnet_identity import interop
from resnet_identity.interop._torch import import_timm, import_torchvision
from resnet_identity.training import weights as weights_lib

torchvision = import_torchvision()
timm = import_timm()
import torch  # noqa: E402  (after import_torchvision)

NO_NETWORK = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}


def _convert(*args, cwd, **env):
    return subprocess.run(
        [sys.executable, "-m", "resnet_identity.convert", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, **NO_NETWORK, **env},
    )


def _assert_one_error_line(done, start):
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(start), line
    return line


def _assert_same_variables(weights, expected):
    got, want = weights_lib.flatten(weights.variables), weights_lib.flatten(expected.variables)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_torchvision_pretrained_weights_come_through_torch_hubs_cache(tmp_path):
    home = tmp_path / "torch"
    command = ("--from=torchvision", "--model=resnet18", "--pretrained=IMAGENET1K_V1", "--out=converted/resnet18")
    cached = home / "hub" / "checkpoints" / os.path.basename(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)

    line = _assert_one_error_line(
        _convert(*command, cwd=tmp_path, TORCH_HOME=str(home)), "error: Cannot download torchvision's resnet18"
    )
    assert f"copy {cached} to the same path here" in line and not (tmp_path / "converted").exists()

    cached.parent.mkdir(parents=True, exist_ok=True)  # torch hub made it for its failed download
    state_dict = torchvision.models.resnet18().state_dict()
    torch.save(state_dict, cached)
    done = _convert(*command, cwd=tmp_path, TORCH_HOME=str(home))
    assert done.returncode == 0, done.stderr
    weights = weights_lib.load_weights(tmp_path / "converted" / "resnet18")
    _assert_same_variables(weights, interop.import_state_dict("torchvision", "resnet18", state_dict))
    assert weights.source == f"torchvision:resnet18 IMAGENET1K_V1 ({cached})"
    assert (weights.preprocessing.resize, weights.preprocessing.crop) == (256, 224)
    assert weights.class_names == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]

    _assert_one_error_line(
        _convert("--from=torchvision", "--model=resnet18", "--pretrained=V3", "--out=x", cwd=tmp_path),
        "error: torchvision has no weights 'V3' for resnet18; choose one of DEFAULT, IMAGENET1K_V1.",
    )


def test_timm_pretrained_weights_come_through_the_hugging_face_cache(tmp_path):
    home = tmp_path / "hf"
    command = ("--from=timm", "--model=resnetv2_50", "--pretrained=a1h_in1k", "--out=converted/resnetv2_50")
    _assert_one_error_line(
        _convert(*command, cwd=tmp_path, HF_HOME=str(home)), "error: Cannot download timm's resnetv2_50.a1h_in1k"
    )

    from safetensors.torch import save_file

    repository = home / "hub" / "models--timm--resnetv2_50.a1h_in1k"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repository / "refs").mkdir(parents=True)
    (repository / "refs" / "main").write_text(revision)
    (repository / "snapshots" / revision).mkdir(parents=True)
    state_dict = timm.create_model("resnetv2_50").state_dict()
    save_file(state_dict, repository / "snapshots" / revision / "model.safetensors")
    done = _convert(*command, cwd=tmp_path, HF_HOME=str(home))
    assert done.returncode == 0, done.stderr
    weights = weights_lib.load_weights(tmp_path / "converted" / "resnetv2_50")
    _assert_same_variables(weights, interop.import_state_dict("timm", "resnetv2_50", state_dict))
    assert (weights.model, weights.preprocessing.interpolation) == ("preact_resnet50", "bicubic")


def test_an_unreadable_pth_file_is_one_line_without_torchs_advice(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a whole model, not a state_dict
    line = _assert_one_error_line(
        _convert("--from=torchvision", "--model=resnet18", "module.pth", "--out=x", cwd=tmp_path),
        f"error: {tmp_path / 'module.pth'} holds Python objects besides tensors",
    )
    assert "weights_only" not in line and "state_dict" in line
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "whole.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:100_000])
    (tmp_path / "text.pth").write_text("not a torch file")
    for name in ("truncated.pth", "text.pth"):
        with pytest.raises(weights_lib.WeightsError) as error:
            interop.read_state_dict(tmp_path / name)
        assert str(error.value).startswith(f"Cannot read {tmp_path / name}: it is not a file torch.save wrote")
        assert "weights_only" not in str(error.value) and "miniz" not in str(error.value)
