"""Process set-up for fast training: on CPU huge pages for malloc, a fast-compiling init and
step options that drop the scan's loop-carry copies; on GPU step options against the scan's
bookkeeping (last paragraph). The measured effect of each is in docs/performance.md
("Why the CPU and GPU defaults").

XLA:CPU allocates the temporary buffer of every execution afresh and frees it after. glibc
serves such sizes with `mmap`, so every step page-faults all of it back in, 4 KiB at a time.
With glibc's `hugetlb=1` tunable, malloc asks for transparent huge pages (`madvise`) and the
faults almost vanish. glibc reads tunables only at process start, so `use_huge_pages()`
re-executes the program once with `GLIBC_TUNABLES` extended; call it first thing in a
`__main__`.

The init (`create_train_state`) runs once but compiles like any program, almost all of it
LLVM -O2 on the per-parameter random-number code, which then runs once.
`init_compiler_options()` compiles it at -O0 on CPU instead. The parameters differ from
-O2's in the last bit only (floating-point contraction), and every run compiles it the
same way.

The train and eval steps compile with `step_compiler_options()`: on CPU, copy insertion's
region analysis. Without it XLA:CPU copies a while loop's carried activation at the top of
every iteration, forward and backward: one full activation per unit of a scanned model.
Same numbers, bitwise. They also compile the steps' generated code (the fused elementwise
loops and reductions; convolutions and products are library calls) with LLVM -O1 instead
of -O2, which compiles sooner and steps as fast. A level set in `XLA_FLAGS` is respected
for the steps (the init is compiled at -O0 regardless). No XLA flag is set: none of
`--xla_cpu_use_onednn`, the XNNPACK graph-fusion modes or `--xla_cpu_use_xnnpack=false`
changed the step time measurably.

On a GPU the steps compile with `GPU_STEP_OPTIONS`. A scanned ResNet-1001 step there is
bound by kernel launches, and each option removes some of the scan's bookkeeping or of the
elementwise work beside a convolution:
- `xla_gpu_enable_dynamic_slice_fusion`: library calls read and write loop slices in place;
- `xla_gpu_enable_dus_accumulator_zero_init_elimination`: the scan's stacked outputs are
  not zero-filled first;
- `xla_gpu_copy_insertion_use_region_analysis`: no copies of the loop carry;
- `xla_gpu_experimental_enable_conv_fusion`: cuDNN fusions take elementwise work around the
  3x3 convolutions.
Each made a bf16 ResNet-1001 step faster on a GPU (with 1x1 convolutions as matrix products,
`models.kernels.PRODUCTS_1X1`), all four together most. An option named in `XLA_FLAGS` is left
to it (`--xla_gpu_experimental_enable_conv_fusion=false` turns that one off).
"""

from __future__ import annotations

import os
import platform
import sys

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
FAST_INIT_OPTIONS = {"xla_backend_optimization_level": 0}
STEP_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}
# LLVM -O1 rather than XLA's -O2 for the steps' generated loops: the convolutions and matrix
# products are library calls either way, so the steps compile sooner and step as fast
# (benchmarks/results/history/2026-11-23.md, "1. Ready in seconds").
STEP_OPTIMIZATION_LEVEL = {"xla_backend_optimization_level": 1}
# XLA:GPU options for the steps (module docstring).
GPU_STEP_OPTIONS = {
    "xla_gpu_enable_dynamic_slice_fusion": True,
    "xla_gpu_enable_dus_accumulator_zero_init_elimination": True,
    "xla_gpu_copy_insertion_use_region_analysis": True,
    "xla_gpu_experimental_enable_conv_fusion": True,
}


def init_compiler_options(backend: str) -> dict | None:
    """XLA options for compiling the one-off init on `backend`: LLVM -O0 on CPU, else None."""
    return FAST_INIT_OPTIONS if backend == "cpu" else None


def step_compiler_options(backend: str) -> dict | None:
    """XLA options for the train and eval steps on `backend`: on CPU no loop-carry copies,
    and LLVM -O1 unless `XLA_FLAGS` sets a level; on GPU `GPU_STEP_OPTIONS` (module
    docstring); else None."""
    flags = os.environ.get("XLA_FLAGS", "")
    if backend == "gpu":  # an option named in XLA_FLAGS is left to it, e.g. =false to turn one off
        return {name: value for name, value in GPU_STEP_OPTIONS.items() if name not in flags} or None
    if backend != "cpu":
        return None
    if "xla_backend_optimization_level" in flags:
        return STEP_OPTIONS
    return {**STEP_OPTIONS, **STEP_OPTIMIZATION_LEVEL}


def use_huge_pages() -> None:
    """Re-executes this process once with `glibc.malloc.hugetlb=1` unless already set.

    A `glibc.malloc.hugetlb` value the user set (e.g. `=0` to opt out) is respected. Does
    nothing off glibc Linux, where the tunable does not exist.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or "glibc.malloc.hugetlb" in tunables:
        return
    os.environ["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, HUGE_PAGES_TUNABLE) if t)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
