"""Times what training runs: parameter init, compiling the train step, and the steady step.

    python -m benchmarks.step_time --model=cifar_preact1001 --batch=32 [--dtype=bfloat16]
        [--remat[=SCHEME]] [--unrolled] [--steps=N] [--windows=W] [--depth=D] [--no-fast_init]
        [--products | --no-products] [--compiler_option=NAME=VALUE ...]

prints ONE JSON line: init seconds (jitted `create_train_state`, as `trainer.py` runs it),
compile seconds (lowering + XLA compile of `train_step`), the median steady step over N
timed steps, images/s, XLA's temporary-buffer bytes (`memory_analysis()`), and MFU where
the device's peak is known, with training FLOPs = 6 x forward multiply-adds
(docs/papers.md "Compute"). The step is the real `train_state.train_step` with `optim.sgd`
(momentum 0.9, weight decay 1e-4) on in-process synthetic data (no TensorFlow/TFDS).
The 1- and 5-minute load averages are printed too: on a shared machine they say how
much the figures can be trusted, as do the fastest step and the CPU seconds per step.
Run as a program, it first re-executes itself with huge pages for malloc, as training
should (`resnet_identity/training/xla_config.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from resnet_identity.training import xla_config

# Dense peak FLOP/s per device (vendor figures), by substrings of `device_kind`. float32
# on NVIDIA counts TF32 tensor cores, which JAX's default matmul precision uses there.
PEAK_FLOPS = {
    ("H200", "H100"): {"bfloat16": 989e12, "float32": 495e12},
    ("A100",): {"bfloat16": 312e12, "float32": 156e12},
    ("L4",): {"bfloat16": 121e12, "float32": 60e12},
    ("TPU v4",): {"bfloat16": 275e12},
    ("TPU v5 lite", "TPU v5e"): {"bfloat16": 197e12},
    ("TPU v5p", "TPU v5"): {"bfloat16": 459e12},
    ("TPU v6 lite", "TPU v6e"): {"bfloat16": 918e12},
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The device's dense peak for `dtype`, or None where it is not in `PEAK_FLOPS` (CPUs)."""
    for kinds, peaks in PEAK_FLOPS.items():
        if any(kind in device_kind for kind in kinds):
            return peaks.get(dtype)
    return None


