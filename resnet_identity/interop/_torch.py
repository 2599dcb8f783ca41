"""The one place that imports torch, torchvision and timm (the `interop` extra).

PyPI's torchvision wheel for Linux is a CUDA build. Its C extension (`torchvision._C`, the
detection ops: NMS, RoI align, deformable convolution) does not load against the CPU torch
wheel, and torchvision's import then stops on `torchvision/_meta_registrations.py`, which
registers fake kernels for the two operators `torchvision::nms` and `torchvision::qnms`
whether or not the extension loaded ("operator torchvision::nms does not exist"). timm
imports torchvision, so it stops there too. The ResNets themselves are pure Python and need
none of those ops; so when the extension cannot load, `import_torchvision` declares the two
operator schemas (signatures only, no kernels: calling them still fails) before the import.
When the extension loads, it defines them itself and nothing is declared.
"""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

INSTALL_HINT = "pip install -e '.[interop]'  (torch, torchvision and timm)"
# The operators `_meta_registrations.py` registers fakes for unconditionally, as
# torchvision's C++ code declares them (torchvision/csrc/ops/nms.cpp, quantized/cpu/qnms_kernel.cpp).
DETECTION_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_declared = []  # the torch.library.Library holding the schemas, kept alive while the process lives


def import_torch() -> ModuleType:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"Converting weights needs torch: {INSTALL_HINT}.") from e
    return torch


def _extension_loads(torch: ModuleType) -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise ImportError(f"Converting torchvision weights needs torchvision: {INSTALL_HINT}.")
    for library in pathlib.Path(spec.origin).parent.glob("_C.*so"):
        try:
            torch.ops.load_library(str(library))
            return True
        except (OSError, RuntimeError):
            return False
    return False


def import_torchvision() -> ModuleType:
    """`torchvision`, importable with a CPU torch whatever build its C extension is (module docstring)."""
    torch = import_torch()
    if not _declared and not _extension_loads(torch):
        library = torch.library.Library("torchvision", "DEF")
        for schema in DETECTION_OP_SCHEMAS:
            library.define(schema)
        _declared.append(library)
    import torchvision

    return torchvision


def import_timm() -> ModuleType:
    import_torchvision()  # timm imports torchvision
    try:
        import timm
    except ImportError as e:
        raise ImportError(f"Converting timm weights needs timm: {INSTALL_HINT}.") from e
    return timm
