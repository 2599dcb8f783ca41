"""Throughput of bounded run-ahead: training steps dispatched freely, or at most K ahead.

    python -m benchmarks.run_ahead --model=cifar_preact20 --batch=128 [--steps=20] [--rounds=5] [--ahead 2 1 0]

Builds one training configuration (`step_time.build`), then, round after round, times a
window of `--steps` steps in each variant in turn, so that all share the machine's load:
"free" (the host waits only at the end of the window, as training did before the bound)
and `preemption.RunAheadBound(K)` for each K of `--ahead`. Each step copies its batch
from host memory, as training does. Prints one JSON line: each variant's median
milliseconds per step over the rounds (and the fastest), and the median over the rounds
of its ratio to "free" in the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from benchmarks import step_time
from resnet_identity.training import xla_config


def time_window(bench: step_time.Bench, host_batches: list, steps: int, ahead: int | None) -> float:
    """Seconds per step over one window; `ahead` None dispatches freely."""
    import jax

    from resnet_identity.runs.preemption import RunAheadBound

    bound = RunAheadBound(ahead) if ahead is not None else None
    start = time.perf_counter()
    for i in range(steps):
        bench.state, metrics = bench.step(bench.state, jax.device_put(host_batches[i % len(host_batches)]))
        if bound is not None:
            bound.dispatched(metrics)
    jax.block_until_ready((bench.state, metrics))
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_preact20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per window")
    parser.add_argument("--rounds", type=int, default=5, help="windows per variant, interleaved")
    parser.add_argument("--ahead", type=int, nargs="+", default=[2], help="bounds to time beside free")
    args = parser.parse_args(argv)
    import jax

    bench = step_time.build(args.model, args.batch)
    host_batches = jax.device_get(bench.batches)
    variants = {"free": None, **{f"ahead_{k}": k for k in args.ahead}}
    time_window(bench, host_batches, 2, None)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, ahead in variants.items():
            times[name].append(time_window(bench, host_batches, args.steps, ahead))
    # Ratios round by round (paired), whose median a drifting machine load skews less.
    result = {
        "model": args.model,
        "batch": args.batch,
        "steps_per_window": args.steps,
        "rounds": args.rounds,
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        **{f"{name}_ms": round(1000 * statistics.median(t), 2) for name, t in times.items()},
        **{f"{name}_min_ms": round(1000 * min(t), 2) for name, t in times.items()},
        **{
            f"{name}_vs_free": round(statistics.median(b / f for b, f in zip(t, times["free"])), 4)
            for name, t in times.items()
            if name != "free"
        },
        "loadavg_1m_5m": [round(x, 2) for x in os.getloadavg()[:2]],
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    xla_config.use_huge_pages()
    main()
