"""A run of identical residual units: scanned (the default) or unrolled.

Every stage of a ResNet is one "first" unit (which may stride, project or pre-activate
for both paths) followed by n-1 identical units. `UnitStack` applies those n-1 units.

- `scan=True` traces and compiles one unit and loops over stacked parameters
  (`nn.scan`), so init and compile time stay flat with depth: ResNet-1001's 330
  repeated units cost about what ResNet-164's 51 do.
- `scan=False` unrolls a Python loop, one module per unit (`unit0`, `unit1`, ...).
- `remat` rematerialises activations in the backward pass (`jax.checkpoint`). Without
  it a unit keeps ~4.7x its input in activations (ResNet-1001 at batch 128: 20.6 GiB).
  - "elementwise" keeps what the convolutions compute (each BN's input) and BN's
    per-channel statistics, and recomputes only the elementwise BN-ReLU before each
    convolution: no convolution runs twice. A pre-activation bottleneck unit then keeps
    1.5x its input (x, and the two C/4-wide conv outputs) instead of ~4.5x, which halves
    ResNet-164's temporaries and, on CPU, the scan's buffer fills and writes.
  - "unit" keeps each unit's input and recomputes the unit once: 6.3 GiB, since
    330 inputs are still kept.
  - "block" keeps one input per block of L units and recomputes a block's forward pass
    once, keeping all of that one block's activations meanwhile; L ~ sqrt(n / 4.7)
    minimises n/L + 4.7 L. Memory O(sqrt n) at the compute of "unit": 1.65 GiB (12.5x).
  - "nested" (what `remat=True` selects) uses blocks of ~sqrt(n) units with per-unit
    remat inside: 0.96 GiB (21x) for two extra forward passes. Measured, that second
    pass costs nothing: on an H200, ResNet-1001 at batch 128 steps in 200 ms with
    "nested" and 202 ms with "block" (151 ms without remat, 1.32x); on 2 CPU cores
    both are faster than no remat. The second recomputation is free, so `remat=True`
    selects "nested".
  Unrolled (`scan=False`), "block" and "nested" rematerialise per unit, like "unit". On
  XLA:CPU that saves no memory: `jax.checkpoint` orders the recomputation only by
  optimisation barriers on its inputs, and nothing keeps XLA from running it during the
  forward pass. ResNet-164 unrolled at batch 32 keeps 1.115 GiB of temporaries with
  "none", "elementwise", "unit" and "nested" alike (benchmarks/RESULTS.md, "4. Memory").
  Inside a scan the backward loop cannot start before the forward loop ends, so there
  the recomputation waits. An unrolled model therefore defaults to "none"; an explicit
  scheme is still applied.

The stacked and unrolled layouts hold the same numbers; `stacked_to_unrolled` and
`unrolled_to_stacked` convert between them.

Why the scanned gradient was once 7-10x slower than the unrolled one on CPU, and the fix,
are in `canonical_conv.py`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_identity.models.layers import BN_INPUT, BN_STATS

ModuleDef = Any

REMAT_SCHEMES = ("none", "elementwise", "unit", "block", "nested")
# The scheme of a scanned model when none is asked for (None): on CPU 12-16% faster than
# "none", in half its memory (benchmarks/RESULTS.md, "3. CPU speed"); not yet timed on a
# GPU. An unrolled model's is "none" (see the module docstring).
DEFAULT_REMAT = "elementwise"
REMAT_OPTIONS = (False, True) + REMAT_SCHEMES
# Activations a pre-act bottleneck unit keeps for its backward pass, in multiples of its
# input: 29.7 GiB (no remat) / 6.4 GiB (inputs only) for ResNet-1001 at batch 128.
ACTIVATIONS_PER_INPUT = 4.7


def resolve_remat(remat: bool | str | None, *, scan: bool = True) -> str:
    """Maps the `remat` override to a scheme name: True -> "nested", False -> "none",
    None -> `DEFAULT_REMAT` for a scanned model and "none" for an unrolled one."""
    if remat is None:
        return DEFAULT_REMAT if scan else "none"
    if remat is True:
        return "nested"
    if remat is False:
        return "none"
    if remat in REMAT_SCHEMES:
        return remat
    raise ValueError(f"remat={remat!r}; choose one of {REMAT_OPTIONS}.")


def nested_block_length(length: int) -> int:
    """Units per block for the nested scheme: the divisor of `length` nearest sqrt(length).

    Blocks must divide the run evenly to share one stacked parameter layout; for a prime
    run the block is the whole run (degrading to per-unit remat inside one block).
    """
    target = math.sqrt(length)
    divisors = [d for d in range(1, length + 1) if length % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


def block_length(length: int) -> int:
    """Units per block for the "block" scheme: the divisor L of `length` minimising the
    activations kept, length / L block inputs plus one block's 4.7 L (110 units: L = 5)."""
    divisors = [d for d in range(1, length + 1) if length % d == 0]
    return min(divisors, key=lambda d: length / d + ACTIVATIONS_PER_INPUT * d)


