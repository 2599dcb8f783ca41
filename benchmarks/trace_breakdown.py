"""Where a traced step's GPU time goes, by kind of kernel.

    python -m benchmarks.trace_breakdown TRACE.json.gz [--steps=3] [--top=0]

TRACE is a `perfetto_trace.json.gz` written by `jax.profiler.trace(create_perfetto_trace=True)`,
as `benchmarks.step_time --profile_dir` (3 steps) and `gpu_suite.sh profile` write them.
Prints busy milliseconds and kernel counts per step for each kind; with `--top=N`, also the
N kernels that took longest in all.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re

# First match wins; anything else is elementwise (BN apply, ReLU, casts, the optimiser).
KINDS = (
    (
        "convolutions and matrix products",
        ("xmma", "cutlass", "nvjet", "cudnn", "gemm", "Gemm", "splitK", "convolve", "wgrad", "nhwcAddPadding"),
    ),
    ("reductions (BN statistics and their gradients)", ("reduce",)),
    ("scan: dynamic slices and updates", ("dynamic_update_slice", "dynamic_slice")),
    ("device-to-device copies", ("Memcpy", "memcpy")),
    ("broadcasts (buffer fills)", ("broadcast",)),
    ("scatters (max-pool gradient)", ("scatter",)),
)


def kind(name: str) -> str:
    for label, needles in KINDS:
        if any(n in name for n in needles):
            return label
    return "other elementwise (BN apply, ReLU, casts, optimiser)"


def gpu_kernels(path: str) -> list[dict]:
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    gpus = {
        e["pid"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name" and "GPU" in e["args"]["name"]
    }
    return [e for e in events if e.get("ph") == "X" and e["pid"] in gpus]


def breakdown(path: str, steps: int = 3, top: int = 0) -> dict[str, dict[str, float]]:
    kernels = gpu_kernels(path)
    busy, count = collections.Counter(), collections.Counter()
    by_name = collections.Counter()
    for e in kernels:
        busy[kind(e["name"])] += e.get("dur", 0)
        count[kind(e["name"])] += 1
        by_name[re.sub(r"[._]\d+", "", e["name"])[:90]] += e.get("dur", 0)
    total = sum(busy.values())
    print(f"{path}: {total / steps / 1e3:.1f} ms of GPU time and {len(kernels) // steps} kernels per step")
    rows = {}
    for label, us in busy.most_common():
        rows[label] = {"ms_per_step": round(us / steps / 1e3, 2), "kernels_per_step": count[label] // steps}
        print(f"  {label:55s} {us / steps / 1e3:7.1f} ms {100 * us / total:4.0f}%  {count[label] // steps} kernels")
    for name, us in by_name.most_common(top):
        print(f"    {us / steps / 1e3:7.2f} ms  {name}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--steps", type=int, default=3, help="steps in the trace")
    parser.add_argument("--top", type=int, default=0, help="also list the N costliest kernels")
    args = parser.parse_args(argv)
    breakdown(args.trace, args.steps, args.top)


if __name__ == "__main__":
    main()
