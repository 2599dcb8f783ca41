"""The side-by-side comparisons of issue 4 ("Depth at no cost"), run in one process.

    python -m benchmarks.compare                      # everything, full size (CPU: ~30 min)
    python -m benchmarks.compare --quick              # shrunk: small batch, few steps
    python -m benchmarks.compare --sections=scan,torch --model=cifar_preact164 --batch=32

Sections (each prints JSON lines, then a one-line summary of its ratio):
- ready:  init + compile of `--ready_models` (164 and 1001, scanned), and 1001 / 164,
          with the init compiled as `trainer.py` does (-O0 on CPU) and at XLA's default -O2.
- scan:   steady step of `--model` scanned vs unrolled (`scan=False`); scanned / unrolled.
- remat:  temporary memory of `--memory_model` at `--memory_batch` for every remat scheme
          (compile only, nothing runs), the cut vs no remat; and the steady step of
          `--model` with `remat=True` vs none.
- torch:  the JAX step of pre-act ResNet-164 vs PyTorch eager (`torch_reference.py`, in a
          child process per round, contiguous and channels-last; the faster counts).
- bf16:   loss curves of `--curve_steps` steps on digits, bfloat16 vs float32 (printed),
          and their gap against the float32 seed-to-seed gap.
- trees:  ready time, temporary memory and steady step of each `--tree_models` entry built
          from each of two source trees (`--trees=BEFORE,AFTER`: git revisions or folders
          holding `resnet_identity/`), for a before/after of a code change in one process.

Timed configurations of one section are stepped in alternating rounds (A, B, A, B, ...),
so a load change on a shared machine hits both sides alike; the medians are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pathlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from typing import Any

from benchmarks import step_time
from resnet_identity.models.stack import resolve_remat
from resnet_identity.training import xla_config


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
        bench.clear()
    for _ in range(rounds):
        for bench in benches:
            bench.run(steps)
    results = [bench.result() for bench in benches]
    for result in results:
        _print(result)
    return results


def ready(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for fast_init in (False, True):
        results = []
        for name in args.ready_models:
            results.append(step_time.build(name, args.ready_batch, fast_init=fast_init).result())
            _print(results[-1])
        rows.append(
            _ratio(
                f"ready {results[-1]['model']} / {results[0]['model']} (fast_init={fast_init}; "
                f"{results[-1]['ready_s']} s)",
                results[-1]["ready_s"],
                results[0]["ready_s"],
                "<= 1.5, and 1001 <= 15 s",
            )
        )
    return rows


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
        target = "<= 2 GiB; >= 15x below no remat" if scheme == resolve_remat(True) else "(reference)"
        rows.append(
            _ratio(f"temp memory none / {scheme} ({result['temp_gib']} GiB)", none_bytes, result["temp_bytes"], target)
        )
    benches = [step_time.build(args.model, args.batch, remat=r, depth=args.depth) for r in (True, False)]
    with_remat, without = alternate(benches, args.rounds, args.steps)
    rows.append(_ratio(f"step remat={with_remat['remat']} / none", with_remat["step_ms"], without["step_ms"], "<= 1.5"))
    return rows


def _torch_round(args: argparse.Namespace, channels_last: bool) -> dict[str, Any]:
    """One `torch_reference` run in a child process: torch and XLA in one process slow
    each other's thread pools (JAX's CPU seconds per step went from 1.5 to 2.7)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.torch_reference",
        f"--batch={args.torch_batch}",
        f"--threads={args.threads}",
        f"--steps={args.steps}",
    ] + (["--channels_last"] if channels_last else [])
    done = subprocess.run(
        command, cwd=pathlib.Path(__file__).resolve().parents[1], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def torch(args: argparse.Namespace) -> list[dict[str, Any]]:
    benches = [
        step_time.build("cifar_preact164", args.torch_batch, remat=remat) for remat in args.torch_remat.split(",")
    ]
    for bench in benches:
        bench.run(1)
        bench.clear()
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for bench in benches:
            bench.run(args.steps)
        for channels_last in runs:
            runs[channels_last].append(_torch_round(args, channels_last))
    jax_results = [bench.result() for bench in benches]
    for jax_result in jax_results:
        _print(jax_result)
    best = None
    for rows in runs.values():
        times = [t for row in rows for t in row["step_times_ms"]]
        cpu = [t for row in rows for t in row["cpu_s_per_step_all"]]
        summary = {k: v for k, v in rows[-1].items() if not k.endswith("_all") and k != "step_times_ms"}
        summary.update(
            step_ms=round(statistics.median(times), 1),
            step_ms_min=round(min(times), 1),
            cpu_s_per_step=round(statistics.median(cpu), 2),
            timed_steps=len(times),
            images_per_s=round(args.torch_batch / statistics.median(times) * 1000, 1),
        )
        _print(summary)
        best = summary["step_ms"] if best is None else min(best, summary["step_ms"])
    return [
        _ratio(f"step torch (best layout) / jax (remat={r['remat']})", best, r["step_ms"], ">= 1.0")
        for r in jax_results
    ]


def _loss_curve(args: argparse.Namespace, dtype: str, seed: int) -> list[float]:
    import jax

    setup = step_time.training_setup(
        args.curve_model, args.curve_batch, dataset="digits", seed=seed, depth=args.curve_depth, dtype=dtype
    )
    state, losses = setup.init(setup.init_key), []
    for _ in range(args.curve_steps):
        state, metrics = setup.step(state, jax.device_put(next(setup.host_batches)))
        losses.append(float(metrics["loss"]))
    return losses


def bf16(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Training-loss curves on digits: bfloat16 vs float32 (same seed), measured against the
    gap between two float32 runs with different seeds (init and data order), the noise."""
    curves = {
        "float32": _loss_curve(args, "float32", 0),
        "bfloat16": _loss_curve(args, "bfloat16", 0),
        "float32_seed1": _loss_curve(args, "float32", 1),
    }
    for step in range(args.curve_steps):
        _print({"step": step, **{name: round(curve[step], 4) for name, curve in curves.items()}})
    window = slice(-10, None)

    def gap(a: str, b: str) -> float:
        return statistics.mean(abs(x - y) for x, y in zip(curves[a], curves[b]))

    _print({"final_10_step_mean": {name: round(statistics.mean(c[window]), 4) for name, c in curves.items()}})
    return [
        _ratio(
            "loss gap bf16-f32 / f32 seed gap (mean over steps)",
            gap("bfloat16", "float32"),
            gap("float32_seed1", "float32"),
            "<= 1 (within seed noise)",
        )
    ]


REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def _source_root(tree: str) -> pathlib.Path:
    """A folder holding `resnet_identity/`: `tree` itself if it is one, else that package as of
    the git revision `tree`, extracted into a temporary folder."""
    if (pathlib.Path(tree) / "resnet_identity").is_dir():
        return pathlib.Path(tree).resolve()
    archive = subprocess.run(
        ["git", "archive", tree, "resnet_identity"], cwd=REPOSITORY, check=True, capture_output=True
    ).stdout
    root = pathlib.Path(tempfile.mkdtemp(prefix="compare_tree_"))
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(root, filter="data")
    return root


def _drop_package() -> dict[str, Any]:
    return {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name == "resnet_identity" or name.startswith("resnet_identity.")
    }


@contextlib.contextmanager
def _package_from(root: pathlib.Path) -> Iterator[None]:
    """Within the block, `import resnet_identity` reads `root`'s; what was built there keeps
    its own modules afterwards (a compiled step holds no reference to the package)."""
    saved = _drop_package()
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        _drop_package()
        sys.modules.update(saved)


def trees(args: argparse.Namespace) -> list[dict[str, Any]]:
    roots = [_source_root(tree) for tree in args.trees]
    rows = []
    for index, entry in enumerate(args.tree_models):
        name, _, batch = entry.partition(":")
        order = [0, 1] if index % 2 == 0 else [1, 0]  # who builds first alternates: no side always warms the other
        benches: list[Any] = [None, None]
        for side in order:
            with _package_from(roots[side]):
                benches[side] = step_time.build(name, int(batch or args.batch))
            benches[side].label["tree"] = args.trees[side]
        before, after = alternate(benches, args.rounds, args.steps)
        label = f"{name} {args.trees[1]} / {args.trees[0]}"
        rows.append(_ratio(f"step {label}", after["step_ms"], before["step_ms"], "<= 1 (within noise)"))
        rows.append(_ratio(f"ready {label}", after["ready_s"], before["ready_s"], "<= 1 (within noise)"))
        rows.append(_ratio(f"temp memory {label}", after["temp_bytes"], before["temp_bytes"], "<= 1"))
    return rows


SECTIONS = {"ready": ready, "scan": scan, "remat": remat, "torch": torch, "bf16": bf16, "trees": trees}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS)
    )
    parser.add_argument("--model", default="cifar_preact1001", help="model of the scan and remat timings")
    parser.add_argument("--depth", type=int, default=None, help="depth override for --model")
    parser.add_argument("--batch", type=int, default=8, help="batch of the scan and remat timings")
    parser.add_argument("--ready_models", default="cifar_preact164,cifar_preact1001")
    parser.add_argument("--ready_batch", type=int, default=32)
    parser.add_argument("--memory_model", default="cifar_preact1001")
    parser.add_argument("--memory_batch", type=int, default=128)
    parser.add_argument("--torch_batch", type=int, default=32)
    parser.add_argument(
        "--torch_remat",
        default="none,elementwise",
        help="remat schemes of the JAX steps timed against torch, comma-separated",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (XLA:CPU uses every core)")
    parser.add_argument("--curve_model", default="cifar_preact164")
    parser.add_argument("--curve_depth", type=int, default=29, help="depth of the bf16 curve model")
    parser.add_argument("--curve_batch", type=int, default=32)
    parser.add_argument("--curve_steps", type=int, default=50)
    parser.add_argument(
        "--trees",
        default="HEAD,.",
        help="the two source trees of the trees section, "
        "BEFORE,AFTER: git revisions or folders holding resnet_identity/ ('.': this checkout)",
    )
    parser.add_argument(
        "--tree_models",
        default="cifar_preact164:32,cifar_preact1001:8,resnet50:8",
        help="MODEL:BATCH entries of the trees section, comma-separated",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration per round")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shrink for a smoke run: 164 at depth 47, batch 4, memory at batch 16, 1 round, 10-step curves",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.depth, args.batch, args.rounds, args.steps = "cifar_preact164", 47, 4, 1, 2
        args.memory_batch, args.ready_batch, args.torch_batch, args.curve_steps = 16, 8, 8, 10
    args.ready_models = args.ready_models.split(",")
    args.trees, args.tree_models = args.trees.split(","), args.tree_models.split(",")
    if len(args.trees) != 2:
        parser.error(f"--trees={','.join(args.trees)}: give two trees, BEFORE,AFTER")
    args.sections = args.sections.split(",")
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {sorted(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    summary = []
    for name, section in SECTIONS.items():
        if name in args.sections:
            summary.extend(section(args))
    print("summary:", json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    xla_config.use_huge_pages()
    main()
