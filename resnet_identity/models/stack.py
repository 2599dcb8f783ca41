"""A run of identical residual units: scanned (the default) or unrolled.

Every stage of a ResNet is one "first" unit (which may stride, project or pre-activate
for both paths) followed by n-1 identical units. `UnitStack` applies those n-1 units.

- `scan=True` traces and compiles one unit and loops over stacked parameters
  (`nn.scan`), so init and compile time stay flat with depth: ResNet-1001's 330
  repeated units compile as one, as ResNet-164's 51 do (benchmarks/RESULTS.md, target 1).
- `scan=False` unrolls a Python loop, one module per unit (`unit0`, `unit1`, ...).
- `remat` rematerialises activations in the backward pass (`jax.checkpoint`). Without
  it a unit keeps several times its input in activations (`ACTIVATIONS_PER_INPUT`).
  - "elementwise" keeps what the convolutions compute (each BN's input) and BN's
    per-channel statistics, and recomputes only the elementwise BN-ReLU before each
    convolution: no convolution runs twice. A pre-activation bottleneck unit then keeps
    1.5x its input (x, and the two C/4-wide conv outputs), which cuts the temporaries
    and, on CPU, the scan's buffer fills and writes (benchmarks/results/history/2026-11-23.md,
    "3. CPU speed against PyTorch").
  - "unit" keeps each unit's input and recomputes the unit once; every unit's input is
    still kept (330 of them in ResNet-1001).
  - "block" keeps one input per block of L units and recomputes a block's forward pass
    once, keeping all of that one block's activations meanwhile. This is sqrt(n)
    checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"):
    n/L inputs plus one block's 4.7 L is least at L ~ sqrt(n / 4.7), so memory is
    O(sqrt n) at the compute of "unit".
  - "nested" (what `remat=True` selects) uses blocks of ~sqrt(n) units with per-unit
    remat inside: O(sqrt n) inputs and one block's inputs, for two extra forward passes.
    Measured, the second recomputation cost no step time against "block", on a GPU and on
    CPU alike, so `remat=True` selects "nested".
  L need not divide the run length n, which is often prime (17 repeated units a stage in
  ResNet-110 and -164, 199 in ResNet-1202, 23 in stage 2 of pre-act ResNet-200): the
  n mod L units left after n // L blocks run as a tail, a second scan with the blocks'
  per-unit policy (per-unit remat for "nested", none for "block"). The tail keeps less
  than one block's recomputation does and is recomputed one time fewer; before runs had
  tails, a run of prime length fell back to per-unit remat, which keeps more.
  `block_length` and `nested_block_length` say how L is chosen.
  Unrolled (`scan=False`), "block" and "nested" rematerialise per unit, like "unit". On
  XLA:CPU that saves no memory: `jax.checkpoint` orders the recomputation only by
  optimisation barriers on its inputs, and nothing keeps XLA from running it during the
  forward pass: unrolled, every scheme keeps the same temporaries as "none".
  Inside a scan the backward loop cannot start before the forward loop ends, so there
  the recomputation waits. An unrolled model therefore defaults to "none"; an explicit
  scheme is still applied.

Stacked layouts, per variable collection (`[k, ...]`: k units' variables stacked):
- "none", "elementwise", "unit": `{"units": {"unit": [n, ...]}}`.
- "block", "nested": `{"blocks": {"units": {"unit": [n // L, L, ...]}}}`, block b holding
  units b L, ..., b L + L - 1; with a tail also `"tail": {"unit": [n % L, ...]}`, the last
  n mod L units.
The stacked and unrolled (`unit0`, `unit1`, ...) layouts hold the same numbers;
`stacked_to_unrolled` and `unrolled_to_stacked` convert between them, and `convert_layout`
from any layout to that of a given tree (how a checkpoint resumes under other `scan`/`remat`
values).

Why a scanned gradient convolution needs a kernel of its own on CPU is in `kernels.py`.
The figures behind each statement are in benchmarks/results/2026-12-03_models.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_identity.models.layers import BN_INPUT, BN_STATS

ModuleDef = Any

REMAT_SCHEMES = ("none", "elementwise", "unit", "block", "nested")
# The scheme of a scanned model when none is asked for (None): on CPU faster than "none",
# in about half its memory; on a GPU as fast as the fastest other form found, and quicker
# to compile. An unrolled model's is "none" (see the module docstring).
DEFAULT_REMAT = "elementwise"
REMAT_OPTIONS = (False, True) + REMAT_SCHEMES
# Activations a pre-act bottleneck unit keeps for its backward pass, in multiples of its
# input: ResNet-1001's temporaries without remat over those with its inputs alone kept.
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


def _best_block_length(length: int, kept_per_unit: float) -> int:
    """The L minimising ceil(length / L) + kept_per_unit * L: one kept input per block,
    plus one block's activations while it is recomputed (`kept_per_unit` per unit, in
    multiples of a unit's input). Its continuous optimum is sqrt(length / kept_per_unit)
    (sqrt(n) checkpointing, Chen et al. 2016). The tail is charged as one more block, as
    it is one more loop and one more parameter array, though it keeps at most what a
    block's recomputation does; so a run gets a tail only where that keeps less than
    every divisor of `length` would. Ties go to a divisor, then to L nearest the
    continuous optimum: where L divides `length`, it is the divisor chosen before runs
    had tails (the nearest to sqrt(length) for "nested", the least length / L + 4.7 L
    for "block"), so those layouts and checkpoints are unchanged."""
    target = math.sqrt(length / kept_per_unit)
    return min(
        range(1, length + 1), key=lambda d: (-(-length // d) + kept_per_unit * d, length % d != 0, abs(d - target), d)
    )


def nested_block_length(length: int) -> int:
    """Units per block for the "nested" scheme: a recomputed block keeps its L unit inputs
    (per-unit remat inside), so L ~ sqrt(length), sqrt(n) checkpointing applied twice
    (110 units: 11 blocks of 10; 17: 4 blocks of 4 and a tail of 1)."""
    return _best_block_length(length, 1.0)


def block_length(length: int) -> int:
    """Units per block for the "block" scheme: a recomputed block keeps all of its
    activations, 4.7 inputs' worth per unit, so L ~ sqrt(length / 4.7) (110 units: 22
    blocks of 5; 17: 8 blocks of 2 and a tail of 1)."""
    return _best_block_length(length, ACTIVATIONS_PER_INPUT)


# What a rematerialised iteration keeps for the backward pass: its inputs alone ("all" is
# recomputed), or also every BatchNorm input and statistic (`layers.BN_INPUT`, `BN_STATS`).
_RECOMPUTE_ALL = jax.checkpoint_policies.nothing_saveable
_RECOMPUTE_ELEMENTWISE = jax.checkpoint_policies.save_only_these_names(BN_INPUT, BN_STATS)
Policy = Callable[..., bool] | None  # None: no remat, autodiff keeps what it keeps
# The per-unit policy of each single-level scheme.
_UNIT_POLICIES: dict[str, Policy] = {"none": None, "elementwise": _RECOMPUTE_ELEMENTWISE, "unit": _RECOMPUTE_ALL}


Levels = tuple[tuple[int, Policy], ...]  # (iterations, remat policy of each) per loop level, outermost first


def _runs(scheme: str, length: int) -> tuple[tuple[str, Levels], ...]:
    """The scanned runs that apply `length` units, in order, as (name, loop levels):
    "units" for a one-level scheme; "blocks" for "block" and "nested", then "tail" (a
    one-level run of the last `length` mod L units) where L does not divide `length`."""
    if scheme in _UNIT_POLICIES:
        return (("units", ((length, _UNIT_POLICIES[scheme]),)),)
    block = block_length(length) if scheme == "block" else nested_block_length(length)
    per_unit = _RECOMPUTE_ALL if scheme == "nested" else None
    blocks = ("blocks", ((length // block, _RECOMPUTE_ALL), (block, per_unit)))
    tail = length % block
    return (blocks, ("tail", ((tail, per_unit),))) if tail else (blocks,)


class _Step(nn.Module):
    """Adapts a unit to the (carry, x) -> (carry, y) signature that `nn.scan` needs."""

    unit: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        return self.unit(name="unit")(x), None


class _Block(nn.Module):
    """One iteration of an outer loop: the inner loop levels, scanned."""

    unit: ModuleDef
    levels: Levels
    unroll: int

    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        return _loop(self.unit, self.levels, self.unroll, _scan_name(self.levels))(x, None)


def _scan_name(levels: Levels) -> str:
    """The name of an inner loop: "blocks" if it holds further loops, else "units"."""
    return "blocks" if len(levels) > 1 else "units"


def _loop(unit: ModuleDef, levels: Levels, unroll: int, name: str) -> nn.Module:
    """Nested `nn.scan`s, the outermost named `name`, the inner ones by `_scan_name`."""
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
        return scanned(unit, inner, unroll, name=name)
    return scanned(unit, name=name)


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
        for name, levels in _runs(scheme, self.length):
            x, _ = _loop(self.unit, levels, self.unroll, name)(x, None)
        return x


def _is_stacked_run(tree: Any) -> bool:
    return isinstance(tree, dict) and set(tree) in ({"units"}, {"blocks"}, {"blocks", "tail"})


def _stacked_units(run: dict, depth: int = 1) -> Any:
    """One scanned run's per-unit variables along a single leading axis, in unit order."""
    if "unit" in run:
        return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[depth:]), run["unit"])
    (inner,) = run.values()  # the next loop in: {"units": ...} or {"blocks": ...}
    return _stacked_units(inner, depth + 1)


