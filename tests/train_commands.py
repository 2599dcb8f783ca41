"""`train.py` as a subprocess, for the tests that signal, starve or race a real run.

quickstart_train_py(workdir, *flags) -> list[str]
    The command line of a small quickstart run (ResNet-8, batch 16) in `workdir`, with
    `flags` (whole `--config.FIELD=VALUE` strings) appended.
read_until(proc, text, lines) -> None
    Reads `proc`'s output line by line into `lines` until a line holds `text`; fails the test
    with the output's tail if the output ends first.
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart_train_py(workdir, *flags: str) -> list[str]:
    return [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        f"--config={os.path.join(ROOT, 'configs', 'quickstart.py')}",
        f"--workdir={workdir}",
        "--config.model_overrides.depth=8",
        "--config.batch_size=16",
        *flags,
    ]


def read_until(proc: subprocess.Popen, text: str, lines: list[str]) -> None:
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return
    raise AssertionError(f"no line with {text!r}:\n{''.join(lines)[-3000:]}")
