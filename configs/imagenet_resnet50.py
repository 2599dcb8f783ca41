"""ResNet-50 (v1 Table 1) on ImageNet with the v2 ImageNet recipe.

docs/papers.md gives no ResNet-50 error to match (v2 Table 5 has ResNet-152 and -200); this config
is the throughput benchmark's network (benchmarks/RESULTS.md, target 7a) and a baseline.

Launch:
  python train.py --config=configs/imagenet_resnet50.py --workdir=workdirs/imagenet_resnet50
Presets (after a colon): smoke, fb_resnet_torch (fb.resnet.torch's augmentation), finetune
  (on a folder of your images: docs/pretrained.md);
  e.g. `--config=configs/imagenet_resnet50.py:smoke`.
Expected runtime: Needs the manual ImageNet download (see README).
"""

from resnet_identity.training import recipes


def get_config(preset=None):
    return recipes.imagenet("resnet50", preset)
