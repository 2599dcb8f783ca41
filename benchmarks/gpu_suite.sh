#!/usr/bin/env bash
# The GPU figures of "Depth at no cost" (targets 2, 4 and 7), one command per row of
# benchmarks/results/history/2026-11-23.md, "7. GPU (one H200)".
#
#   bash benchmarks/gpu_suite.sh [SECTION ...]
#
# Sections: env r50 r200 1001 1001_bf16 scan flags profile defaults explore (default: all but
# flags, profile, defaults and explore).
# - `defaults` times the current defaults (1x1 products on CUDA, `xla_config.GPU_STEP_OPTIONS`)
#   in one process: `benchmarks.variants --plan=gpu_defaults`, about 6 minutes.
# - `explore` reruns the 2026-11-29 exploration (`--plan=gpu`, about 7 minutes).
# - The other sections run each measurement as its own `benchmarks.step_time` process under
#   `timeout`, so one slow compile cannot take the rest down. JSON lines go to stdout and to
#   $OUT/results.jsonl ($OUT defaults to /tmp/gpu_suite). Steps are timed pipelined
#   (`--windows`), as training runs them: the host waits once per window, not on every step.
#   `profile` writes perfetto traces of 3 steps to $OUT/*.json.gz. These sections have not
#   been timed as a whole.
#
# Their rows (RESULTS.md, results/history/superseded_rows.md) were measured on 2026-11-23,
# before three defaults changed: scanned models' `remat="elementwise"` (the rows pass
# `--remat=none` to match), and on CUDA the 1x1 products and `GPU_STEP_OPTIONS` (add
# `--no-products`, and set each option to false in XLA_FLAGS, to reproduce those rows exactly).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_suite}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

bench() {  # bench SECONDS ARGS...: one step_time run, killed after SECONDS
  local limit=$1; shift
  echo "# step_time $*" >&2
  timeout "$limit" python3 -m benchmarks.step_time --windows=2 "$@" 2>>"$OUT/stderr.log" | tee -a "$OUT/results.jsonl"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "{\"failed\": \"$*\", \"rc\": $rc}" | tee -a "$OUT/results.jsonl"
}

profile() {  # profile NAME ARGS...: a step_time run that also traces 3 steps
  local name=$1; shift
  bench 200 --profile_dir="/tmp/profile_$name" "$@"
  cp "$(find "/tmp/profile_$name" -name perfetto_trace.json.gz | head -1)" "$OUT/$name.json.gz"
}

section() {
  case "$1" in
    env)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,memory.total --format=csv
      python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
      ;;
    r50)        # target 7a: ResNet-50, bf16, synthetic data, one GPU; scanned vs unrolled
      bench 150 --model=resnet50 --batch=256 --dtype=bfloat16 --steps=10 --remat=none
      bench 150 --model=resnet50 --batch=256 --dtype=bfloat16 --steps=10 --unrolled
      bench 150 --model=resnet50 --batch=512 --dtype=bfloat16 --steps=10 --unrolled
      bench 200 --model=resnet50 --batch=1024 --dtype=bfloat16 --steps=5 --unrolled ;;
    r200)       # the deepest ImageNet model, scanned vs unrolled
      bench 150 --model=preact_resnet200 --batch=128 --dtype=bfloat16 --steps=5 --remat=none
      bench 200 --model=preact_resnet200 --batch=128 --dtype=bfloat16 --steps=5 --unrolled ;;
    1001)       # targets 7b and 4: ResNet-1001 at batch 128, fp32 as in the paper, each remat
                # scheme ("elementwise" is the default)
      for remat in none elementwise block nested; do
        bench 150 --model=cifar_preact1001 --batch=128 --remat=$remat --steps=5
      done ;;
    1001_bf16)  # the fastest forms found
      bench 150 --model=cifar_preact1001 --batch=128 --dtype=bfloat16 --steps=5 --remat=none
      bench 150 --model=cifar_preact1001 --batch=128 --dtype=bfloat16 --steps=5 --remat=unit
      bench 150 --model=cifar_preact1001 --batch=128 --dtype=bfloat16 --steps=5 --remat=none --unroll=3
      bench 150 --model=cifar_preact1001 --batch=128 --dtype=bfloat16 --steps=5 --remat=unit --unroll=3 ;;
    scan)       # target 2 on GPU: scanned vs unrolled, side by side in one process. compare.py
                # builds both with the model defaults: scanned remat="elementwise", unrolled
                # "none". The recorded 1.074 predates that default and had "none" on both sides.
      timeout 420 python3 -m benchmarks.compare --sections=scan --model=cifar_preact164 --batch=128 \
        --rounds=3 --steps=10 2>>"$OUT/stderr.log" | tee -a "$OUT/results.jsonl" ;;
    flags)      # not in the default set, never run yet: XLA:GPU options aimed at the scan's
                # bookkeeping, one at a time (scanned ResNet-1001 fp32, scanned ResNet-50 bf16).
                # The first drops the zero-fills of the stacked residuals (its jaxlib description);
                # the second, the loop-carry copies it removes on CPU (xla_config.step_compiler_options);
                # the third lets cuDNN/cuBLAS calls read a dynamic slice in place, which may remove
                # the per-iteration copies of parameters and residuals (23.9 ms of a 1001 step);
                # the fourth unrolls each loop by two in XLA, without JAX's larger program.
      for flag in --xla_gpu_enable_dus_accumulator_zero_init_elimination=true \
                  --xla_gpu_copy_insertion_use_region_analysis=true \
                  --xla_gpu_enable_dynamic_slice_fusion=true \
                  --xla_gpu_enable_while_loop_unrolling=WHILE_LOOP_UNROLLING_DOUBLE_BUFFER; do
        ( export XLA_FLAGS="$flag ${XLA_FLAGS:-}"
          bench 150 --model=cifar_preact1001 --batch=128 --steps=5 --remat=none
          bench 150 --model=resnet50 --batch=256 --dtype=bfloat16 --steps=10 --remat=none )
      done ;;
    profile)    # where the time goes
      profile r50_unrolled --model=resnet50 --batch=256 --dtype=bfloat16 --steps=10 --unrolled
      profile r50_scanned --model=resnet50 --batch=256 --dtype=bfloat16 --steps=10 --remat=none
      profile preact1001 --model=cifar_preact1001 --batch=128 --steps=5 --remat=none ;;
    defaults)   # the current defaults, one process, under a time budget
      python3 -m benchmarks.variants --plan=gpu_defaults --out="$OUT" --hlo=1001_bf16 2>>"$OUT/stderr.log" ;;
    explore)    # products vs convolutions, remat forms and XLA options on ResNet-1001 and -50,
                # with the step's default GPU options off, as on 2026-11-29
      off=$(python3 -c 'from resnet_identity.training import xla_config as x; print(" ".join(f"--{k}=false" for k in x.GPU_STEP_OPTIONS))')
      XLA_FLAGS="$off ${XLA_FLAGS:-}" python3 -m benchmarks.variants --plan=gpu --out="$OUT" --hlo=1001_unit3_conv 2>>"$OUT/stderr.log" ;;
    *) echo "unknown section $1" >&2; return 2 ;;
  esac
}

for name in "${@:-env r50 r200 1001 1001_bf16 scan}"; do
  for s in $name; do section "$s"; done
done
