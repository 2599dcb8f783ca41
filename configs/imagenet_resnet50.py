"""ResNet-50 (v1) on ImageNet with the v2 ImageNet recipe (v1 Table 3/4 architecture).

Launch:
  python train.py --config=configs/imagenet_resnet50.py --workdir=workdirs/imagenet_resnet50
Presets (after a colon): smoke, fb_resnet_torch (fb.resnet.torch's augmentation); e.g. `--config=configs/imagenet_resnet50.py:smoke`.
Expected runtime: Needs the manual ImageNet download (see README).
"""

from resnet_identity import recipes


def get_config(preset=None):
    return recipes.imagenet("resnet50", preset)
