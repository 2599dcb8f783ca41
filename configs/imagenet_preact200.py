"""Pre-activation ResNet-200 on ImageNet: v2 Table 5 (20.7% / 5.3% top-1/top-5 at 320 crop; 20.1% / 4.8% with scale + aspect augmentation).

Launch:
  python train.py --config=configs/imagenet_preact200.py --workdir=workdirs/imagenet_preact200
Presets (after a colon): smoke; e.g. `--config=configs/imagenet_preact200.py:smoke`.
Expected runtime: About 3 weeks on 8 GPUs in the paper. Needs the manual ImageNet download (see README).
"""

from resnet_identity import recipes


def get_config(preset=None):
    return recipes.imagenet("preact_resnet200", preset)
