"""Scan, remat and the CPU-friendly convolution of `stack.py`, and the benchmark harness.

The equivalence tests run `UnitStack` directly on small bottleneck units (8 channels on
4x4 maps), so runs long enough for two-level remat (12 units, blocks of 2 or 3; 11 units,
blocks and a tail) still compile in seconds.
"""

import functools
import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resnet_identity import models
from resnet_identity.models import canonical_conv, stack
from resnet_identity.models.layers import make_norm

NHWC = ("NHWC", "HWIO", "NHWC")


def _unit():
    norm = make_norm(train=True, group_size=None, dtype=jnp.float32)
    return functools.partial(models.PreActivation, 8, 1, bottleneck=True, preact="residual", norm=norm, train=True)


X = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))


def _loss_and_grads(length, **fields):
    """Loss, gradients and BN statistics of `UnitStack(**fields)`, from the same parameters
    as the plain unrolled stack (no remat)."""
    module = stack.UnitStack(_unit(), length, **fields)
    reference = stack.UnitStack(_unit(), length, scan=False, remat="none")
    unrolled = reference.init(jax.random.key(1), X)
    variables = stack.unrolled_to_stacked(unrolled, remat=fields.get("remat")) if fields.get("scan", True) else unrolled

    def loss(params):
        y, updates = module.apply({**variables, "params": params}, X, mutable=["batch_stats"])
        return jnp.mean(jnp.square(y)), updates["batch_stats"]

    (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    if fields.get("scan", True):
        grads, stats = stack.stacked_to_unrolled(grads), stack.stacked_to_unrolled(stats)
    return value, grads, stats


@pytest.fixture(scope="module")
def unrolled_12():
    return _loss_and_grads(12, scan=False, remat="none")


@pytest.mark.parametrize("fields", [
    {"remat": "none"}, {"remat": "elementwise"}, {"remat": "unit"}, {"remat": "block"}, {"remat": "nested"},
    {"remat": True}, {"remat": "none", "unroll": 2}, {"remat": "block", "unroll": 3},
    {"remat": "elementwise", "scan": False},
])
def test_scanned_schemes_match_unrolled_loss_gradients_and_statistics(unrolled_12, fields):
    _assert_same_loss_grads_and_statistics(_loss_and_grads(12, **fields), unrolled_12)


def _assert_same_loss_grads_and_statistics(result, reference):
    (value, grads, stats), (ref_value, ref_grads, ref_stats) = result, reference
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    for a, b in zip(jax.tree.leaves((grads, stats)), jax.tree.leaves((ref_grads, ref_stats))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def unrolled_11():
    return _loss_and_grads(11, scan=False, remat="none")


@pytest.mark.parametrize("fields,layout", [
    ({"remat": "block"}, (5, 2, 1)), ({"remat": "nested"}, (3, 3, 2)), ({"remat": "block", "unroll": 3}, (5, 2, 1)),
])
def test_a_prime_run_with_a_tail_matches_unrolled_loss_gradients_and_statistics(unrolled_11, fields, layout):
    """11 units as (blocks, units per block, tail units)."""
    params = jax.eval_shape(lambda: stack.UnitStack(_unit(), 11, **fields).init(jax.random.key(1), X))["params"]
    blocks, tail = params["blocks"]["units"]["unit"]["conv1"]["kernel"], params["tail"]["unit"]["conv1"]["kernel"]
    assert blocks.shape[:2] + tail.shape[:1] == layout
    _assert_same_loss_grads_and_statistics(_loss_and_grads(11, **fields), unrolled_11)


def test_remat_true_is_nested_and_block_lengths():
    assert stack.resolve_remat(True) == "nested" and stack.resolve_remat(False) == "none"
    assert stack.resolve_remat(None) == stack.DEFAULT_REMAT == "elementwise"
    assert stack.resolve_remat(None, scan=False) == "none" and stack.resolve_remat("unit", scan=False) == "unit"
    assert stack.block_length(110) == 5  # ResNet-1001: 22 blocks of 5
    assert stack.nested_block_length(110) == 10
    # Prime runs (ResNet-110/164: 17 units a stage, ResNet-1202: 199) get blocks and a tail.
    assert (stack.block_length(17), stack.nested_block_length(17)) == (2, 4)
    assert (stack.block_length(199), stack.nested_block_length(199)) == (7, 14)
    assert stack.nested_block_length(23) == 5
    with pytest.raises(ValueError, match="block"):
        stack.resolve_remat("sometimes")


def test_every_run_length_keeps_order_sqrt_n():
    """With L units a block (and a tail of n mod L), a run keeps ceil(n/L) block inputs
    plus one block's w L while recomputing it; some L (ceil(sqrt(n/w))) brings that to at most
    2 sqrt(w n) + 1 + w, divisor of n or not."""
    for kept_per_unit, choose in ((1.0, stack.nested_block_length), (stack.ACTIVATIONS_PER_INPUT, stack.block_length)):
        for n in range(1, 1203):
            length = choose(n)
            kept = -(-n // length) + kept_per_unit * length
            assert 1 <= length <= n and kept <= 2 * np.sqrt(kept_per_unit * n) + 1 + kept_per_unit, (n, length)


def test_runs_with_a_good_divisor_keep_their_layout_from_before_tails():
    """Where the chosen L divides n, it is the divisor the pre-tail rules chose (nearest
    sqrt(n) for "nested", least n/L + 4.7 L for "block"), so those checkpoints still load."""
    for n in range(1, 400):
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        nested = min(divisors, key=lambda d: (abs(d - np.sqrt(n)), d))
        block = min(divisors, key=lambda d: n / d + stack.ACTIVATIONS_PER_INPUT * d)
        assert n % stack.nested_block_length(n) or stack.nested_block_length(n) == nested, n
        assert n % stack.block_length(n) or stack.block_length(n) == block, n


@pytest.mark.parametrize("length", [12, 11])
def test_layouts_round_trip_for_every_scheme(length):
    unrolled = stack.UnitStack(_unit(), length, scan=False).init(jax.random.key(1), X)
    for scheme in stack.REMAT_SCHEMES:
        stacked = stack.unrolled_to_stacked(unrolled, remat=scheme)
        expected = jax.eval_shape(lambda s=scheme: stack.UnitStack(_unit(), length, remat=s).init(jax.random.key(1), X))
        assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(lambda a: a.shape, expected), scheme
        restored = stack.stacked_to_unrolled(stacked)
        assert jax.tree.structure(restored) == jax.tree.structure(unrolled)
        assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(unrolled)))
    assert stack.unrolled_to_stacked(unrolled, remat="nested").keys() == {"params", "batch_stats"}


def test_any_layout_converts_to_any_other():
    """Unrolled and every scheme's scanned layout (11 units: "nested" and "block" have blocks
    of different lengths and a tail) convert into each other's exactly, through
    `convert_layout`, which reads only the target's structure and shapes."""
    unrolled = stack.UnitStack(_unit(), 11, scan=False).init(jax.random.key(1), X)
    layouts = {"unrolled": unrolled, **{s: stack.unrolled_to_stacked(unrolled, remat=s) for s in stack.REMAT_SCHEMES}}
    for source, variables in layouts.items():
        for target, expected in layouts.items():
            converted = stack.convert_layout(variables, jax.eval_shape(lambda e=expected: e))
            assert jax.tree.structure(converted) == jax.tree.structure(expected), (source, target)
            for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(expected)):
                np.testing.assert_array_equal(a, b)
    twelve = stack.UnitStack(_unit(), 12, scan=False).init(jax.random.key(1), X)
    with pytest.raises(ValueError, match="not the same model"):
        stack.convert_layout(layouts["nested"], twelve)
    with pytest.raises(ValueError, match="not the same model"):
        stack.convert_layout(unrolled, stack.unrolled_to_stacked(twelve, remat="block"))


