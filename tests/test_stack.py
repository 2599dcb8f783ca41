"""Scan and remat of `stack.py`.

The equivalence tests run `UnitStack` directly on small bottleneck units (8 channels on
4x4 maps), so runs long enough for two-level remat (12 units, blocks of 2 or 3; 11 units,
blocks and a tail) still compile in seconds.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_identity import models
from resnet_identity.models import kernels, stack
from resnet_identity.models.layers import make_conv, make_norm

NHWC = ("NHWC", "HWIO", "NHWC")


def _unit():
    """A unit with the CPU's kernels, as the network injects them on this backend."""
    norm = make_norm(train=True, group_size=None, dtype=jnp.float32, normalise=kernels.CPU.normalise)
    conv = make_conv(dtype=jnp.float32, conv_general_dilated=kernels.CPU.conv)
    return functools.partial(
        models.PreActivation, 8, 1, bottleneck=True, preact="branch", conv=conv, norm=norm, train=True
    )


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


@pytest.mark.parametrize(
    "fields",
    [
        {"remat": "none"},
        {"remat": "elementwise"},
        {"remat": "unit"},
        {"remat": "block"},
        {"remat": "nested"},
        {"remat": True},
        {"remat": "none", "unroll": 2},
        {"remat": "block", "unroll": 3},
        {"remat": "elementwise", "scan": False},
    ],
)
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


@pytest.mark.parametrize(
    "fields,layout",
    [
        ({"remat": "block"}, (5, 2, 1)),
        ({"remat": "nested"}, (3, 3, 2)),
        ({"remat": "block", "unroll": 3}, (5, 2, 1)),
    ],
)
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
    np.testing.assert_array_equal(
        stacked["blocks"]["units"]["unit"]["conv1"]["kernel"][2, 1], units["unit7"]["conv1"]["kernel"]
    )
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
    """ "elementwise" keeps BN inputs and statistics: a bottleneck unit's 1.5x its input
    instead of ~4.5x, with no convolution run twice (per-unit remat runs each forward one
    again)."""
    none, elementwise, unit = (_compiled_gradient(12, r) for r in ("none", "elementwise", "unit"))
    assert _matrix_ops(elementwise) == _matrix_ops(none) < _matrix_ops(unit)
    temp = {
        name: c.memory_analysis().temp_size_in_bytes
        for name, c in (("none", none), ("elementwise", elementwise), ("unit", unit))
    }
    assert temp["unit"] < temp["elementwise"] < temp["none"] / 2, temp
