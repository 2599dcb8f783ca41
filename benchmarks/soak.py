"""Soak test for exact resume: SIGKILL a real training run many times, then compare.

  python -m benchmarks.soak [--kills=20] [--steps=300] [--workdir=/tmp/soak]

Runs `train.py` on the quickstart config twice: once uninterrupted, once killed with
SIGKILL at `--kills` random moments (each restart resumes from the newest checkpoint), then
run to the end. Prints one JSON line; `bitwise_equal` is true when every parameter, BN
statistic and optimiser buffer of the two final checkpoints is identical to the bit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir: str, steps: int) -> list[str]:
    return [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--config=configs/quickstart.py",
        f"--workdir={workdir}",
        f"--config.num_train_steps={steps}",
        f"--config.schedule.boundaries=({steps * 2 // 3},{steps * 5 // 6})",
        "--config.checkpoint_every_steps=5",
        "--config.log_every_steps=5",
        f"--config.eval_every_steps={steps}",
    ]


def _final_state(workdir: str, step: int) -> dict[str, np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(restored)[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workdir", default="/tmp/resnet_identity_soak")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    reference, soaked = os.path.join(args.workdir, "reference"), os.path.join(args.workdir, "soaked")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    start = time.time()
    subprocess.run(_command(reference, args.steps), cwd=ROOT, env=env, check=True, capture_output=True)
    reference_seconds = time.time() - start

    rng = random.Random(args.seed)
    kill_steps = []
    for _ in range(args.kills):
        proc = subprocess.Popen(
            _command(soaked, args.steps),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        # Kill a random time after the first logged step, i.e. mid-training, not mid-compile only.
        for line in proc.stdout:
            if line.startswith("step ") or line.startswith("final"):
                break
        time.sleep(rng.uniform(0.0, reference_seconds / (args.kills + 1)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        steps = [int(s) for s in os.listdir(os.path.join(soaked, "checkpoints")) if s.isdigit()]
        kill_steps.append(max(steps, default=0))
    subprocess.run(_command(soaked, args.steps), cwd=ROOT, env=env, check=True, capture_output=True)

    a, b = _final_state(reference, args.steps), _final_state(soaked, args.steps)
    equal = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with open(os.path.join(soaked, "metrics.jsonl")) as f:
        logged = [json.loads(line)["step"] for line in f if "train/loss" in line]
    print(
        json.dumps(
            {
                "kills": args.kills,
                "steps": args.steps,
                "newest_checkpoint_after_each_kill": kill_steps,
                "bitwise_equal": equal,
                "arrays_compared": len(a),
                "steps_logged_once": logged == sorted(set(logged)),
                "wall_seconds": round(time.time() - start, 1),
            }
        )
    )
    sys.exit(0 if equal else 1)


if __name__ == "__main__":
    main()
