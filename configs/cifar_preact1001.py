"""Pre-activation ResNet-1001 on CIFAR-10: v2 Table 3 (4.92% error; 22.71% on CIFAR-100 with --config.dataset=cifar100).

Launch:
  python train.py --config=configs/cifar_preact1001.py --workdir=workdirs/cifar_preact1001
Presets (after a colon): smoke, released_code; e.g. `--config=configs/cifar_preact1001.py:smoke`.
Expected runtime: About 27 h on 2 GPUs in the paper; see benchmarks/RESULTS.md for our step times.
"""

from resnet_identity.training import recipes


def get_config(preset=None):
    return recipes.cifar("cifar_preact1001", preset)