def stacked_to_unrolled(variables: Any) -> Any:
    """Converts every scanned `UnitStack` in a variable tree to the `unit{i}` layout."""
    if not isinstance(variables, dict):
        return variables
    if _is_stacked_run(variables):
        runs = [_stacked_units(variables[name]) for name in ("units", "blocks", "tail") if name in variables]
        flat = jax.tree.map(lambda *a: jnp.concatenate(a), *runs)
        length = jax.tree.leaves(flat)[0].shape[0]
        return {f"unit{i}": jax.tree.map(lambda a, i=i: a[i], flat) for i in range(length)}
    return {k: stacked_to_unrolled(v) for k, v in variables.items()}


def _stack_runs(units: list[Any], runs: tuple[tuple[str, tuple[int, ...]], ...]) -> dict:
    """Per-unit variable trees, in unit order, stacked into the scanned runs `runs`: (name,
    loop lengths outermost first) in order, each taking the next prod(lengths) units."""
    if sum(math.prod(shape) for _, shape in runs) != len(units):
        raise ValueError(
            f"{len(units)} units cannot fill scanned runs of {[shape for _, shape in runs]}: not the same model."
        )
    flat = jax.tree.map(lambda *a: jnp.stack(a), *units)
    stacked, start = {}, 0
    for name, shape in runs:
        count = math.prod(shape)
        run = {"unit": jax.tree.map(lambda a, s=start, c=count, sh=shape: a[s : s + c].reshape(sh + a.shape[1:]), flat)}
        for depth in range(len(shape) - 1, 0, -1):  # the inner loops, innermost first
            run = {"blocks" if len(shape) - depth > 1 else "units": run}
        stacked[name] = run
        start += count
    return stacked


