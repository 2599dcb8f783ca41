"""The side-by-side comparisons of issue 4 ("Depth at no cost"), in ONE process.

    python -m benchmarks.compare                      # everything, full size (CPU: ~30 min)
    python -m benchmarks.compare --quick              # shrunk: small batch, few steps
    python -m benchmarks.compare --sections=scan,torch --model=cifar_preact164 --batch=32

Sections (each prints JSON lines, then a one-line summary of its ratio):
- ready:  init + compile of `--ready_models` (164 and 1001, scanned), and 1001 / 164.
- scan:   steady step of `--model` scanned vs unrolled (`scan=False`); scanned / unrolled.
- remat:  temporary memory of `--memory_model` at `--memory_batch` for every remat scheme
          (compile only, nothing runs), the cut vs no remat; and the steady step of
          `--model` with `remat=True` vs none.
- torch:  the JAX step of pre-act ResNet-164 vs PyTorch eager (`torch_reference.py`).
- bf16:   steady step of `--model` in bfloat16 vs float32.

Timed configurations of one section are stepped in alternating rounds (A, B, A, B, ...),
so a load change on a shared machine hits both sides alike; the medians are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from benchmarks import step_time
from resnet_identity import xla_config


def _print(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


def _ratio(name: str, numerator: float, denominator: float, target: str) -> dict[str, Any]:
    row = {"comparison": name, "ratio": round(numerator / denominator, 3), "target": target}
    _print(row)
    return row


def alternate(benches: list[step_time.Bench], rounds: int, steps: int) -> list[dict[str, Any]]:
    """Warms each bench up, then runs `rounds` x `steps` steps of each in turn."""
    for bench in benches:
        bench.run(1)
        bench.timings.clear()
    for _ in range(rounds):
        for bench in benches:
            bench.run(steps)
    results = [bench.result() for bench in benches]
    for result in results:
        _print(result)
    return results


def ready(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for name in args.ready_models:
        bench = step_time.build(name, args.ready_batch)
        results.append(bench.result())
        _print(results[-1])
        del bench
    return [_ratio(f"ready {results[-1]['model']} / {results[0]['model']}",
                   results[-1]["ready_s"], results[0]["ready_s"], "<= 1.5 (and 1001 <= 15 s)")]


def scan(args: argparse.Namespace) -> list[dict[str, Any]]:
    benches = [step_time.build(args.model, args.batch, scan=scan_, depth=args.depth) for scan_ in (True, False)]
    scanned, unrolled = alternate(benches, args.rounds, args.steps)
    return [_ratio("step scan / unrolled", scanned["step_ms"], unrolled["step_ms"], "<= 1.1")]


def remat(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows, none_bytes = [], None
    for scheme in ("none", "unit", "block", "nested"):
        bench = step_time.build(args.memory_model, args.memory_batch, compile_only=True, remat=scheme)
        result = bench.result()
        _print(result)
        none_bytes = none_bytes or result["temp_bytes"]
        rows.append(_ratio(f"temp memory none / {scheme}", none_bytes, result["temp_bytes"],
                           ">= 15 (and <= 2 GiB) for remat=True"))
    benches = [step_time.build(args.model, args.batch, remat=r, depth=args.depth) for r in (True, False)]
    with_remat, without = alternate(benches, args.rounds, args.steps)
    rows.append(_ratio(f"step remat={with_remat['remat']} / none", with_remat["step_ms"], without["step_ms"],
                       "<= 1.5"))
    return rows


def torch(args: argparse.Namespace) -> list[dict[str, Any]]:
    from benchmarks import torch_reference

    bench = step_time.build("cifar_preact164", args.torch_batch)
    torch_steps = {layout: torch_reference.build(args.torch_batch, args.threads, channels_last=layout)
                   for layout in (False, True)}
    times: dict[bool, list[float]] = {False: [], True: []}
    bench.run(1)
    bench.timings.clear()
    for step in torch_steps.values():
        step()
    for _ in range(args.rounds):
        bench.run(args.steps)
        for layout, step in torch_steps.items():
            times[layout].extend(step() for _ in range(args.steps))
    jax_result = bench.result()
    _print(jax_result)
    best = None
    for layout, ts in times.items():
        ms = 1000 * statistics.median(ts)
        _print({**torch_reference.label(args.torch_batch, args.threads, layout), "step_ms": round(ms, 1),
                "images_per_s": round(args.torch_batch / ms * 1000, 1)})
        best = ms if best is None else min(best, ms)
    return [_ratio("step torch (best layout) / jax", best, jax_result["step_ms"], ">= 1.0")]


def bf16(args: argparse.Namespace) -> list[dict[str, Any]]:
    benches = [step_time.build(args.model, args.batch, dtype=d, depth=args.depth) for d in ("bfloat16", "float32")]
    low, full = alternate(benches, args.rounds, args.steps)
    return [_ratio("step bfloat16 / float32", low["step_ms"], full["step_ms"], "(informational on CPU)")]


SECTIONS = {"ready": ready, "scan": scan, "remat": remat, "torch": torch, "bf16": bf16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of ready,scan,remat,torch,bf16")
    parser.add_argument("--model", default="cifar_preact1001", help="model of the scan, remat and bf16 timings")
    parser.add_argument("--depth", type=int, default=None, help="depth override for --model")
    parser.add_argument("--batch", type=int, default=8, help="batch of the scan, remat and bf16 timings")
    parser.add_argument("--ready_models", default="cifar_preact164,cifar_preact1001")
    parser.add_argument("--ready_batch", type=int, default=32)
    parser.add_argument("--memory_model", default="cifar_preact1001")
    parser.add_argument("--memory_batch", type=int, default=128)
    parser.add_argument("--torch_batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (XLA:CPU uses every core)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration per round")
    parser.add_argument("--quick", action="store_true",
                        help="shrink for a smoke run: 164 at depth 47, batch 4, memory at batch 16, 1 round")
    parser.add_argument("--xla", default=xla_config.DEFAULT_PRESET, choices=tuple(xla_config.PRESETS))
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.depth, args.batch, args.rounds, args.steps = "cifar_preact164", 47, 4, 1, 2
        args.memory_batch, args.ready_batch, args.torch_batch = 16, 8, 8
    args.ready_models = args.ready_models.split(",")
    args.sections = args.sections.split(",")
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {sorted(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    xla_config.configure(args.xla)
    summary = []
    for name, section in SECTIONS.items():
        if name in args.sections:
            summary.extend(section(args))
    print("summary:", json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
