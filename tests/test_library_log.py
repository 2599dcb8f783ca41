"""The libraries' own reports of a failed write, kept out of the console (`runs/library_log.py`):
after `divert_to(path)`, the WARNINGs of asyncio, gcsfs and fsspec and the unraisable
exceptions of abandoned coroutines go to `path`; everything else reaches the console as before.
In a fresh process: the diversion lasts for the process. (Through a real failed save:
test_files.py.)"""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_REPORTS = textwrap.dedent("""
    import gc, logging, sys, types
    from resnet_identity.runs import library_log

    library_log.divert_to(sys.argv[1])
    library_log.divert_to(sys.argv[1] + ".second")  # the first call's choice stays
    logging.getLogger("asyncio").warning("task of an abandoned write failed")
    logging.getLogger("fsspec").warning("fsspec retried")
    logging.getLogger("resnet_identity.example").warning("a warning of our own")

    @types.coroutine
    def pause():
        yield

    async def write():
        try:
            await pause()
        finally:
            raise RuntimeError("Event loop is closed")

    coroutine = write()
    coroutine.send(None)
    del coroutine  # closed unfinished: its RuntimeError is unraisable, from a coroutine

    class Ours:
        def __del__(self):
            raise ValueError("an unraisable error of our own")

    Ours()
    gc.collect()
""")


def test_library_reports_go_to_the_file_and_the_rest_to_the_console(tmp_path):
    log = tmp_path / "library.log"
    done = subprocess.run(
        [sys.executable, "-c", _REPORTS, str(log)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    kept = log.read_text()
    assert "task of an abandoned write failed" in kept and "fsspec retried" in kept
    assert "Exception ignored in: <coroutine object" in kept and "RuntimeError: Event loop is closed" in kept
    assert "of our own" not in kept
    assert "a warning of our own" in done.stderr and "ValueError: an unraisable error of our own" in done.stderr
    for diverted in ("abandoned write", "fsspec retried", "Event loop is closed"):
        assert diverted not in done.stderr, done.stderr
    assert not os.path.exists(str(log) + ".second")