@dataclasses.dataclass
class Bench:
    """One compiled training configuration, ready to step."""

    label: dict[str, Any]
    state: Any
    step: Callable
    batches: list[dict[str, Any]]
    init_s: float
    lower_s: float
    compile_s: float
    ready_cpu_s: float
    temp_bytes: int | None
    flops_per_step: float
    timings: list[float] = dataclasses.field(default_factory=list)
    cpu_timings: list[float] = dataclasses.field(default_factory=list)
    _next: int = 0

    def run(self, steps: int) -> None:
        """Runs `steps` steps, appending each one's wall time (to results on device) and the
        process's CPU time (user + system, all threads), which a busy machine inflates less."""
        for _ in range(steps):
            batch = self._next_batch()
            cpu, start = cpu_seconds(), time.perf_counter()
            self.state, metrics = self.step(self.state, batch)
            _block(self.state, metrics)
            self.timings.append(time.perf_counter() - start)
            self.cpu_timings.append(cpu_seconds() - cpu)

    def _next_batch(self) -> dict[str, Any]:
        batch = self.batches[self._next % len(self.batches)]
        self._next += 1
        return batch

    def run_pipelined(self, steps: int) -> None:
        """Dispatches `steps` steps back to back and waits once, as training does (it never
        waits on a step's result); appends the mean step time of the window. On an
        accelerator this leaves out the host round trip that `run` pays on every step."""
        cpu, start = cpu_seconds(), time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self._next_batch())
        _block(self.state, metrics)
        self.timings.append((time.perf_counter() - start) / steps)
        self.cpu_timings.append((cpu_seconds() - cpu) / steps)

    def clear(self) -> None:
        self.timings.clear()
        self.cpu_timings.clear()

    def result(self) -> dict[str, Any]:
        import jax

        device = jax.devices()[0]
        step_s = statistics.median(self.timings) if self.timings else None
        peak = peak_flops(device.device_kind, self.label["dtype"])
        batch = self.label["batch"]
        return {
            **self.label,
            "init_s": round(self.init_s, 2),
            "compile_s": round(self.lower_s + self.compile_s, 2),
            "lower_s": round(self.lower_s, 2),
            "xla_compile_s": round(self.compile_s, 2),
            "ready_s": round(self.init_s + self.lower_s + self.compile_s, 2),
            "ready_cpu_s": round(self.ready_cpu_s, 2),
            "step_ms": round(1000 * step_s, 1) if step_s else None,
            "step_ms_min": round(1000 * min(self.timings), 1) if self.timings else None,
            "cpu_s_per_step": round(statistics.median(self.cpu_timings), 2) if self.cpu_timings else None,
            "timed_steps": len(self.timings),
            "images_per_s": round(batch / step_s, 1) if step_s else None,
            "temp_bytes": self.temp_bytes,
            "temp_gib": round(self.temp_bytes / 2**30, 3) if self.temp_bytes is not None else None,
            "train_gflop_per_step": round(self.flops_per_step / 1e9, 2),
            "mfu": round(self.flops_per_step / step_s / peak, 4) if (peak and step_s) else None,
            "peak_tflops": peak / 1e12 if peak else None,
            "device": f"{device.platform}:{device.device_kind}",
            "devices": jax.device_count(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "loadavg_1m_5m": load_average(),
        }


def cpu_seconds() -> float:
    """CPU seconds this process has used so far: user + system, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> list[float]:
    """The 1- and 5-minute load averages: how far a shared machine may skew a timing."""
    return [round(x, 2) for x in os.getloadavg()[:2]]


def _block(*trees: Any) -> None:
    import jax

    jax.block_until_ready(trees)


def model_overrides(
    *,
    unrolled: bool = False,
    remat: bool | str | None = None,
    dtype: str = "float32",
    depth: int | None = None,
    unroll: int | None = None,
) -> dict[str, Any]:
    overrides: dict[str, Any] = {"scan": not unrolled, "remat": remat, "dtype": dtype}
    if depth is not None:
        overrides["depth"] = depth
    if unroll is not None:
        overrides["unroll"] = unroll
    return overrides


@dataclasses.dataclass
class Setup:
    """What `trainer.py` builds for training, minus the mesh: jitted init and step, data."""

    model: Any
    image_size: int
    init: Callable
    init_key: Any
    step: Callable
    host_batches: Iterator[dict[str, Any]]


def _training_module(name: str) -> Any:
    """`resnet_identity.training.<name>`, or `resnet_identity.<name>` in a source tree from before
    the training modules had their folder (`compare --sections=trees` builds from both)."""
    import importlib

    try:
        return importlib.import_module(f"resnet_identity.training.{name}")
    except ModuleNotFoundError:
        return importlib.import_module(f"resnet_identity.{name}")


def training_setup(
    model_name: str, batch: int, *, dataset: str = "synthetic", num_classes: int = 10, seed: int = 0, **overrides: Any
) -> Setup:
    """The model, `optim.sgd` with the papers' CIFAR schedule, and `train_step` over `dataset`
    ("synthetic" random images at the model's input size, or "digits"); None overrides are dropped."""
    import jax
    import ml_collections

    from resnet_identity import models
    from resnet_identity.data import get_dataset

    optim, train_state = _training_module("optim"), _training_module("train_state")
    create_train_state, train_step = train_state.create_train_state, train_state.train_step
    overrides = {k: v for k, v in overrides.items() if v is not None}
    model = models.create_model(model_name, num_classes=num_classes, **overrides)
    size = models.input_size(model_name)
    data = get_dataset(
        ml_collections.ConfigDict({"dataset": dataset, "synthetic": {"image_size": size, "num_classes": num_classes}})
    )
    schedule = optim.build_schedule(
        optim.schedule_config("step", boundaries=(32_000, 48_000)), total_steps=64_000, steps_per_epoch=1
    )
    tx = optim.sgd(learning_rate=schedule, momentum=0.9, weight_decay=1e-4)
    init_key, step_key = jax.random.split(jax.random.key(seed))
    init = jax.jit(functools.partial(create_train_state, model, tx, data.image_size))
    step = jax.jit(
        functools.partial(
            train_step, model=model, tx=tx, schedule=schedule, transform=data.train_transform, key=step_key
        ),
        donate_argnums=0,
        compiler_options=xla_config.step_compiler_options(jax.default_backend()),
    )
    return Setup(
        model,
        data.image_size,
        init,
        init_key,
        step,
        data.train_batches(global_batch_size=batch, start_step=0, seed=seed),
    )


def build(
    model_name: str,
    batch: int,
    *,
    compile_only: bool = False,
    fast_init: bool = True,
    num_classes: int = 10,
    seed: int = 0,
    products: bool | None = None,
    compiler_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> Bench:
    """Initialises, lowers and compiles one configuration on synthetic data; `compile_only`
    skips init and data; `fast_init` compiles the init as `trainer.py` does
    (`xla_config.init_compiler_options`: -O0 on CPU); False compiles it at XLA's default.
    `products` True (False) makes 1x1 convolutions matrix products on this backend (library
    convolutions, the CPU excepted: `kernels.pointwise_products`); None keeps
    `kernels.product_platforms()`. `compiler_options` (XLA debug options, such as
    `{"xla_gpu_enable_dynamic_slice_fusion": True}`) are added to the step's own.

    `compile_only` compiles against `jax.eval_shape` of the state, which is all that
    `memory_analysis()` needs: ResNet-1001 at batch 128 is sized without running it.
    """
    if products is None:
        return _build(model_name, batch, compile_only, fast_init, num_classes, seed, compiler_options, overrides)
    from resnet_identity.models import kernels

    platform = lowering_platform()
    platforms = (
        set(kernels.product_platforms()) | {platform} if products else set(kernels.product_platforms()) - {platform}
    )
    with kernels.pointwise_products(sorted(platforms)):
        bench = _build(model_name, batch, compile_only, fast_init, num_classes, seed, compiler_options, overrides)
    bench.label["products"] = products
    return bench


def lowering_platform() -> str:
    """The default backend as `lax.platform_dependent` names it: "cpu", "cuda", "rocm" or "tpu"."""
    import jax

    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    return "rocm" if "rocm" in jax.devices()[0].client.platform_version.lower() else "cuda"


def _initial_state(setup: Any, batches: list, compile_only: bool, fast_init: bool) -> tuple[Any, list, float]:
    """(state, batches, init seconds): shapes only when `compile_only`, else the initialised
    state and the batches on device."""
    import jax

    if compile_only:
        state = jax.eval_shape(setup.init, setup.init_key)
        return state, [jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), batches[0])], 0.0
    start = time.perf_counter()
    options = xla_config.init_compiler_options(jax.default_backend()) if fast_init else None
    state = setup.init.lower(setup.init_key).compile(compiler_options=options)(setup.init_key)
    _block(state)
    return state, [jax.device_put(b) for b in batches], time.perf_counter() - start


def _label(
    model_name: str,
    batch: int,
    fast_init: bool,
    compiler_options: dict[str, Any] | None,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """What identifies a measurement in its JSON line."""
    from resnet_identity.models.stack import resolve_remat

    label = {
        "model": model_name,
        "batch": batch,
        "dtype": "float32",
        "scan": True,
        "fast_init": fast_init,
        **overrides,
        **({"compiler_options": compiler_options} if compiler_options else {}),
    }
    label["remat"] = resolve_remat(overrides.get("remat"), scan=overrides.get("scan", True))
    return label


def _build(
    model_name: str,
    batch: int,
    compile_only: bool,
    fast_init: bool,
    num_classes: int,
    seed: int,
    compiler_options: dict[str, Any] | None,
    overrides: dict[str, Any],
) -> Bench:
    from resnet_identity.models import summary

    overrides = {k: v for k, v in overrides.items() if v is not None}
    setup = training_setup(model_name, batch, num_classes=num_classes, seed=seed, **overrides)
    batches = [next(setup.host_batches) for _ in range(2)]

    ready_cpu = cpu_seconds()
    state, batches, init_s = _initial_state(setup, batches, compile_only, fast_init)
    start = time.perf_counter()
    lowered = setup.step.lower(state, batches[0])
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options=compiler_options)
    compile_s = time.perf_counter() - start
    ready_cpu = cpu_seconds() - ready_cpu
    memory = compiled.memory_analysis()
    flops = 6 * summary.forward_macs(setup.model, setup.image_size) * batch
    return Bench(
        _label(model_name, batch, fast_init, compiler_options, overrides),
        state,
        compiled,
        batches,
        init_s,
        lower_s,
        compile_s,
        ready_cpu,
        memory.temp_size_in_bytes if memory is not None else None,
        flops,
    )


def measure(
    model_name: str,
    batch: int,
    *,
    steps: int = 5,
    warmup: int = 1,
    windows: int = 0,
    profile_dir: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """`build`, then `time_steps`; the result as a dict."""
    return time_steps(
        build(model_name, batch, **overrides), steps=steps, warmup=warmup, windows=windows, profile_dir=profile_dir
    )


def time_steps(
    bench: Bench, *, steps: int, warmup: int = 1, windows: int = 0, profile_dir: str | None = None
) -> dict[str, Any]:
    """`warmup` untimed and `steps` timed steps of a built `bench`; the result as a dict.

    With `windows` > 0 the timing is pipelined: `windows` windows of `steps` steps each,
    waiting only at the end of a window; "step_ms" is then the median window's mean step.
    With `profile_dir`, 3 more steps are traced there (perfetto_trace.json.gz inside).
    """
    bench.run(warmup)
    bench.clear()
    if windows:
        for _ in range(windows):
            bench.run_pipelined(steps)
    else:
        bench.run(steps)
    if profile_dir:  # after the timing, so that tracing cannot slow what is reported
        import jax

        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            bench.run_pipelined(3)
    result = {**bench.result(), "timing": f"pipelined {windows}x{steps}" if windows else "per step"}
    if windows:
        result["timed_steps"] = windows * steps
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_preact164")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--remat",
        nargs="?",
        const=True,
        default=None,
        help="a bare --remat is remat=True (nested), or name a scheme (none, elementwise, unit, "
        "block, nested); without it, the model's default (elementwise)",
    )
    parser.add_argument("--unrolled", action="store_true", help="scan=False: one module per unit")
    parser.add_argument("--depth", type=int, default=None, help="override the depth (tiny models for tests)")
    parser.add_argument("--unroll", type=int, default=None, help="scan unroll factor")
    parser.add_argument(
        "--fast_init",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile the init as trainer.py does (-O0 on CPU); --no-fast_init: XLA's default",
    )
    parser.add_argument(
        "--products",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="1x1 convolutions as matrix products on this backend (--no-products: library "
        "convolutions, except on CPU); default: kernels.product_platforms()",
    )
    parser.add_argument(
        "--compiler_option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an XLA option for the step's compile, added to xla_config's (repeatable)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first call")
    parser.add_argument(
        "--profile_dir",
        default=None,
        help="after timing, trace 3 steps into this folder (perfetto_trace.json.gz inside)",
    )
    parser.add_argument(
        "--windows",
        type=int,
        default=0,
        help="time pipelined: this many windows of --steps steps, waiting once per window "
        "(accelerators); 0 waits on every step",
    )
    return parser.parse_args(argv)


def _compiler_option(text: str) -> tuple[str, Any]:
    """NAME=VALUE, with true/false and integers typed as XLA's options expect."""
    name, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--compiler_option={text!r}: expected NAME=VALUE, e.g. xla_gpu_enable_pdl=true")
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    return name, int(value) if value.lstrip("-").isdigit() else value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    options = dict(_compiler_option(o) for o in args.compiler_option) or None
    result = measure(
        args.model,
        args.batch,
        steps=args.steps,
        warmup=args.warmup,
        windows=args.windows,
        profile_dir=args.profile_dir,
        fast_init=args.fast_init,
        products=args.products,
        compiler_options=options,
        **model_overrides(
            unrolled=args.unrolled, remat=args.remat, dtype=args.dtype, depth=args.depth, unroll=args.unroll
        ),
    )
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    xla_config.use_huge_pages()
    main()
