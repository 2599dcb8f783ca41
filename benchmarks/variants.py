"""Times named variants of one training step in one process, under a time budget.

    python -m benchmarks.variants --plan=gpu [--budget_s=500] [--out=DIR]
    python -m benchmarks.variants --plan=smoke          # tiny, for CPU and the tests

A variant is a `step_time.build` configuration: model, batch, model overrides, whether 1x1
convolutions are matrix products (`kernels.pointwise_products`) and XLA options. A
variant may instead name earlier variants (`best_of`): it then takes the fastest of those
that ran, plus its own options, so a plan can try compiler options on whichever form won.
`improvements_of` adds the options of the named option variants that beat the form they were
tried on by more than 1%, so a plan's last variants combine what helped.
Variants run in the plan's order, most informative first; none starts once `--budget_s`
has passed, so a lease-limited run ends with what it measured so far. Each prints one JSON
line (`step_time`'s fields and `hlo_census.summary` of the compiled step), appended to
`OUT/variants.jsonl` as it goes; `--hlo` names variants whose optimised HLO is saved
(gzipped) beside it. A `check` entry compares the loss and gradients of a small model with
1x1 products and with library convolutions on this device, before anything is timed.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

from benchmarks import hlo_census, step_time
from resnet_identity.training import xla_config

# XLA:GPU options aimed at the scan's bookkeeping (per-iteration slice copies, residual writes
# and zero-fills: benchmarks/results/history/2026-11-23.md, "7. GPU (one H200)").
_CONV_FUSION = "xla_gpu_experimental_enable_conv_fusion"
BOOKKEEPING = {k: v for k, v in xla_config.GPU_STEP_OPTIONS.items() if k != _CONV_FUSION}

_1001 = {"model": "cifar_preact1001", "batch": 128, "dtype": "bfloat16", "steps": 5}
_1001_FORMS = [
    "1001_unit3_conv",
    "1001_unit3_products",
    "1001_elementwise_conv",
    "1001_elementwise_products",
    "1001_elementwise3_products",
    "1001_none3_products",
]
_R50 = {"model": "resnet50", "batch": 256, "dtype": "bfloat16", "steps": 10}

_1001_OPTIONS = ["1001_best_bookkeeping", "1001_best_pdl", "1001_best_conv_fusion", "1001_best_triton_any"]

PLANS: dict[str, list[dict[str, Any]]] = {
    # The exploration of 2026-11-29 (benchmarks/results/history/2026-11-29.md), when the GPU
    # step had no options of its own: to reproduce it, turn each of `xla_config.GPU_STEP_OPTIONS`
    # off in XLA_FLAGS (`gpu_suite.sh explore` does).
    "gpu": [
        {"check": "cifar_preact164", "depth": 29, "batch": 16},
        {"name": "1001_unit3_conv", **_1001, "remat": "unit", "unroll": 3, "products": False},
        {"name": "1001_unit3_products", **_1001, "remat": "unit", "unroll": 3, "products": True},
        {"name": "1001_elementwise_products", **_1001, "remat": "elementwise", "products": True},
        {"name": "1001_elementwise_conv", **_1001, "remat": "elementwise", "products": False},
        {"name": "1001_best_bookkeeping", "best_of": _1001_FORMS, "options": BOOKKEEPING},
        {"name": "1001_best_pdl", "best_of": _1001_FORMS, "options": {"xla_gpu_enable_pdl": True}},
        {"name": "1001_best_conv_fusion", "best_of": _1001_FORMS, "options": {_CONV_FUSION: True}},
        {"name": "r50_unrolled_conv", **_R50, "scan": False, "products": False},
        {"name": "r50_unrolled_products", **_R50, "scan": False, "products": True},
        {"name": "1001_best_triton_any", "best_of": _1001_FORMS, "options": {"xla_gpu_triton_gemm_any": True}},
        {"name": "1001_combined", "best_of": _1001_FORMS, "improvements_of": _1001_OPTIONS, "profile": True},
        {"name": "r50_scanned_products", **_R50, "remat": "none", "products": True, "improvements_of": _1001_OPTIONS},
        {
            "name": "1001_elementwise3_products",
            **_1001,
            "remat": "elementwise",
            "unroll": 3,
            "products": True,
            "improvements_of": _1001_OPTIONS,
        },
        {
            "name": "1001_fp32_combined",
            "best_of": _1001_FORMS + ["1001_elementwise3_products"],
            "dtype": "float32",
            "improvements_of": _1001_OPTIONS,
        },
    ],
    # The defaults as they are (`kernels.product_platforms()`, `xla_config.step_compiler_options`).
    "gpu_defaults": [
        {"check": "cifar_preact164", "depth": 20, "batch": 16, "precision": "highest"},
        {"name": "1001_bf16", **_1001},
        {"name": "1001_fp32", **_1001, "dtype": "float32"},
        {"name": "r50_unrolled", **_R50, "scan": False},
        {"name": "r50_scanned", **_R50},
        {"name": "164_scanned_fp32", "model": "cifar_preact164", "batch": 128, "steps": 10},
        {"name": "164_unrolled_fp32", "model": "cifar_preact164", "batch": 128, "steps": 10, "scan": False},
        {"name": "r50_unrolled_1024", **_R50, "batch": 1024, "steps": 5, "scan": False},
    ],
    "smoke": [
        {"check": "cifar_preact164", "depth": 11, "batch": 4},
        {"name": "a", "model": "cifar_preact164", "depth": 11, "batch": 4, "steps": 2, "products": False},
        {"name": "b", "model": "cifar_preact164", "depth": 11, "batch": 4, "steps": 2, "remat": "unit"},
        {"name": "o", "best_of": ["a", "b"], "options": {"xla_cpu_use_fusion_emitters": True}},
        {"name": "best", "best_of": ["a", "b"], "improvements_of": ["o"], "profile": True},
    ],
}
_BUILD_KEYS = ("model", "batch", "dtype", "remat", "unroll", "depth", "products")


def check_products(model_name: str, depth: int, batch: int, precision: str | None = None) -> dict[str, Any]:
    """Loss and gradients of `model_name` (fp32, no remat) with 1x1 products and with library
    convolutions, same parameters and batch: their largest relative difference per leaf.
    `precision` ("highest": no TF32) is the default matmul and convolution precision."""
    import jax
    import numpy as np

    from resnet_identity import models
    from resnet_identity.models import kernels
    from resnet_identity.training.train_state import cross_entropy

    platform = step_time.lowering_platform()
    images = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3))
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    results = []
    for platforms in ((platform,), ()):
        with kernels.pointwise_products(platforms), jax.default_matmul_precision(precision):
            model = models.create_model(model_name, num_classes=10, depth=depth, remat="none")
            variables = model.init(jax.random.key(0), images[:1], train=False)

            def loss(params, model=model, variables=variables):
                logits, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
                return cross_entropy(logits, labels).mean()

            results.append(jax.jit(jax.value_and_grad(loss))(variables["params"]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    relative = [
        float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
        for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b))
    ]
    return {
        "check": f"products vs convolutions, {model_name} depth {depth} batch {batch} fp32, "
        f"precision {precision or 'default'}",
        "platform": platform,
        "loss": [float(loss_a), float(loss_b)],
        "grad_relative_diff_max": max(relative),
        "grad_relative_diff_median": sorted(relative)[len(relative) // 2],
    }


def _improving_options(names: list[str], done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The options of those of `names` that ran more than 1% faster than the form they were added to."""
    options: dict[str, Any] = {}
    for name in names:
        result = done.get(name, {})
        base = done.get(result.get("from", ""), {})
        if result.get("step_ms") and base.get("step_ms") and result["step_ms"] < 0.99 * base["step_ms"]:
            options.update(result["_variant"]["_added_options"])
    return options


