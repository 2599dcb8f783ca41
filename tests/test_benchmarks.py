"""The benchmark harnesses' own logic: pipelined timing, the trace breakdown, the input pipelines."""

import gzip
import json

import jax
import pytest

from benchmarks import hlo_census, input_pipeline, step_time, trace_breakdown, variants


def test_pipelined_timing_reports_windows_of_steps(capsys):
    result = step_time.main(
        ["--model=cifar_preact20", "--depth=8", "--batch=2", "--steps=3", "--windows=2", "--warmup=0"]
    )
    assert json.loads(capsys.readouterr().out) == result
    assert result["timing"] == "pipelined 2x3" and result["timed_steps"] == 6
    assert 0 < result["step_ms_min"] <= result["step_ms"]
    assert abs(result["images_per_s"] * result["step_ms"] / 2000 - 1) < 0.01  # batch 2 per step


def test_step_time_takes_products_and_compiler_options_from_the_command_line(capsys):
    result = step_time.main(
        [
            "--model=cifar_preact20",
            "--depth=8",
            "--batch=2",
            "--steps=1",
            "--warmup=0",
            "--no-products",
            "--compiler_option=xla_cpu_use_fusion_emitters=true",
        ]
    )
    assert result["products"] is False and result["compiler_options"] == {"xla_cpu_use_fusion_emitters": True}
    assert step_time._compiler_option("xla_gpu_graph_min_graph_size=-2") == ("xla_gpu_graph_min_graph_size", -2)
    assert step_time._compiler_option("a=WHILE,FUSION") == ("a", "WHILE,FUSION")
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        step_time._compiler_option("xla_gpu_enable_pdl")


def _event(name, dur, pid=1):
    return {"ph": "X", "pid": pid, "tid": 7, "ts": 0, "dur": dur, "name": name}


def test_trace_breakdown_sorts_gpu_kernels_by_kind(tmp_path, capsys):
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        _event("sm90_xmma_fprop_implicit_gemm_bf16", 300),
        _event("nvjet_sm90_tst", 300),
        _event("input_reduce_fusion.3", 150),
        _event("loop_dynamic_update_slice_fusion", 60),
        _event("MemcpyD2D", 30),
        _event("loop_broadcast_fusion.2", 30),
        _event("loop_maximum_fusion", 30),
        _event("python3 host work", 10_000, pid=2),  # host events are not GPU time
    ]
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    rows = trace_breakdown.breakdown(str(path), steps=3)
    assert rows["convolutions and matrix products"] == {"ms_per_step": 0.2, "kernels_per_step": 0}
    assert rows["reductions (BN statistics and their gradients)"]["ms_per_step"] == 0.05
    assert set(rows) == {label for label, _ in trace_breakdown.KINDS[:5]} | {
        "other elementwise (BN apply, ReLU, casts, optimiser)"
    }
    assert "0.3 ms of GPU time and 2 kernels per step" in capsys.readouterr().out


def _scan_gradient_text(length: int) -> str:
    import jax
    import jax.numpy as jnp

    def loss(x, w):
        return jax.lax.scan(lambda h, k: (jnp.tanh(h @ k), None), x, w)[0].sum()

    return jax.jit(jax.grad(loss, 1)).lower(jnp.ones((4, 8)), jnp.ones((length, 8, 8))).compile().as_text()


def test_hlo_census_counts_a_loop_body_once_per_iteration():
    """A forward and a backward loop of `length` trips: each extra trip adds the same
    launches, and the loops' trip counts are read from the compiled program."""
    counts = {n: hlo_census.census(_scan_gradient_text(n)) for n in (5, 10, 15)}
    per_five = counts[10]["launches"] - counts[5]["launches"]
    assert per_five > 0 and counts[15]["launches"] - counts[10]["launches"] == per_five
    assert [loop["trips"] for loop in counts[10]["loops"]] == [10, 10]
    assert all(loop["known"] for loop in counts[10]["loops"])
    assert sum(counts[10]["by_kind"].values()) == counts[10]["launches"]
    summary = hlo_census.summary(_scan_gradient_text(5), top=1)
    assert len(summary["by_kind"]) == 1 and summary["loop_trips"] == [5, 5]
    with pytest.raises(ValueError, match="ENTRY"):
        hlo_census.census("not HLO")


