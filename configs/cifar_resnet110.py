"""Original (v1) ResNet-110 on CIFAR-10: v1 Table 6 (6.43%, mean 6.61%) and v2 Table 1 row 1 / Table 2(a).

Launch:
  python train.py --config=configs/cifar_resnet110.py --workdir=workdirs/cifar_resnet110
Presets (after a colon): smoke, released_code; e.g. `--config=configs/cifar_resnet110.py:smoke`.
Expected runtime: not measured here; benchmarks/RESULTS.md has our step times.
"""

from resnet_identity.training import recipes


def get_config(preset=None):
    return recipes.cifar("cifar_resnet110", preset)