def _resolve(variant: dict[str, Any], done: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The variant to build: `best_of` replaced by the fastest of the named variants that ran
    (with its options), `improvements_of` by the options that helped; None if `best_of` names
    none that ran."""
    variant = dict(variant)
    added = {**_improving_options(variant.pop("improvements_of", []), done), **variant.get("options", {})}
    if "best_of" in variant:
        ran = [done[name] for name in variant.pop("best_of") if done.get(name, {}).get("step_ms")]
        if not ran:
            return None
        best = min(ran, key=lambda r: r["step_ms"])
        base = {k: best["_variant"][k] for k in (*_BUILD_KEYS, "steps", "scan", "options") if k in best["_variant"]}
        variant = {
            **base,
            **{k: v for k, v in variant.items() if k != "options"},
            "from": best["_variant"]["name"],
            "options": {**base.get("options", {}), **added},
        }
    else:
        variant["options"] = added
    variant["_added_options"] = added
    return variant


def run_variant(variant: dict[str, Any], *, windows: int, out: pathlib.Path, save_hlo: bool) -> dict[str, Any]:
    """Builds and times one variant (`step_time.time_steps`); saves its HLO (`save_hlo`) and,
    for a variant marked "profile", a perfetto trace of 3 more steps, into `out`."""
    kwargs = {k: variant[k] for k in _BUILD_KEYS if k in variant}
    bench = step_time.build(
        kwargs.pop("model"),
        kwargs.pop("batch"),
        scan=variant.get("scan", True),
        compiler_options=variant.get("options") or None,
        **kwargs,
    )
    text = bench.step.as_text()
    if save_hlo:
        with gzip.open(out / f"{variant['name']}.hlo.txt.gz", "wt") as f:
            f.write(text)
    with tempfile.TemporaryDirectory() as trace_dir:
        timing = step_time.time_steps(
            bench, steps=variant["steps"], windows=windows, profile_dir=trace_dir if variant.get("profile") else None
        )
        for trace in pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz"):
            shutil.move(trace, out / f"{variant['name']}.perfetto.json.gz")
    del bench
    gc.collect()
    return {
        "variant": variant["name"],
        **({"from": variant["from"]} if "from" in variant else {}),
        **timing,
        "hlo": hlo_census.summary(text),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default="gpu", choices=sorted(PLANS))
    parser.add_argument("--budget_s", type=float, default=500.0, help="start no variant after this many seconds")
    parser.add_argument("--windows", type=int, default=2, help="pipelined windows of a variant's steps")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/variants"))
    parser.add_argument("--hlo", default="", help="comma-separated variants whose optimised HLO is saved")
    parser.add_argument("--only", default="", help="comma-separated variant names to run (default: all)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, done, rows = time.perf_counter(), {}, []
    only = set(filter(None, args.only.split(",")))

    def emit(row: dict[str, Any]) -> None:
        row = {**row, "elapsed_s": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(out / "variants.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    for entry in PLANS[args.plan]:
        if time.perf_counter() - start > args.budget_s:
            emit({"skipped": entry.get("name", entry.get("check")), "reason": "budget"})
            continue
        if "check" in entry:
            emit(check_products(entry["check"], entry["depth"], entry["batch"], entry.get("precision")))
            continue
        if only and entry["name"] not in only:
            continue
        variant = _resolve(entry, done)
        if variant is None:
            emit({"skipped": entry["name"], "reason": "none of best_of ran"})
            continue
        save_hlo = entry["name"] in args.hlo.split(",") or bool(entry.get("profile"))
        try:
            result = run_variant(variant, windows=args.windows, out=out, save_hlo=save_hlo)
        except Exception as error:  # a rejected option or an out-of-memory: record it, go on
            emit({"variant": entry["name"], "failed": f"{type(error).__name__}: {str(error)[:500]}"})
            continue
        done[entry["name"]] = {**result, "_variant": variant}
        emit(result)
    timed = sorted((r for r in rows if r.get("step_ms")), key=lambda r: r["step_ms"])
    for r in timed:
        print(
            f"{r['variant']:<36} {r['step_ms']:>8} ms  {r['images_per_s']:>9} img/s  ready {r['ready_s']:>6} s  "
            f"launches {r['hlo']['launches']:>6}  temp {r['temp_gib']} GiB",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    xla_config.use_huge_pages()
    main()