def test_a_tail_holds_the_last_units():
    """11 units under "nested": blocks [3, 3, ...] hold units 0-8, the tail [2, ...] units 9-10."""
    unrolled = stack.UnitStack(_unit(), 11, scan=False).init(jax.random.key(1), X)
    stacked = stack.unrolled_to_stacked(unrolled, remat="nested")["params"]
    units = unrolled["params"]
    np.testing.assert_array_equal(stacked["blocks"]["units"]["unit"]["conv1"]["kernel"][2, 1],
                                  units["unit7"]["conv1"]["kernel"])
    np.testing.assert_array_equal(stacked["tail"]["unit"]["conv1"]["kernel"][1], units["unit10"]["conv1"]["kernel"])


def _compiled_gradient(length, remat):
    module = stack.UnitStack(_unit(), length, remat=remat)
    variables = jax.eval_shape(lambda: module.init(jax.random.key(1), X))
    x = jax.ShapeDtypeStruct((16, 8, 8, 8), jnp.float32)

    def loss(params, x):
        y, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(y)

    return jax.jit(jax.grad(loss)).lower(variables["params"], x).compile()


def _temp_bytes(length, remat):
    return _compiled_gradient(length, remat).memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("length", [110, 109])  # 109 is prime: blocks and a tail
def test_block_remat_keeps_far_less_than_per_unit_remat_on_a_long_run(length):
    none, unit, block, nested = (_temp_bytes(length, r) for r in ("none", "unit", "block", "nested"))
    assert nested < block < unit / 2 < none / 4


