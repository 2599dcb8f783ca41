"""Seconds from SIGTERM to exit 75 for a real `train.py` whose step takes about 0.5 s.

    python -m benchmarks.preemption_latency [--root=DIR ...] [--trials=2] [--batch=128]

For each trial and each `--root` (a checkout of this repository, e.g. a `git worktree` of
an older commit; default: this one), in turn, so that the roots share the machine's load:
runs the quickstart at `--batch` (pre-act ResNet-20 on the digits, ~0.5 s a step on 2 CPU
cores at batch 128) with `log_every_steps=--log_every`, waits for its first log line
(which also gives the step time), sends SIGTERM `--delay` seconds later and times the
exit. Prints one JSON line per run: the exit status, the latency, the step time, the step
the device had reached at the signal (estimated from the log line and the step time) and
the step saved.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LOG_LINE = re.compile(r"^step (\d+)/\d+: .* ([\d,]+) img/s")
_SAVED = re.compile(r"saved (?:a checkpoint at )?step (\d+)")


def one_run(root: str, *, batch: int, log_every: int, delay: float, workdir: str) -> dict:
    cmd = [
        sys.executable,
        os.path.join(root, "train.py"),
        f"--config={os.path.join(root, 'configs', 'quickstart.py')}",
        f"--workdir={workdir}",
        f"--config.batch_size={batch}",
        f"--config.log_every_steps={log_every}",
        "--config.num_train_steps=100000",
        "--config.checkpoint_every_steps=100000",
        "--config.eval_every_steps=100000",
    ]
    env = {**os.environ, "PYTHONPATH": root, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if match := _LOG_LINE.match(line):
            logged_at, logged_step = time.perf_counter(), int(match.group(1))
            step_s = batch / float(match.group(2).replace(",", ""))
            break
    else:
        raise RuntimeError("train.py ended before its first log line:\n" + "".join(lines[-30:]))
    time.sleep(delay)
    signalled = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=600)
    latency = time.perf_counter() - signalled
    saved = _SAVED.findall(rest)
    at_signal = logged_step + (signalled - logged_at) / step_s
    return {
        "root": root,
        "exit": proc.returncode,
        "latency_s": round(latency, 2),
        "step_s": round(step_s, 3),
        "latency_in_steps": round(latency / step_s, 1),
        "device_step_at_signal": round(at_signal, 1),
        "saved_step": int(saved[-1]) if saved else None,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", action="append", default=[], help="a checkout to time (repeatable)")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--log_every", type=int, default=40)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds from the first log line to SIGTERM")
    args = parser.parse_args(argv)
    roots = [os.path.abspath(r) for r in args.root] or [HERE]
    for _ in range(args.trials):
        for root in roots:
            with tempfile.TemporaryDirectory() as workdir:
                print(
                    json.dumps(
                        one_run(root, batch=args.batch, log_every=args.log_every, delay=args.delay, workdir=workdir)
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
