"""The `--config` of `python -m resnet_identity.reproduce` when none is given.

Without `--config`, each row of an experiment trains with its own paper recipe
(`experiments.row_config`); this file only gives `--config.FIELD=VALUE` overrides a schema
to be checked against, and they are then set on every row's recipe.
"""

from resnet_identity.training.config import default_config


def get_config():
    return default_config()
