"""Layer responses of a trained network: the standard deviation of each layer's output (v1 Fig. 7).

v1 Sec. 4.2 measures, on CIFAR-10's test set, "the outputs of each 3x3 layer, after BN and
before other nonlinearity (ReLU/addition)", and finds that ResNets respond more weakly than
plain nets, the deeper ResNets most weakly: "the residual functions might be generally
closer to zero than the non-residual functions". Fig. 7 plots the std of each layer's
response in network order (top) and sorted by magnitude, largest first (bottom).

`layer_responses` reads every such BN output of a network: the stem's and each BN of each
unit's residual branch (in a v1 unit the last of them is exactly F(x) before the addition),
leaving out the BN of a projection shortcut and the final BN-ReLU of a pre-activation net,
which follow no 3x3 conv of the branch. BN runs in inference mode (the running statistics,
as a test-set measurement does), and the std is taken over every entry of the layer's
output for the batch. The network runs unrolled under a flax method interceptor, as in
`signal.unit_norms`. `run_responses` does this for a training run's newest checkpoint
(`weights.load_run_weights`) on its dataset's test images.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from etils import epath

from resnet_identity.analysis import signal
from resnet_identity.models import ResNet
from resnet_identity.models.layers import GhostBatchNorm
from resnet_identity.runs.files import as_path
from resnet_identity.training import config_migration, weights

# Module names of the BNs that are not the response of a branch layer (see the docstring).
NOT_A_LAYER = ("shortcut", "final_bn")


@dataclasses.dataclass(frozen=True)
class Responses:
    """Per layer, in network order: its module path ("stage1/first/bn2") and its response's std."""

    names: tuple[str, ...]
    std: np.ndarray

    def sorted(self) -> np.ndarray:
        """The stds largest first: v1 Fig. 7 (bottom)."""
        return np.sort(self.std)[::-1]


def _is_layer_norm(module: nn.Module) -> bool:
    path = module.scope.path if module.scope is not None else ()
    return isinstance(module, (GhostBatchNorm, nn.BatchNorm)) and not any(part in NOT_A_LAYER for part in path)


def layer_responses(model: ResNet, variables: Any, images: jax.Array) -> Responses:
    """The std of every layer's response (its BN's output) for `images`, an NHWC batch
    normalised as the network was trained on. `variables` may be in any layout."""
    model, variables = signal.unrolled(model, variables)
    names, outputs = [], []

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and _is_layer_norm(context.module):
            names.append("/".join(context.module.scope.path))
            outputs.append(out)
        return out

    with nn.intercept_methods(intercept):
        model.apply(variables, images, train=False)
    return Responses(tuple(names), np.array([np.std(np.asarray(o, np.float64)) for o in outputs]))


def run_responses(workdir: epath.PathLike, num_images: int = 500) -> tuple[Responses, ResNet]:
    """`layer_responses` of a training run's newest checkpoint, on the first `num_images`
    test images of its dataset; also the network (for its stage sizes)."""
    workdir = as_path(workdir)
    run = weights.load_run_weights(workdir)
    config = config_migration.as_config(json.loads((workdir / "config.json").read_text()))
    images, _ = signal.test_batch(config, num_images)
    model, variables = run.create_model(scan=False)
    return layer_responses(model, variables, images), model


def plot_responses(axes, responses: Mapping[str, Responses]) -> None:
    """v1 Fig. 7 on two axes: each net's response stds in layer order (top), then sorted
    largest first (bottom). Dashed lines are plain nets (labels starting "plain")."""
    from resnet_identity.analysis.plots import COLORS

    top, bottom = axes
    for color, (label, r) in zip(COLORS, responses.items()):
        style = "--" if label.startswith("plain") else "-"
        layers = np.arange(1, len(r.std) + 1)
        top.plot(layers, r.std, style, color=color, label=label, linewidth=1.5)
        bottom.plot(layers, r.sorted(), style, color=color, label=label, linewidth=1.5)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in axes:
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
