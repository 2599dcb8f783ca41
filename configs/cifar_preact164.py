"""Pre-activation ResNet-164 on CIFAR-10: v2 Table 2(e) / Table 3 (5.46% error; 24.33% on CIFAR-100).

Launch:
  python train.py --config=configs/cifar_preact164.py --workdir=workdirs/cifar_preact164
Presets (after a colon): smoke, released_code; e.g. `--config=configs/cifar_preact164.py:smoke`.
Expected runtime: not measured here; benchmarks/RESULTS.md has our step times.
"""

from resnet_identity.training import recipes


def get_config(preset=None):
    return recipes.cifar("cifar_preact164", preset)