def _unit_list(unrolled: Any) -> list[Any]:
    """The `unit{i}` entries of an unrolled stack's variables, in unit order."""
    if not (
        isinstance(unrolled, dict) and unrolled and all(k.startswith("unit") and k[4:].isdigit() for k in unrolled)
    ):
        raise ValueError(
            "variables hold no unrolled units where the target layout has a scanned stack: not the same model."
        )
    return [unrolled[f"unit{i}"] for i in range(len(unrolled))]


def unrolled_to_stacked(variables: Any, *, remat: bool | str | None = None) -> Any:
    """Inverse of `stacked_to_unrolled`, in the layout of the `remat` scheme (module docstring)."""
    scheme = resolve_remat(remat)
    if not isinstance(variables, dict):
        return variables
    if variables and all(k.startswith("unit") and k[4:].isdigit() for k in variables):
        units = _unit_list(variables)
        runs = tuple(
            (name, tuple(iterations for iterations, _ in levels)) for name, levels in _runs(scheme, len(units))
        )
        return _stack_runs(units, runs)
    return {k: unrolled_to_stacked(v, remat=scheme) for k, v in variables.items()}


def _loop_lengths(run: dict, depth: int = 1) -> tuple[int, ...]:
    """A scanned run's loop lengths, outermost first, read off its first variable's shape."""
    if "unit" in run:
        return tuple(jax.tree.leaves(run["unit"])[0].shape[:depth])
    (inner,) = run.values()
    return _loop_lengths(inner, depth + 1)


def convert_layout(variables: Any, like: Any) -> Any:
    """`variables` of a model in any layout (scanned under any remat scheme, or unrolled)
    rearranged into the layout of `like`: the same model's variables in the wanted layout,
    or anything shaped like them (`jax.ShapeDtypeStruct`s, a checkpoint's array metadata);
    only its structure and shapes are read. The numbers are unchanged, so a checkpoint saved
    with one `scan`/`remat` resumes under another (`train_state.convert_layout`).
    Raises ValueError (or KeyError, for a missing module) if `like` is another model."""
    return _restack(stacked_to_unrolled(variables), like)


def _restack(unrolled: Any, like: Any) -> Any:
    if not isinstance(like, dict):
        return unrolled
    if _is_stacked_run(like):
        runs = tuple((name, _loop_lengths(like[name])) for name in ("units", "blocks", "tail") if name in like)
        return _stack_runs(_unit_list(unrolled), runs)
    if not isinstance(unrolled, dict) or set(unrolled) != set(like):
        raise ValueError(
            f"variables with modules {sorted(unrolled) if isinstance(unrolled, dict) else unrolled!r} "
            f"where the target layout has {sorted(like)}: not the same model."
        )
    return {k: _restack(unrolled[k], v) for k, v in like.items()}
