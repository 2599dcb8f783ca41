"""Pre-activation ResNet-200 on ImageNet: v2 Table 5, 20.7% / 5.3% top-1/top-5 at the 320 crop.

That row is the default recipe's scale augmentation. Table 5's 20.1% / 4.8% row adds aspect ratio augmentation
("scale + aspect"); `:fb_resnet_torch` is the closest setting we have: its random-sized crop varies scale and
aspect, but it also adds colour jitter 0.4, which that row does not describe.

Launch:
  python train.py --config=configs/imagenet_preact200.py --workdir=workdirs/imagenet_preact200
Presets (after a colon): smoke, fb_resnet_torch (fb.resnet.torch's augmentation);
  e.g. `--config=configs/imagenet_preact200.py:smoke`.
Expected runtime: About 3 weeks on 8 GPUs in the paper. Needs the manual ImageNet download (see README).
"""

from resnet_identity.training import recipes


def get_config(preset=None):
    return recipes.imagenet("preact_resnet200", preset)
