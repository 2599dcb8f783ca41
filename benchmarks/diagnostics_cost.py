"""What the identity-mapping diagnostics cost (`resnet_identity/training/diagnostics.py`).

    python -m benchmarks.diagnostics_cost [--model=cifar_resnet110] [--unit=exclusive_gating]
        [--batch=32] [--rounds=3] [--steps=5]

Off (`diagnostics_every_steps = 0`, the default) nothing is compiled and the train step is the
same jitted function; what remains is one Python call per step that returns at once, timed
here. On, every N steps the trainer runs one extra jitted forward pass (`identity_measures`)
on a batch of the step's size. In one process, rounds alternate timing the real train step
(`benchmarks.step_time`) and that pass, so both see the same machine load; the pass's compile
time is reported too. Prints one JSON line per figure and the overhead per step at N = 1, 10,
100 and 1000: probe time / (N x step time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import timeit
from typing import Any


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet110")
    parser.add_argument("--unit", default=None, help="A unit variant (default: the model's own).")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="Timed train steps (and probe passes) per round.")
    return parser.parse_args(argv)


def _time_step_and_probe(args: argparse.Namespace) -> tuple[Any, list[float], float]:
    """The train step's bench (its `timings` filled) and the diagnostics pass's times and compile
    time, in alternating rounds so that both see the same machine load."""
    import jax

    from benchmarks import step_time
    from resnet_identity.training.diagnostics import identity_measures

    bench = step_time.build(args.model, args.batch, unit=args.unit)
    model = step_time.training_setup(args.model, args.batch, unit=args.unit).model
    images = bench.batches[0]["image"].astype("float32")
    probe = jax.jit(
        lambda params, stats, x: identity_measures(
            model, {"params": params, "batch_stats": stats}, x, jax.random.key(0)
        )
    )
    start = time.perf_counter()
    compiled = probe.lower(bench.state.params, bench.state.batch_stats, images).compile()
    probe_compile_s = time.perf_counter() - start
    bench.run(1)  # warm-up
    bench.clear()
    probe_times = []
    for _ in range(args.rounds):
        bench.run(args.steps)
        for _ in range(args.steps):
            start = time.perf_counter()
            jax.block_until_ready(compiled(bench.state.params, bench.state.batch_stats, images))
            probe_times.append(time.perf_counter() - start)
    return bench, probe_times, probe_compile_s


def _off_call_ns() -> float:
    """Nanoseconds of one `maybe_log` call with the diagnostics off."""
    from resnet_identity.training.diagnostics import Diagnostics

    off = Diagnostics(0, model=None, dataset=None, logger=None, batch_size=8, seed=0, sharding=None, replicated=None)
    calls = 100_000
    return timeit.timeit(lambda: off.maybe_log(7, None), number=calls) / calls * 1e9


def main(argv: list[str] | None = None) -> list[dict]:
    from benchmarks import step_time

    args = _parse(argv)
    bench, probe_times, probe_compile_s = _time_step_and_probe(args)
    step_s, probe_s = statistics.median(bench.timings), statistics.median(probe_times)
    off_ns = _off_call_ns()

    label = {
        "model": args.model,
        "unit": args.unit or "default",
        "batch": args.batch,
        "loadavg_1m_5m": step_time.load_average(),
    }
    rows = [
        {**label, "figure": "train step", "ms": round(1000 * step_s, 1), "timed": len(bench.timings)},
        {
            **label,
            "figure": "diagnostics pass",
            "ms": round(1000 * probe_s, 1),
            "timed": len(probe_times),
            "compile_s": round(probe_compile_s, 2),
        },
        {**label, "figure": "off: maybe_log call", "ns": round(off_ns)},
        {
            **label,
            "figure": "on: overhead per step",
            **{f"every_{n}": f"{100 * probe_s / (n * step_s):.2f}%" for n in (1, 10, 100, 1000)},
        },
    ]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
