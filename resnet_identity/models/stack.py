"""A run of identical residual units: scanned (the default) or unrolled.

Every stage of a ResNet is one "first" unit (which may stride, project or pre-activate
for both paths) followed by n-1 identical units. `UnitStack` applies those n-1 units.

- `scan=True` traces and compiles one unit and loops over stacked parameters
  (`nn.scan`), so init and compile time stay flat with depth: ResNet-1001's 330
  repeated units cost about what ResNet-164's 51 do.
- `scan=False` unrolls a Python loop, one module per unit (`unit0`, `unit1`, ...).
- `remat` rematerialises activations in the backward pass (`jax.checkpoint`):
  "unit" keeps only each unit's input; "nested" (what `remat=True` selects) also
  rematerialises the inputs inside blocks of about sqrt(n) units, keeping one input
  per block plus one block's worth during its backward pass.

The stacked and unrolled layouts hold the same numbers; `stacked_to_unrolled` and
`unrolled_to_stacked` convert between them.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_identity.models.layers import ModuleDef

REMAT_OPTIONS = (False, True, "none", "unit", "nested")


def resolve_remat(remat: bool | str) -> str:
    """Maps the `remat` override to a scheme name: True -> "nested", False -> "none"."""
    if remat is True:
        return "nested"
    if remat is False or remat is None:
        return "none"
    if remat in ("none", "unit", "nested"):
        return remat
    raise ValueError(f"remat={remat!r}; choose one of {REMAT_OPTIONS}.")


class _Step(nn.Module):
    """Adapts a unit to the (carry, x) -> (carry, y) signature that `nn.scan` needs."""

    unit: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        return self.unit(name="unit")(x), None


class _Block(nn.Module):
    """`length` units scanned, each rematerialised: one block of the nested scheme."""

    unit: ModuleDef
    length: int
    unroll: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        return _scan(self.unit, self.length, remat_each=True, unroll=self.unroll, name="units")(x, None)


def _scan(unit: ModuleDef, length: int, *, remat_each: bool, unroll: int, name: str):
    step = nn.remat(_Step, prevent_cse=False) if remat_each else _Step
    scanned = nn.scan(
        step,
        variable_axes={True: 0},
        split_rngs={True: True},
        length=length,
        unroll=min(unroll, length),
    )
    return scanned(unit, name=name)


def nested_block_length(length: int) -> int:
    """Units per block for the nested scheme: the divisor of `length` nearest sqrt(length).

    Blocks must divide the run evenly to share one stacked parameter layout; for a prime
    run the block is the whole run (degrading to per-unit remat inside one block).
    """
    target = math.sqrt(length)
    divisors = [d for d in range(1, length + 1) if length % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


class UnitStack(nn.Module):
    """`length` applications of `unit` (a partial with everything but `name` bound)."""

    unit: ModuleDef
    length: int
    scan: bool = True
    remat: bool | str = False
    unroll: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scheme = resolve_remat(self.remat)
        if self.length == 0:
            return x
        if not self.scan:
            unit = nn.remat(self.unit.func, prevent_cse=True) if scheme != "none" else self.unit.func
            for i in range(self.length):
                x = unit(*self.unit.args, **self.unit.keywords, name=f"unit{i}")(x)
            return x
        if scheme != "nested":
            x, _ = _scan(self.unit, self.length, remat_each=scheme == "unit", unroll=self.unroll, name="units")(x, None)
            return x
        block = nested_block_length(self.length)
        blocks = nn.scan(
            nn.remat(_Block, prevent_cse=False),
            variable_axes={True: 0},
            split_rngs={True: True},
            length=self.length // block,
        )
        x, _ = blocks(self.unit, block, self.unroll, name="blocks")(x, None)
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


def unrolled_to_stacked(variables: Any, *, nested: bool = False) -> Any:
    """Inverse of `stacked_to_unrolled`; `nested=True` gives the nested-remat layout."""
    if not isinstance(variables, dict):
        return variables
    if variables and all(k.startswith("unit") and k[4:].isdigit() for k in variables):
        units = [variables[f"unit{i}"] for i in range(len(variables))]
        flat = jax.tree.map(lambda *a: jnp.stack(a), *units)
        if not nested:
            return {"units": {"unit": flat}}
        block = nested_block_length(len(units))
        blocks = jax.tree.map(lambda a: a.reshape((-1, block) + a.shape[1:]), flat)
        return {"blocks": {"units": {"unit": blocks}}}
    return {k: unrolled_to_stacked(v, nested=nested) for k, v in variables.items()}