def test_a_stage_of_resnet_164_keeps_less_with_blocks_than_per_unit():
    """17 units, prime: "nested" (4 blocks of 4, tail of 1) and "block" (8 blocks of 2, tail
    of 1) keep less than per-unit remat, which is what both fell back to without a tail."""
    unit, block, nested = (_temp_bytes(17, r) for r in ("unit", "block", "nested"))
    assert nested < 0.7 * unit and block < 0.95 * unit and nested < block


def test_an_unrolled_stack_defaults_to_no_remat():
    """Unrolled, `jax.checkpoint` saves no memory on XLA:CPU (`stack.py`), so there the
    default traces no rematerialised call; an explicit scheme still traces one per unit."""
    def remat_calls(remat):
        module = stack.UnitStack(_unit(), 3, scan=False, remat=remat)
        variables = module.init(jax.random.key(1), X)

        def loss(params):
            return jnp.sum(module.apply({**variables, "params": params}, X, mutable=["batch_stats"])[0])

        return len(re.findall(r"\bremat\w*\[", str(jax.make_jaxpr(jax.grad(loss))(variables["params"]))))

    assert remat_calls(None) == remat_calls("none") == 0
    assert remat_calls("unit") == remat_calls("elementwise") == 3


def _matrix_ops(compiled):
    """Convolutions and matrix products in the compiled program (loop bodies count once)."""
    return len(re.findall(r"= \S+ (?:convolution|dot)\(", compiled.as_text()))


def test_elementwise_remat_recomputes_no_convolution_and_keeps_under_half():
    """"elementwise" keeps BN inputs and statistics: a bottleneck unit's 1.5x its input
    instead of ~4.5x, with no convolution run twice (per-unit remat runs each forward one
    again)."""
    none, elementwise, unit = (_compiled_gradient(12, r) for r in ("none", "elementwise", "unit"))
    assert _matrix_ops(elementwise) == _matrix_ops(none) < _matrix_ops(unit)
    temp = {name: c.memory_analysis().temp_size_in_bytes for name, c in
            (("none", none), ("elementwise", elementwise), ("unit", unit))}
    assert temp["unit"] < temp["elementwise"] < temp["none"] / 2, temp