# What a rematerialised iteration keeps for the backward pass: its inputs alone ("all" is
# recomputed), or also every BatchNorm input and statistic (`layers.BN_INPUT`, `BN_STATS`).
_RECOMPUTE_ALL = jax.checkpoint_policies.nothing_saveable
_RECOMPUTE_ELEMENTWISE = jax.checkpoint_policies.save_only_these_names(BN_INPUT, BN_STATS)
Policy = Callable[..., bool] | None  # None: no remat, autodiff keeps what it keeps
# The per-unit policy of each single-level scheme.
_UNIT_POLICIES: dict[str, Policy] = {"none": None, "elementwise": _RECOMPUTE_ELEMENTWISE, "unit": _RECOMPUTE_ALL}


def _levels(scheme: str, length: int) -> tuple[tuple[int, Policy], ...]:
    """(iterations, remat policy of each iteration) per loop level, outermost first."""
    if scheme in _UNIT_POLICIES:
        return ((length, _UNIT_POLICIES[scheme]),)
    block = block_length(length) if scheme == "block" else nested_block_length(length)
    return ((length // block, _RECOMPUTE_ALL), (block, _RECOMPUTE_ALL if scheme == "nested" else None))


class _Step(nn.Module):
    """Adapts a unit to the (carry, x) -> (carry, y) signature that `nn.scan` needs."""

    unit: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        return self.unit(name="unit")(x), None


class _Block(nn.Module):
    """One iteration of an outer loop: the inner loop levels, scanned."""

    unit: ModuleDef
    levels: tuple[tuple[int, Policy], ...]
    unroll: int

    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        return _loop(self.unit, self.levels, self.unroll)(x, None)


def _loop(unit: ModuleDef, levels: tuple[tuple[int, Policy], ...], unroll: int) -> nn.Module:
    """Nested `nn.scan`s, named "blocks" (outer) and "units" (innermost)."""
    (length, policy), inner = levels[0], levels[1:]
    body = _Block if inner else _Step
    if policy is not None:  # scan already keeps iterations apart, so no CSE barrier
        body = nn.remat(body, prevent_cse=False, policy=policy)
    scanned = nn.scan(
        body,
        variable_axes={True: 0},
        split_rngs={True: True},
        length=length,
        unroll=1 if inner else min(unroll, length),
    )
    if inner:
        return scanned(unit, inner, unroll, name="blocks")
    return scanned(unit, name="units")


class UnitStack(nn.Module):
    """`length` applications of `unit` (a partial with everything but `name` bound)."""

    unit: ModuleDef
    length: int
    scan: bool = True
    remat: bool | str | None = None
    unroll: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scheme = resolve_remat(self.remat, scan=self.scan)
        if self.length == 0:
            return x
        if not self.scan:
            policy = _UNIT_POLICIES.get(scheme, _RECOMPUTE_ALL)  # two-level schemes: per unit
            unit = self.unit.func if policy is None else nn.remat(self.unit.func, prevent_cse=True, policy=policy)
            for i in range(self.length):
                x = unit(*self.unit.args, **self.unit.keywords, name=f"unit{i}")(x)
            return x
        x, _ = _loop(self.unit, _levels(scheme, self.length), self.unroll)(x, None)
        return x


def _is_stacked_run(tree: Any) -> bool:
    return isinstance(tree, dict) and set(tree) in ({"units"}, {"blocks"})


def stacked_to_unrolled(variables: Any) -> Any:
    """Converts every scanned `UnitStack` in a variable tree to the `unit{i}` layout."""
    if not isinstance(variables, dict):
        return variables
    if _is_stacked_run(variables):
        if "blocks" in variables:
            inner = variables["blocks"]["units"]["unit"]
            flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), inner)
        else:
            flat = variables["units"]["unit"]
        length = jax.tree.leaves(flat)[0].shape[0]
        return {f"unit{i}": jax.tree.map(lambda a, i=i: a[i], flat) for i in range(length)}
    return {k: stacked_to_unrolled(v) for k, v in variables.items()}


def unrolled_to_stacked(variables: Any, *, nested: bool = False, remat: bool | str | None = None) -> Any:
    """Inverse of `stacked_to_unrolled`, in the layout of the `remat` scheme.

    `nested=True` is short for `remat="nested"`.
    """
    scheme = "nested" if nested else resolve_remat(remat)
    if not isinstance(variables, dict):
        return variables
    if variables and all(k.startswith("unit") and k[4:].isdigit() for k in variables):
        units = [variables[f"unit{i}"] for i in range(len(variables))]
        flat = jax.tree.map(lambda *a: jnp.stack(a), *units)
        levels = _levels(scheme, len(units))
        if len(levels) == 1:
            return {"units": {"unit": flat}}
        blocks = jax.tree.map(lambda a: a.reshape((-1, levels[1][0]) + a.shape[1:]), flat)
        return {"blocks": {"units": {"unit": blocks}}}
    return {k: unrolled_to_stacked(v, remat=scheme) for k, v in variables.items()}
