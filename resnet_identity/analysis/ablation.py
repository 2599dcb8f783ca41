"""The old home of the v2 Table 1/2 runner, now `experiments` (declarations), `runs` (training)
and `report` (tables); kept so that imports of `scale_budget` from here keep working."""

from resnet_identity.analysis.experiments import scale_budget

__all__ = ["scale_budget"]