def test_variants_plan_times_each_variant_and_combines_what_helped(tmp_path, capsys):
    """The smoke plan: a products-vs-convolutions check, two forms, an option tried on the
    faster form, and a last variant built from the fastest form plus the options that helped;
    each row is printed and appended to variants.jsonl, and the profiled one leaves a trace."""
    rows = variants.main(["--plan=smoke", f"--out={tmp_path}", "--hlo=a"])
    check, *timed = rows
    assert check["grad_relative_diff_max"] < 1e-5  # on CPU both forms are products
    assert [r["variant"] for r in timed] == ["a", "b", "o", "best"]
    assert all(r["step_ms"] > 0 and r["hlo"]["launches"] > 0 and r["timed_steps"] == 2 * 2 for r in timed)
    fastest = min(timed[:2], key=lambda r: r["step_ms"])["variant"]
    assert timed[2]["from"] == timed[3]["from"] == fastest
    helped = timed[2]["step_ms"] < 0.99 * next(r for r in timed if r["variant"] == fastest)["step_ms"]
    assert ("compiler_options" in timed[3]) == helped
    lines = (tmp_path / "variants.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert (tmp_path / "a.hlo.txt.gz").exists() and (tmp_path / "best.perfetto.json.gz").exists()
    assert "launches" in capsys.readouterr().out.splitlines()[-1]


def test_variants_stop_starting_once_the_budget_is_spent(tmp_path):
    rows = variants.main(["--plan=smoke", f"--out={tmp_path}", "--budget_s=0"])
    assert [r.get("skipped") for r in rows] == ["cifar_preact164", "a", "b", "o", "best"]


def test_input_pipeline_bench_prints_its_result(capsys):
    result = input_pipeline.main(["--batch=16", "--batches=4", "--repeats=3"])
    assert json.loads(capsys.readouterr().out) == result
    assert result["batch"] == 16 and result["target_images_per_s"] == 20_000
    assert result["host_images_per_s"] > 0 and result["device_augment_images_per_s"] > 0
    assert result["host_exceeds_target"] == (result["host_images_per_s"] > 20_000)
    for field in ("device_augment_exceeds_target", "device", "cpu_count", "loadavg_1m_5m", "jax"):
        assert field in result


@pytest.mark.parametrize("crop", ["scale", "scale_aspect"])
def test_imagenet_pipeline_bench_runs_the_real_train_path_on_synthetic_jpegs(capsys, crop):
    tf = pytest.importorskip("tensorflow")
    from benchmarks import imagenet_pipeline

    jpegs = imagenet_pipeline.synthetic_jpegs(4)
    shapes = [tuple(tf.image.extract_jpeg_shape(j).numpy()) for j in jpegs]
    assert all(max(h, w) == 500 and 333 <= min(h, w) <= 375 and c == 3 for h, w, c in shapes), shapes
    result = imagenet_pipeline.main(
        [
            "--batch=4",
            "--batches=2",
            "--rounds=2",
            "--warmup=0",
            "--images=4",
            "--shuffle_buffer=8",
            f"--train_crop={crop}",
        ]
    )
    assert json.loads(capsys.readouterr().out) == result
    assert result["train_crop"] == crop
    assert result["images_per_s"] > 0 and result["cpu_ms_per_image"] > 0 and result["mean_jpeg_kb"] > 10
    assert result["cores_to_feed_h200_resnet50"] == pytest.approx(8.046 * result["cpu_ms_per_image"], abs=0.1)


def test_step_time_prints_one_json_line(capsys):
    from benchmarks import step_time

    step_time.main(["--model=cifar_preact20", "--depth=14", "--batch=2", "--steps=2", "--warmup=0", "--remat"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["model"] == "cifar_preact20" and result["batch"] == 2 and result["remat"] == "nested"
    assert result["init_s"] > 0 and result["compile_s"] > 0 and result["step_ms"] > 0
    assert result["temp_bytes"] > 0 and result["images_per_s"] > 0 and result["timed_steps"] == 2
    assert result["train_gflop_per_step"] > 0 and result["mfu"] is None  # no known CPU peak
    assert result["jax"] == jax.__version__ and result["device"].startswith("cpu")


def test_compare_runs_a_section_in_one_process(capsys):
    from benchmarks import compare

    summary = compare.main(
        ["--sections=scan", "--model=cifar_preact20", "--depth=14", "--batch=2", "--rounds=1", "--steps=1"]
    )
    assert summary[0]["comparison"] == "step scan / unrolled" and summary[0]["ratio"] > 0
    assert "summary:" in capsys.readouterr().out


def test_mfu_uses_the_known_peaks():
    from benchmarks import step_time

    assert step_time.peak_flops("NVIDIA H200", "bfloat16") == 989e12
    assert step_time.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert step_time.peak_flops("cpu", "float32") is None
