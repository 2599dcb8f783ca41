"""The optimiser and its learning-rate schedule, built from config data.

Two sub-configs say everything (`config.default_config` holds the papers' CIFAR values):

    config.optimizer = dict(momentum=0.9, nesterov=False, weight_decay=1e-4, decay_bn_and_bias=False)
    config.schedule = schedule_config("step", learning_rate=0.1, boundaries=(32_000, 48_000),
                                      warmup_steps=400, warmup_learning_rate=0.01)

`build` turns them into optax; `problems` says what `build` would refuse, and is the config
validation of both, so each check is written once, beside the code that uses its field.

A schedule is a decay (a `SCHEDULES` entry, a function of the absolute step) that an optional
warm-up (a `WARMUPS` entry) replaces for the first `warmup_steps` steps. Every schedule has the
fields `name`, `learning_rate` (the rate after warm-up), `warmup`, `warmup_steps` and
`warmup_learning_rate`; an entry's own fields are its function's keyword-only arguments, with
their defaults. A new schedule is one function and one `SCHEDULES` line (docs/schedules.md).

The papers' recipes (docs/papers.md, "Training recipes"):

* CIFAR, v2 paper: SGD, momentum 0.9, weight decay 1e-4, LR 0.1 divided by 10 at 32k and 48k
  iterations, 0.01 for the first 400 iterations (v1 Sec. 4.2 warms ResNet-110 up the same way).
* CIFAR, released code (KaimingHe/resnet-1k-layers, built on fb.resnet.torch): Nesterov
  momentum, weight decay on every parameter (BN included), LR cut at epochs 81 and 122 of 200.
* ImageNet, v2: LR 0.1 divided by 10 at epochs 30 and 60, no warm-up.

Update rule (Torch7 ``optim.sgd`` with ``dampening = 0``, which the released code uses, and
also ``optax.sgd``'s convention). With gradient ``g``, weights ``w``, momentum ``mu``, weight
decay ``wd`` and step ``t`` (0-based):

      g' = g + wd * w                   # L2 term, added before momentum
      v  = mu * v + g'                  # v starts at 0, so the first v is g'
      w  = w - lr(t) * v                # plain momentum
      w  = w - lr(t) * (g' + mu * v)    # Nesterov, v being the new buffer

The learning rate multiplies the buffer *after* momentum, so an LR cut changes the very next
step fully. Caffe (the framework of the v1 paper's released models) instead keeps the LR inside
the buffer (``v = mu * v + lr * g'``; ``w = w - v``), so a cut fades in over roughly
``1 / (1 - mu)`` steps. The two agree while the LR is constant. This module follows Torch7
and optax.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

STEP_UNITS = ("steps", "epochs")
# The fields of every schedule, with their defaults (no warm-up unless asked for).
COMMON_FIELDS = {"learning_rate": 0.1, "warmup": "constant", "warmup_steps": 0, "warmup_learning_rate": 0.01}


@dataclasses.dataclass(frozen=True)
class Run:
    """What a schedule may need to know of the run it drives."""

    total_steps: int  # optimiser steps in the whole run
    steps_per_epoch: int  # for fields given in epochs
    warmup_steps: int  # the decay takes over at this step


def to_steps(values, *, unit: str, steps_per_epoch: int) -> tuple[int, ...]:
    """Converts schedule points given in ``unit`` to optimiser steps.

    A value counts *completed* units: ``e`` epochs is the step index
    ``round(e * steps_per_epoch)`` (Python ``round``, ties to even), i.e. the
    first update of the epoch that comes after ``e`` full epochs.

    fb.resnet.torch numbers epochs from 1 and cuts the CIFAR LR for
    ``epoch >= 81`` and ``epoch >= 122`` (docs/papers.md, "Training recipes"), so in
    completed epochs its cuts are ``(80, 121)``. With 391 steps per epoch
    (``ceil(50000 / 128)``) that is steps ``(31280, 47311)``.

    Raises:
        ValueError: on an unknown unit, a non-positive ``steps_per_epoch``, a
            negative value, or a fractional value in ``'steps'``.
    """
    if unit not in STEP_UNITS:
        raise ValueError(f"boundaries_unit must be one of {STEP_UNITS}, got {unit!r}.")
    if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}.")
    if any(v < 0 for v in values):
        raise ValueError(f"schedule points must be non-negative, got {tuple(values)!r}.")
    if unit == "steps":
        if any(int(v) != v for v in values):
            raise ValueError(f"step counts must be integers, got {tuple(values)!r}.")
        return tuple(int(v) for v in values)
    return tuple(int(round(v * steps_per_epoch)) for v in values)


# ------------------------------------------------------------------ schedules


def step_decay(
    learning_rate: float,
    run: Run,
    *,
    boundaries: Sequence[float] = (),
    boundaries_unit: str = "steps",
    decay_factor: float = 0.1,
) -> optax.Schedule:
    """The papers' schedule: ``learning_rate * decay_factor**k`` once ``k`` boundaries are passed.

    v1 Sec. 4.2 and the v2 CIFAR recipe divide 0.1 by 10 at 32k and 48k iterations; v2's
    ImageNet recipe at epochs 30 and 60 (``boundaries_unit="epochs"``, see `to_steps`).
    Update ``b`` (optax's 0-based count) is the first at the decayed rate, as in Caffe's
    ``multistep`` policy. Boundaries are absolute steps, warm-up included, as the v2 paper
    counts its 32k and 48k iterations. No boundaries: a constant rate.
    """
    steps = to_steps(boundaries, unit=boundaries_unit, steps_per_epoch=run.steps_per_epoch)
    if not 0 < decay_factor <= 1:
        raise ValueError(f"decay_factor must be in (0, 1], got {decay_factor!r}.")
    if any(a >= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"boundaries {tuple(boundaries)} must increase (as steps: {steps}).")
    late = [b for b, s in zip(boundaries, steps) if s >= run.total_steps]
    if late:
        raise ValueError(
            f"boundaries {late} ({boundaries_unit}) fall at or beyond the end of training "
            f"(step {run.total_steps}); shorten them or train longer."
        )
    if steps and steps[0] <= run.warmup_steps:
        after = f"the warm-up's {run.warmup_steps} steps" if run.warmup_steps else "step 0"
        raise ValueError(f"the first boundary (step {steps[0]}) must come after {after}.")
    return optax.piecewise_constant_schedule(learning_rate, {s: decay_factor for s in steps})


def cosine_decay(learning_rate: float, run: Run, *, end_learning_rate: float = 0.0) -> optax.Schedule:
    """Half a cosine from ``learning_rate`` at the end of warm-up down to ``end_learning_rate``
    at ``total_steps`` (SGDR, Loshchilov & Hutter 2017, without restarts). Not the papers'
    schedule: a common alternative to compare against it."""
    if not 0 <= end_learning_rate <= learning_rate:
        raise ValueError(f"end_learning_rate must be in [0, learning_rate={learning_rate}], got {end_learning_rate!r}.")
    cosine = optax.cosine_decay_schedule(
        learning_rate, decay_steps=run.total_steps - run.warmup_steps, alpha=end_learning_rate / learning_rate
    )
    return lambda step: cosine(step - run.warmup_steps)


# A schedule's decay: f(learning_rate, run, *, its own fields with defaults) -> optax.Schedule,
# raising ValueError that names the field at fault.
SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    "step": step_decay,
    "cosine": cosine_decay,
}


def constant_warmup(warmup_learning_rate: float, learning_rate: float, warmup_steps: int) -> optax.Schedule:
    """``warmup_learning_rate`` throughout: v1 Sec. 4.2 trains ResNet-110 at 0.01 for about 400
    iterations before 0.1, and the v2 CIFAR recipe does so for every network."""
    del learning_rate, warmup_steps  # a flat rate needs neither
    return optax.constant_schedule(warmup_learning_rate)


def linear_warmup(warmup_learning_rate: float, learning_rate: float, warmup_steps: int) -> optax.Schedule:
    """From ``warmup_learning_rate`` at step 0 up to ``learning_rate`` at ``warmup_steps``
    (Goyal et al. 2017's gradual warm-up; set ``warmup_learning_rate=0`` to start from zero)."""
    return optax.linear_schedule(warmup_learning_rate, learning_rate, warmup_steps)


# A warm-up: f(warmup_learning_rate, learning_rate, warmup_steps) -> optax.Schedule.
WARMUPS: dict[str, Callable[[float, float, int], optax.Schedule]] = {
    "constant": constant_warmup,
    "linear": linear_warmup,
}


def _suggest(name: Any, choices) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def schedule_fields(name: str) -> dict[str, Any]:
    """Every field of schedule `name` with its default: the common ones, then the entry's own."""
    if name not in SCHEDULES:
        raise ValueError(
            f"name={name!r} is not a schedule; choose one of {sorted(SCHEDULES)}.{_suggest(name, SCHEDULES)}"
        )
    own = {
        p.name: p.default
        for p in inspect.signature(SCHEDULES[name]).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    return {"name": name, **COMMON_FIELDS, **own}


def schedule_config(name: str = "step", **values: Any) -> ml_collections.ConfigDict:
    """A complete, locked ``config.schedule``: schedule `name`'s fields and defaults, updated
    by `values`. Every field is then in the config, so the command line can set it."""
    fields = schedule_fields(name)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{name!r} has no field(s) {unknown}; its fields are {sorted(fields)}.")
    schedule = ml_collections.ConfigDict({**fields, **values})
    schedule.lock()
    return schedule


def build_schedule(schedule: Mapping[str, Any], *, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate of each 0-based update, from a ``config.schedule``; fields it lacks
    take their defaults. The result is a pure function of the step (traceable under jit/vmap).

    Raises:
        ValueError: naming the first field whose value cannot work.
    """
    values = dict(schedule)
    fields = schedule_fields(values.get("name"))
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"{fields['name']!r} has no field(s) {unknown}; its fields are {sorted(fields)}. "
            f"To change schedules, set config.schedule = optim.schedule_config({fields['name']!r}, ...) "
            "in the config file."
        )
    values = {**fields, **values}
    learning_rate, warmup, warmup_steps = values["learning_rate"], values["warmup"], values["warmup_steps"]
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}.")
    if warmup not in WARMUPS:
        raise ValueError(f"warmup={warmup!r} is not one of {sorted(WARMUPS)}.{_suggest(warmup, WARMUPS)}")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be an integer in [0, {total_steps}) (the run's length), got {warmup_steps!r}."
        )
    if warmup_steps and not values["warmup_learning_rate"] >= 0:
        raise ValueError(f"warmup_learning_rate must be non-negative, got {values['warmup_learning_rate']!r}.")
    own = {k: v for k, v in values.items() if k not in COMMON_FIELDS and k != "name"}
    decay = SCHEDULES[values["name"]](learning_rate, Run(total_steps, steps_per_epoch, warmup_steps), **own)
    if not warmup_steps:
        return decay
    warm = WARMUPS[warmup](values["warmup_learning_rate"], learning_rate, warmup_steps)
    return lambda step: jnp.where(step < warmup_steps, warm(step), decay(step))


# ------------------------------------------------------------------ optimiser


def weight_decay_mask(params):
    """True for the leaves that get weight decay when BN and biases are exempt: the conv and FC
    weights, flax's ``kernel`` leaves; BN's γ and β (``scale``, ``bias``) and the FC bias are
    False. Leaf names decide, not shapes: scanned stages stack BN's γ into two dimensions.

    This is the default, ``decay_bn_and_bias=False``; the released code decays every
    parameter (docs/papers.md, "Training recipes", lists it among its differences).
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def sgd(
    *,
    learning_rate: float | optax.Schedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    decay_bn_and_bias: bool = False,
) -> optax.GradientTransformation:
    """SGD as Torch7 ``optim.sgd`` with zero dampening (see the module docstring).

    The chain is ``add_decayed_weights -> trace -> scale_by_learning_rate``. A schedule is
    called with optax's update count, so the ``t``-th update (0-based) uses
    ``learning_rate(t)`` and the count is part of the optimiser state that a checkpoint saves.

    Args:
        learning_rate: a positive constant or an ``optax.Schedule``.
        momentum: ``mu`` in ``[0, 1)``; 0 gives plain SGD.
        nesterov: Nesterov momentum, as in the released code; needs ``mu > 0``.
        weight_decay: L2 coefficient added to the gradient, ``>= 0``; the papers use 1e-4.
        decay_bn_and_bias: decay every parameter, BN and biases included (the released code)
            when True; else only where ``weight_decay_mask`` is True, the conv and FC weights.

    Raises:
        ValueError: on an out-of-range argument.
    """
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}.")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True needs momentum > 0.")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay!r}.")
    mask = None if decay_bn_and_bias else weight_decay_mask
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.sgd(learning_rate, momentum=momentum if momentum > 0 else None, nesterov=nesterov),
    )


def build(
    schedule: Mapping[str, Any], optimizer: Mapping[str, Any], *, total_steps: int, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``config.schedule`` and ``config.optimizer`` as optax: SGD, and its learning rate per step."""
    learning_rate = build_schedule(schedule, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    return sgd(learning_rate=learning_rate, **dict(optimizer)), learning_rate


def problems(
    schedule: Mapping[str, Any], optimizer: Mapping[str, Any], *, total_steps: int, steps_per_epoch: int
) -> list[str]:
    """What `build` would refuse, one message per sub-config; empty when it will succeed."""
    found = []
    try:
        build_schedule(schedule, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    except ValueError as e:
        found.append(f"schedule: {e}")
    fields = sorted(set(inspect.signature(sgd).parameters) - {"learning_rate"})
    unknown = sorted(set(optimizer) - set(fields))
    try:
        if unknown:
            raise ValueError(f"no field(s) {unknown}; its fields are {fields}.")
        sgd(learning_rate=1.0, **dict(optimizer))
    except ValueError as e:
        found.append(f"optimizer: {e}")
    return found
