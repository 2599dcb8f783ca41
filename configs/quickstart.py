"""Quickstart: a small pre-activation ResNet on the embedded digits dataset (no download).

Launch:
  python train.py --config=configs/quickstart.py --workdir=workdirs/quickstart
Reaches >= 95% test accuracy on 2 CPU cores in a few minutes (README has the measured figures).
Presets: smoke (a handful of steps).
"""

from resnet_identity.training import recipes
from resnet_identity.training.config import default_config


def get_config(preset=None):
    c = default_config()
    c.model = "cifar_preact20"  # v2 units, 6n+2 = 20 layers, 0.27M parameters
    c.dataset = "digits"
    c.batch_size = 64
    c.eval_batch_size = 360
    c.num_train_steps = 300  # 13 epochs of the 1,437 training digits
    c.schedule.learning_rate = 0.1
    c.schedule.boundaries = (200, 250)
    c.schedule.warmup_steps = 0
    c.log_every_steps = 50
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    if preset == "smoke":
        return recipes.apply_preset(c, preset)
    if preset not in (None, ""):
        raise ValueError(f"Unknown preset {preset!r}; quickstart has: smoke.")
    return c
