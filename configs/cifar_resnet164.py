"""Original (v1) bottleneck ResNet-164 on CIFAR-10: v2 Table 2(a) / Table 3 (5.93% error; 25.16% on CIFAR-100).

Launch:
  python train.py --config=configs/cifar_resnet164.py --workdir=workdirs/cifar_resnet164
Presets (after a colon): smoke, released_code; e.g. `--config=configs/cifar_resnet164.py:smoke`.
Expected runtime: not measured here; benchmarks/RESULTS.md has our step times.
"""

from resnet_identity.training import recipes


def get_config(preset=None):
    return recipes.cifar("cifar_resnet164", preset)
