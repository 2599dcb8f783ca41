"""Suite-wide settings, made before any test module imports JAX.

The suite is compile-bound (tiny models, a few steps each), so it runs at XLA's cheapest
backend optimisation level, two tests at a time (`-n 2` in the test command); what each
saves is in benchmarks/results/history ("Test suite"). Workers, notebook kernels and
`train.py` subprocesses inherit the level through the environment, and
`xla_config.step_compiler_options` defers to a level set there, so train steps compile at
it too. Every comparison in the
suite is between programs compiled under the same flags.
"""

import atexit
import os
import shutil
import tempfile

_FAST_COMPILE = "--xla_backend_optimization_level=0"

if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

# One persistent compilation cache for the session, made by the controlling process and
# inherited by its workers, notebook kernels and subprocesses: the suite compiles the same tiny
# programs in many processes (every `train.py` of the quickstart's model), and each compiles
# them once. A test that sets its own cache directory keeps it.
if "RESNET_IDENTITY_TEST_JAX_CACHE" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="resnet_identity_jax_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(
        RESNET_IDENTITY_TEST_JAX_CACHE=_cache,
        JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR", _cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )

# The Cloud Storage emulator's fixtures (gcs_emulator, gcs_bucket), for every module.
from tests.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: E402, F401


def pytest_terminal_summary(terminalreporter):
    """How many docs commands were found and how each ended (tests/test_docs_commands.py), on the
    terminal whatever -r says."""
    outcomes = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            nodeid = getattr(report, "nodeid", "")
            if hasattr(report, "outcome") and nodeid.startswith(
                "tests/test_docs_commands.py::test_command_runs_as_typed["
            ):
                if report.failed or (report.skipped and outcomes.get(nodeid) != "failed"):
                    outcomes[nodeid] = report.outcome
                else:
                    outcomes.setdefault(nodeid, report.outcome)
    if outcomes:
        counts = {outcome: list(outcomes.values()).count(outcome) for outcome in ("passed", "failed", "skipped")}
        terminalreporter.write_line(
            f"docs commands: {len(outcomes)} found in README.md and docs/*.md; {counts['passed']} ran, "
            f"{counts['failed']} failed, {counts['skipped']} skipped"
        )