@pytest.mark.parametrize("shape,kernel,stride,pad", [
    ((2, 8, 8, 4), (3, 3, 4, 6), 1, 1), ((2, 8, 8, 4), (1, 1, 4, 6), 2, 0), ((2, 9, 9, 4), (3, 3, 4, 6), 2, 1),
    ((2, 8, 8, 6), (1, 1, 6, 4), 1, 0), ((2, 16, 16, 3), (7, 7, 3, 4), 2, 3), ((2, 9, 7, 4), (1, 1, 4, 6), 2, 0),
    ((2, 10, 10, 4), (1, 1, 4, 3), 3, 0),
])
def test_conv_with_canonical_grads_equals_lax(shape, kernel, stride, pad):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kernel)
    padding = ((pad, pad), (pad, pad))

    def loss(conv, x, w):
        return jnp.sum(jnp.sin(conv(x, w, (stride, stride), padding, dimension_numbers=NHWC)))

    ours = jax.jit(jax.value_and_grad(functools.partial(loss, canonical_conv.conv_with_canonical_grads), (0, 1)))(x, w)
    reference = jax.jit(jax.value_and_grad(functools.partial(loss, lax.conv_general_dilated), (0, 1)))(x, w)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_with_canonical_grads_keeps_loop_body_convolutions_canonical():
    """The cause of the slow scanned gradient: non-NHWC/HWIO convs inside a while body."""
    conv = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                   conv_general_dilated=canonical_conv.conv_with_canonical_grads)
    plain = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
    w = jax.random.normal(jax.random.key(2), (5, 3, 3, 8, 8)) * 0.1

    def run(module, w, x):
        return jnp.sum(lax.scan(lambda h, k: (module.apply({"params": {"kernel": k}}, h), None), x, w)[0])

    x = jax.random.normal(jax.random.key(3), (2, 6, 6, 8))
    grad = jax.jit(jax.grad(functools.partial(run, conv), argnums=(0, 1)))
    labels = set(re.findall(r"dim_labels=([\w>-]+)", grad.lower(w, x).compile().as_text()))
    assert labels == {"b01f_01io->b01f"}
    reference = jax.grad(functools.partial(run, plain), argnums=(0, 1))(w, x)
    for a, b in zip(grad(w, x), reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


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

    summary = compare.main(["--sections=scan", "--model=cifar_preact20", "--depth=14", "--batch=2",
                            "--rounds=1", "--steps=1"])
    assert summary[0]["comparison"] == "step scan / unrolled" and summary[0]["ratio"] > 0
    assert "summary:" in capsys.readouterr().out


def test_mfu_uses_the_known_peaks():
    from benchmarks import step_time

    assert step_time.peak_flops("NVIDIA H200", "bfloat16") == 989e12
    assert step_time.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert step_time.peak_flops("cpu", "float32") is None


@pytest.mark.parametrize("c_in,c_out,stride", [(16, 32, 1), (32, 16, 1), (16, 32, 2)])
def test_1x1_kernel_gradient_is_one_matrix_product_with_no_activation_transposed(c_in, c_out, stride):
    """x^T g over the flattened (n, h, w) rows: XLA:CPU's dot reads the transposed operand in
    place; contracting three axes of the 4-D arrays made it copy one into a transposed layout.
    The narrower of x and g is the product's left operand (the faster order on XLA:CPU). The
    forward pass and the input gradient of a 1x1 convolution, strided or not, are products
    too: no convolution is left."""
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, c_in))
    w = jax.random.normal(jax.random.key(1), (1, 1, c_in, c_out))

    def loss(w, x):
        return jnp.sum(jnp.sin(canonical_conv.conv_with_canonical_grads(x, w, (stride, stride), ((0, 0), (0, 0)),
                                                                         dimension_numbers=NHWC)))

    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(w, x).compile().as_text()
    moved = re.findall(r"= f32\[([\d,]+)\]\S* (?:transpose|copy)\(", text)
    activation_sizes = {4 * 6 * 6 * c_in, 4 * 6 * 6 * c_out // stride**2}
    assert not [s for s in moved if np.prod([int(d) for d in s.split(",")]) in activation_sizes], moved
    narrow, wide = sorted((c_in, c_out))
    assert re.search(rf"= f32\[{narrow},{wide}\]\S* dot\(", text)
    assert "convolution(" not in text


@pytest.mark.parametrize("c_in,c_out,stride", [(6, 4, 1), (4, 6, 2), (4, 3, 3)])
def test_accelerator_1x1_products_give_the_convolution_and_its_gradients(c_in, c_out, stride):
    """The product form that CUDA GPUs take (`PRODUCT_PLATFORMS`), run here on CPU: forward
    pass and both gradients of a strided or unstrided 1x1 convolution, against `lax`'s."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, c_in))
    w = jax.random.normal(jax.random.key(1), (1, 1, c_in, c_out))
    y, vjp = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), ((0, 0), (0, 0)),
                                                          dimension_numbers=NHWC), x, w)
    g = jax.random.normal(jax.random.key(2), y.shape)
    np.testing.assert_allclose(canonical_conv._pointwise(x, w, (stride, stride)), y, rtol=1e-5, atol=1e-5)
    for ours, reference in zip(canonical_conv._pointwise_grads((stride, stride), x, w, g), vjp(g)):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_cuda_lowering_makes_1x1_convolutions_products_unless_told_otherwise():
    """Lowered for CUDA (no GPU needed): a 1x1 convolution and both its gradients are
    `dot_general`s, a 3x3 stays a convolution; with CUDA taken out of the product platforms,
    the 1x1 is a convolution again."""
    x = jnp.ones((2, 8, 8, 16))

    def lowered(kernel: int) -> str:
        def loss(w, x):
            pad = (kernel - 1) // 2
            return jnp.sum(jnp.sin(canonical_conv.conv_with_canonical_grads(
                x, w, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=NHWC)))

        w = jnp.ones((kernel, kernel, 16, 32))
        return jax.jit(jax.grad(loss, (0, 1))).trace(w, x).lower(lowering_platforms=("cuda",)).as_text()

    assert "cuda" in canonical_conv.PRODUCT_PLATFORMS
    text = lowered(1)
    assert text.count("stablehlo.dot_general") == 3 and "stablehlo.convolution" not in text
    assert lowered(3).count("stablehlo.convolution") == 3
    with canonical_conv.pointwise_products(()):
        text = lowered(1)
    assert text.count("stablehlo.convolution") == 3 and "stablehlo.dot_general" not in text
    with pytest.raises(ValueError, match="unknown platforms"):
        with canonical_conv.pointwise_products(("gpu",)):
            pass


def test_step_options_drop_the_loop_carry_copies_of_a_scanned_stack():
    """With `xla_config.step_compiler_options` XLA:CPU no longer copies the carried
    activation at the top of every scan iteration (forward and backward), and the
    gradient is bitwise the same."""
    from resnet_identity import xla_config

    module = stack.UnitStack(_unit(), 6)
    variables = module.init(jax.random.key(1), X)
    x = jax.random.normal(jax.random.key(2), (16, 8, 8, 8))

    def loss(params, x):
        y, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.square(y))

    def activation_copies_in_loops(compiled):
        text = compiled.as_text()
        bodies = set(re.findall(r"while\(.*?body=%([\w.\-]+)", text))
        computations = re.findall(r"^(?:ENTRY )?%([\w.\-]+) .*?\{\n(.*?)\n\}", text, re.S | re.M)
        return [line for name, body in computations if name in bodies
                for line in re.findall(r"= f32\[16,8,8,8\]\S* copy\(", body)]

    plain = jax.jit(jax.grad(loss)).lower(variables["params"], x).compile()
    options = xla_config.step_compiler_options("cpu")
    tuned = jax.jit(jax.grad(loss), compiler_options=options).lower(variables["params"], x).compile()
    assert len(activation_copies_in_loops(plain)) == 2 and not activation_copies_in_loops(tuned)
    for a, b in zip(jax.tree.leaves(plain(variables["params"], x)), jax.tree.leaves(tuned(variables["params"], x))):
        np.testing.assert_array_equal(a, b)
    assert xla_config.step_compiler_options("tpu") is None


def test_gpu_step_options_leave_an_option_named_in_xla_flags_to_it(monkeypatch):
    from resnet_identity import xla_config

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert xla_config.step_compiler_options("gpu") == xla_config.GPU_STEP_OPTIONS
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_experimental_enable_conv_fusion=false")
    options = xla_config.step_compiler_options("gpu")
    assert "xla_gpu_experimental_enable_conv_fusion" not in options and len(options) == 3
    # Every option is one this jaxlib knows (compiling for CPU validates the names too).
    jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=xla_config.GPU_STEP_OPTIONS)


def test_step_options_respect_an_optimisation_level_set_in_xla_flags(monkeypatch):
    from resnet_identity import xla_config

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert xla_config.step_compiler_options("cpu")["xla_backend_optimization_level"] == 1
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    assert "xla_backend_optimization_level" not in xla_config.step_compiler_options("cpu")
