"""A workdir's `config.json`: checked against the current config before a run resumes, and
recorded once the checkpoint is known to fit it. Configs of earlier versions are read under
today's field names (`config_migration`), so an old workdir still resumes."""

from __future__ import annotations

import json
import logging
import time

import ml_collections

from resnet_identity.runs.files import append_text, as_path, write_atomically
from resnet_identity.training import config_migration
from resnet_identity.training.config import LAYOUT_FIELDS, RECORD_FIELDS, ConfigError, differing_fields


def check_saved_config(
    workdir: str, config: ml_collections.ConfigDict, allow_change: bool, *, has_checkpoint: bool = True
) -> None:
    """Refuses to resume a workdir whose saved config differs, unless `allow_change`.

    The layout overrides (`config.LAYOUT_FIELDS`: scan, remat, unroll) may change freely:
    the checkpoint is converted on restore; so may the fields that only decide what is
    recorded (`config.RECORD_FIELDS`: log, eval, checkpoint and diagnostics intervals).
    Only a checkpoint (or a result) binds a workdir to its config: `train_and_evaluate`
    passes `has_checkpoint=False` when there is none yet, so a run that failed before its
    first save (a bad value, an out-of-memory compile) can be rerun with corrected values.
    """
    path = as_path(workdir) / "config.json"
    if not has_checkpoint or not path.exists():
        return
    saved = read_saved_config(path)
    if saved is None:
        if allow_change:
            return  # record_config moves the damaged file aside
        raise ConfigError(
            f"{path} is damaged (not a JSON config), so --config cannot be checked against the config of the "
            f"checkpoints. If --config is that config, rerun with --allow_config_change: the damaged file is kept "
            f"beside it as config.json.damaged-<time> and a new config.json is written. Otherwise use a new --workdir."
        )
    saved = config_migration.migrate(saved)  # an older version's field names read as today's
    diffs = differing_fields(saved, json.loads(config.to_json()), ignore=LAYOUT_FIELDS + RECORD_FIELDS)
    if diffs and not allow_change:
        raise ConfigError(
            f"{path} was written by a run with a different config:\n  - "
            + "\n  - ".join(diffs)
            + "\nUse a new --workdir, or pass --allow_config_change to resume with the new values."
        )


def read_saved_config(path) -> dict | None:
    """A workdir's `config.json` as written, or None if it is damaged (not a JSON object)."""
    try:
        saved = json.loads(path.read_text())
    except ValueError:  # not JSON, or not text
        return None
    return saved if isinstance(saved, dict) else None


def record_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `config.json`; a different config it replaces (a resume with
    `--allow_config_change`, or a rerun before the first checkpoint) is appended to
    `config_history.jsonl` first, so the config of every earlier step stays on record; a
    damaged one is kept beside it as `config.json.damaged-<time>`."""
    path = as_path(workdir) / "config.json"
    saved = read_saved_config(path) if path.exists() else {}
    if saved is None:
        aside = path.parent / f"config.json.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        path.rename(aside)
        logging.getLogger(__name__).warning("%s was damaged: kept as %s; a new config.json is written.", path, aside)
    elif saved and differing_fields(saved, json.loads(config.to_json())):
        append_text(
            path.parent / "config_history.jsonl",
            json.dumps({"replaced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": saved}) + "\n",
        )
    # Atomically: the other processes may be reading it in check_saved_config.
    write_atomically(path, config.to_json(indent=2))
