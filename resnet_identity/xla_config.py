"""XLA flags, set before JAX starts its backend (XLA reads `XLA_FLAGS` only then).

Call `configure(preset)` first thing in a program, before any JAX computation; `train.py`
and `benchmarks/` do. A flag already in `XLA_FLAGS` is left as the user set it.
"""

from __future__ import annotations

import os

PRESETS: dict[str, tuple[str, ...]] = {
    "none": (),
}
DEFAULT_PRESET = "none"


def configure(preset: str = DEFAULT_PRESET) -> str:
    """Adds the preset's flags to `XLA_FLAGS` and returns the resulting value.

    Raises if the backend has started already, since the flags would silently not apply.
    """
    if preset not in PRESETS:
        raise ValueError(f"XLA preset {preset!r}; choose one of {sorted(PRESETS)}.")
    from jax._src import xla_bridge

    if PRESETS[preset] and xla_bridge.backends_are_initialized():
        raise RuntimeError("xla_config.configure() must run before the first JAX computation.")
    current = os.environ.get("XLA_FLAGS", "").split()
    names = {flag.split("=")[0] for flag in current}
    added = [flag for flag in PRESETS[preset] if flag.split("=")[0] not in names]
    os.environ["XLA_FLAGS"] = " ".join(current + added)
    return os.environ["XLA_FLAGS"]
