"""SGD with momentum, weight decay and step learning-rate schedules.

Implements the optimisation half of the recipes in PAPERS.md, "Training
recipes":

* CIFAR, v2 paper: SGD, momentum 0.9, weight decay 1e-4, LR 0.1 divided by 10
  at 32k and 48k iterations, warm-up at LR 0.01 for the first 400 iterations.
* CIFAR, released code (KaimingHe/resnet-1k-layers, built on fb.resnet.torch):
  Nesterov momentum, weight decay on every parameter (BN included), LR cut at
  epochs 81 and 122 of 200.
* ImageNet, v2: LR 0.1 divided by 10 at epochs 30 and 60, no warm-up.

Update rule (Torch7 ``optim.sgd`` with ``dampening = 0``, which the released
code uses, and also ``optax.sgd``'s convention). With gradient ``g``, weights
``w``, momentum ``mu``, weight decay ``wd`` and step ``t`` (0-based):

      g' = g + wd * w                   # L2 term, added before momentum
      v  = mu * v + g'                  # v starts at 0, so the first v is g'
      w  = w - lr(t) * v                # plain momentum
      w  = w - lr(t) * (g' + mu * v)    # Nesterov, v being the new buffer

The learning rate multiplies the buffer *after* momentum, so an LR cut changes
the very next step fully. Caffe (the framework of the v1 paper's released models)
instead keeps the LR inside the buffer (``v = mu * v + lr * g'``;
``w = w - v``), so a cut fades in over roughly ``1 / (1 - mu)`` steps. The two
agree while the LR is constant. This module follows Torch7 and optax.
"""

from collections.abc import Sequence
import re

import jax
import optax

STEP_UNITS = ("steps", "epochs")
WARMUP_MODES = ("constant", "linear")
UNDECAYED_LEAF_NAMES = frozenset({"bias", "scale"})
NORM_NAME_TOKENS = frozenset({"bn", "norm", "batchnorm"})

# Splits 'BatchNorm_0' -> Batch, Norm; 'PreActBN' -> Pre, Act, BN; 'bn1' -> bn.
_NAME_TOKEN = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")


def to_steps(values, *, unit: str, steps_per_epoch: int) -> tuple[int, ...]:
    """Converts schedule points given in ``unit`` to optimiser steps.

    A value counts *completed* units: ``e`` epochs is the step index
    ``round(e * steps_per_epoch)`` (Python ``round``, ties to even), i.e. the
    first update of the epoch that comes after ``e`` full epochs.

    fb.resnet.torch numbers epochs from 1 and cuts the CIFAR LR for
    ``epoch >= 81`` and ``epoch >= 122`` (PAPERS.md, "Training recipes"), so in
    completed epochs its cuts are ``(80, 121)``. With 391 steps per epoch
    (``ceil(50000 / 128)``) that is steps ``(31280, 47311)``.

    Args:
        values: schedule points, non-negative.
        unit: ``'steps'`` (integers, returned unchanged) or ``'epochs'``.
        steps_per_epoch: optimiser steps in one epoch, positive.

    Returns:
        The points as step indices.

    Raises:
        ValueError: on an unknown unit, a non-positive ``steps_per_epoch``, a
            negative value, or a fractional value in ``'steps'``.
    """
    if unit not in STEP_UNITS:
        raise ValueError(f"unit must be one of {STEP_UNITS}, got {unit!r}")
    if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
    if any(v < 0 for v in values):
        raise ValueError(f"schedule points must be non-negative, got {values!r}")
    if unit == "steps":
        if any(int(v) != v for v in values):
            raise ValueError(f"step counts must be integers, got {values!r}")
        return tuple(int(v) for v in values)
    return tuple(int(round(v * steps_per_epoch)) for v in values)


