"""Weights in and out: torchvision's and timm's ResNets <-> our models (`weights.py` directories).

    weights = import_file("torchvision", "resnet50", "resnet50.pth", "converted/resnet50")
    weights = import_pretrained("torchvision", "resnet50", "IMAGENET1K_V1", "converted/resnet50")  # downloads
    export_file(weights, "timm", "resnetv2_50.pth")  # `weights.load_weights(...)` or `weights.load_run_weights(...)`

The conversions live in `state_dicts.py`; the tables of which tensor is which in `torchvision.py`
and `timm.py`; the moves they share in `mapping.py`; downloads in `pretrained.py`. torch is
needed only to read a `.pth` file and write one (a `.safetensors` file reads with NumPy); the
arrays in between are NumPy.
"""

from resnet_identity.interop.pretrained import import_pretrained
from resnet_identity.interop.state_dicts import (
    export_file,
    export_state_dict,
    import_file,
    import_state_dict,
    read_state_dict,
    write_state_dict,
)

__all__ = [
    "export_file",
    "export_state_dict",
    "import_file",
    "import_pretrained",
    "import_state_dict",
    "read_state_dict",
    "write_state_dict",
]