def learning_rate_schedule(
    *,
    base_learning_rate: float,
    boundaries: Sequence[int],
    decay_factor: float = 0.1,
    warmup_steps: int = 0,
    warmup_learning_rate: float | None = None,
    warmup: str = "constant",
) -> optax.Schedule:
    """Step-decay learning rate with optional warm-up (PAPERS.md, "Training recipes").

    ``lr(t) = base_learning_rate * decay_factor**k``, where ``t`` is the 0-based
    update count (optax's) and ``k`` the number of boundaries ``b <= t``: update
    ``b`` is the first at the decayed rate, as in Caffe's ``multistep`` policy.
    Boundaries are absolute steps, warm-up included, as in the v2 paper (32k and
    48k iterations).

    For ``t < warmup_steps`` the warm-up rate is used instead:

    * ``'constant'``: ``warmup_learning_rate`` flat. The v2 paper's CIFAR
      recipe is ``warmup_steps=400, warmup_learning_rate=0.01`` with base 0.1.
    * ``'linear'``: ``w0 + (base - w0) * t / warmup_steps`` with
      ``w0 = warmup_learning_rate`` (default 0), reaching ``base`` at
      ``t == warmup_steps``.

    The returned schedule is a pure function of the step: it can be traced
    under ``jax.jit`` and ``jax.vmap``.

    Raises:
        ValueError: on a non-positive base rate or decay factor; boundaries that
            are not positive and strictly increasing; a negative warm-up length or
            rate; a warm-up reaching the first boundary; an unknown warm-up mode; or
            a constant warm-up without ``warmup_learning_rate``.
    """
    boundaries = tuple(boundaries)
    if base_learning_rate <= 0:
        raise ValueError(f"base_learning_rate must be positive, got {base_learning_rate!r}")
    if decay_factor <= 0:
        raise ValueError(f"decay_factor must be positive, got {decay_factor!r}")
    if any(int(b) != b or b <= 0 for b in boundaries):
        raise ValueError(f"boundaries must be positive integer steps, got {boundaries!r}")
    if any(b >= c for b, c in zip(boundaries, boundaries[1:])):
        raise ValueError(f"boundaries must be strictly increasing, got {boundaries!r}")
    if warmup not in WARMUP_MODES:
        raise ValueError(f"warmup must be one of {WARMUP_MODES}, got {warmup!r}")
    if int(warmup_steps) != warmup_steps or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}")
    if boundaries and warmup_steps >= boundaries[0]:
        raise ValueError(
            f"warm-up ({warmup_steps} steps) must end before the first boundary "
            f"({boundaries[0]})")
    if warmup_learning_rate is not None and warmup_learning_rate < 0:
        raise ValueError(
            f"warmup_learning_rate must be non-negative, got {warmup_learning_rate!r}")

    step_decay = optax.piecewise_constant_schedule(
        init_value=base_learning_rate,
        boundaries_and_scales={int(b): decay_factor for b in boundaries})
    if warmup_steps == 0:
        return step_decay

    if warmup == "constant":
        if warmup_learning_rate is None:
            raise ValueError("warmup='constant' needs warmup_learning_rate")
        warmup_schedule = optax.constant_schedule(warmup_learning_rate)
    else:
        warmup_schedule = optax.linear_schedule(
            init_value=warmup_learning_rate or 0.0,
            end_value=base_learning_rate,
            transition_steps=int(warmup_steps))
    # join_schedules restarts the count at each join; the boundaries are
    # absolute, so shift the step back.
    return optax.join_schedules(
        schedules=(warmup_schedule, lambda t: step_decay(t + warmup_steps)),
        boundaries=(int(warmup_steps),))


def _path_name(key) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _is_norm_module(name: str) -> bool:
    tokens = {token.lower() for token in _NAME_TOKEN.findall(name)}
    return bool(tokens & NORM_NAME_TOKENS)


def weight_decay_mask(params):
    """Marks the parameters that get weight decay when BN and biases are exempt.

    A leaf is decayed (``True``) unless either

    * its own name is ``'bias'`` or ``'scale'`` (flax's names for Conv/Dense
      biases and for BatchNorm's beta and gamma), or
    * one of its enclosing module names is a normalisation layer: split into
      words at ``_``, digits and case changes, it contains ``bn``, ``norm`` or
      ``batchnorm`` (``BatchNorm_0``, ``bn1``, ``preact_bn``, ``final_norm``,
      ``PreActBN``; not ``normal_head``).

    So Conv and Dense ``kernel`` leaves are ``True``. This is the default,
    ``decay_bn_and_bias=False``; the released code decays everything
    (PAPERS.md, "Training recipes", lists it among its differences).

    Args:
        params: a parameter pytree, e.g. a flax ``variables['params']``.

    Returns:
        A pytree of Python bools with the structure of ``params``.
    """

    def decays(path, _):
        names = [_path_name(key) for key in path]
        if names and names[-1] in UNDECAYED_LEAF_NAMES:
            return False
        return not any(_is_norm_module(name) for name in names[:-1])

    return jax.tree_util.tree_map_with_path(decays, params)


def sgd(
    *,
    learning_rate: float | optax.Schedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    decay_bn_and_bias: bool = False,
) -> optax.GradientTransformation:
    """SGD as Torch7 ``optim.sgd`` with zero dampening (see the module docstring).

    The chain is ``add_decayed_weights -> trace -> scale_by_learning_rate``.
    A schedule is called with optax's update count, so the ``t``-th update
    (0-based) uses ``learning_rate(t)`` and the count is part of the optimiser
    state that a checkpoint saves.

    Args:
        learning_rate: a positive constant or an ``optax.Schedule``.
        momentum: ``mu`` in ``[0, 1)``; 0 gives plain SGD.
        nesterov: Nesterov momentum, as in the released code; needs ``mu > 0``.
        weight_decay: L2 coefficient added to the gradient, ``>= 0``; the papers
            use 1e-4.
        decay_bn_and_bias: decay every parameter, BN and biases included (the
            released code) when True; else only where ``weight_decay_mask`` is
            True, the conv and FC weights (the default; PAPERS.md lists decaying
            everything as one of the released code's differences).

    Raises:
        ValueError: on an out-of-range argument.
    """
    if not callable(learning_rate) and learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True needs momentum > 0")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay!r}")
    mask = None if decay_bn_and_bias else weight_decay_mask
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.sgd(learning_rate, momentum=momentum if momentum > 0 else None, nesterov=nesterov),
    )
