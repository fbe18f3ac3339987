"""From a loss fit to a plan: per-size curves, the envelope and a growth schedule on it.

A size's curve is the loss a fixed-size run of that size *ends* at after ``F`` training
FLOPs (its whole LR schedule spent, decay included): ``L(N, F / flops_per_token)`` from
:class:`progrow.app.scaling.LossForm`. The envelope is the lowest curve at each ``F``.

A growth schedule is followed with one rule (the "effective compute" of a grown model):
growing is function-preserving, so right after a growth at ``F`` the grown model has the
loss the smaller one had; from there it continues along its own size's curve, from the
compute at which that curve reaches the same loss. Growing where the next size's curve
overtakes the current one's (their crossing) moves along the envelope without a jump, so
a schedule of crossings ends at the envelope's loss at the budget. The rule models no
growth tax (the cost of new zero blocks and of a learning rate not yet decayed at the
growth) and no gain beyond the envelope; see experiments/README.md for measured ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from progrow.app.scaling import LossForm

#: A crossing earlier than this share of the budget is not a stage: the smaller size is
#: then not worth starting with, and the schedule starts at the larger one.
MIN_GROWTH_SHARE = 0.01


@dataclass(frozen=True)
class Curve:
    """A size as the planner sees it: its parameters and its FLOPs per token."""

    label: str
    params: float
    flops_per_token: float

    def loss(self, fit: LossForm, flops: float) -> float:
        """Predicted final loss of a fixed-size run of ``flops`` training FLOPs."""
        return float(fit.loss(self.params, flops / self.flops_per_token))

    def flops_for(self, fit: LossForm, loss: float) -> float:
        """FLOPs after which a fixed-size run ends at ``loss`` (``inf``: never)."""
        return fit.tokens_for_loss(self.params, loss) * self.flops_per_token


def crossing(fit: LossForm, small: Curve, big: Curve, lo: float, hi: float) -> float | None:
    """The FLOPs in ``[lo, hi]`` from which ``big``'s curve is at or below ``small``'s:
    ``lo`` if it already is there, ``None`` if it never gets there by ``hi``."""
    from scipy.optimize import brentq

    def gap(log_f: float) -> float:
        f = math.exp(log_f)
        return big.loss(fit, f) - small.loss(fit, f)

    a, b = math.log(lo), math.log(hi)
    if gap(a) <= 0:
        return lo
    grid = np.linspace(a, b, 64)
    values = [gap(x) for x in grid]
    for x0, x1, v0, v1 in zip(grid, grid[1:], values, values[1:], strict=False):
        if v0 > 0 >= v1:
            return math.exp(brentq(gap, x0, x1, xtol=1e-10))
    return None


@dataclass
class Schedule:
    """Grow from ``start`` to each stage's size when ``flops`` have been spent."""

    start: int
    """Index of the starting size."""
    stages: list[tuple[float, int]] = field(default_factory=list)
    """``(FLOPs spent at the growth, index of the size grown to)``, in order."""
    loss: float = math.nan
    """Predicted final loss at the budget (effective-compute rule)."""

    @property
    def end(self) -> int:
        return self.stages[-1][1] if self.stages else self.start

    def path(self) -> list[int]:
        return [self.start, *(j for _, j in self.stages)]


def follow(
    fit: LossForm,
    curves: Sequence[Curve],
    schedule: Schedule,
    budget: float,
    points: int = 0,
    lo: float = 0.0,
) -> tuple[float, list[tuple[float, float]]]:
    """The predicted final loss of ``schedule`` at ``budget`` (effective-compute rule),
    and, if ``points``, its predicted loss at that many FLOPs per phase from ``lo`` on
    (for plots)."""
    current, spent, effective = schedule.start, 0.0, 0.0
    trace: list[tuple[float, float]] = []
    for flops, index in [*schedule.stages, (budget, -1)]:
        if points and flops > lo:
            for f in np.geomspace(max(spent, lo, budget * 1e-6), flops, points):
                trace.append((float(f), curves[current].loss(fit, effective + f - spent)))
        effective += flops - spent
        spent = flops
        if index < 0:
            break
        now = curves[current].loss(fit, effective)
        effective = curves[index].flops_for(fit, now)
        current = index
    return curves[current].loss(fit, effective), trace


def _late(schedule: Schedule, step_flops: Sequence[float], budget: float, latest: float) -> bool:
    """Whether a stage of ``schedule`` comes after ``latest`` of the run's steps."""
    fractions, _ = step_fractions(schedule, step_flops, budget)
    return bool(fractions) and max(fractions) > latest


def envelope_schedule(
    fit: LossForm,
    curves: Sequence[Curve],
    budget: float,
    step_flops: Sequence[float],
    latest: float,
) -> Schedule:
    """Start at the smallest size; grow to the next size whose curve overtakes the current
    one's, at their crossing, before the budget is spent. Crossings before
    :data:`MIN_GROWTH_SHARE` of the budget move the start instead; the last stages are
    dropped while one comes after ``latest`` of the run's steps (with WSD, the decay: a
    size grown then gets too little of the run to pay for its growth)."""
    lo = budget * 1e-6
    schedule = Schedule(start=0)
    current, spent = 0, lo
    while True:
        found = [
            (f, -j)
            for j in range(current + 1, len(curves))
            if (f := crossing(fit, curves[current], curves[j], spent, budget)) is not None
            and f < budget
        ]
        if not found:
            break
        flops, neg = min(found)
        current, spent = -neg, flops
        if flops < MIN_GROWTH_SHARE * budget:
            schedule.start, schedule.stages = current, []
        else:
            schedule.stages.append((flops, current))
    while schedule.stages and _late(schedule, step_flops, budget, latest):
        schedule.stages.pop()
    schedule.loss = follow(fit, curves, schedule, budget)[0]
    return schedule


def insist_schedule(
    fit: LossForm,
    curves: Sequence[Curve],
    budget: float,
    step_flops: Sequence[float],
    latest: float,
    natural: Schedule,
    target: int,
) -> Schedule:
    """``natural`` with one more stage, straight to ``target``: after its last stage, no
    later than ``latest`` of the run's steps, where the effective-compute rule predicts
    the lowest final loss. If no such point exists, the last natural stage is dropped and
    the search repeated. ``natural`` itself if it ends at ``target``."""
    if natural.end == target:
        return natural
    kept = list(natural.stages)
    while True:
        first = max([MIN_GROWTH_SHARE * budget, *(f for f, _ in kept)])
        best: Schedule | None = None
        for flops in np.geomspace(first * 1.001, budget * 0.999, 200):
            trial = Schedule(natural.start, [*kept, (float(flops), target)])
            if _late(trial, step_flops, budget, latest):
                break  # later points are later in steps too
            trial.loss = follow(fit, curves, trial, budget)[0]
            if best is None or trial.loss < best.loss:
                best = trial
        if best is not None:
            return best
        if not kept:  # even the earliest point is too late: grow at it
            trial = Schedule(natural.start, [(first * 1.001, target)])
            trial.loss = follow(fit, curves, trial, budget)[0]
            return trial
        kept.pop()


def envelope(
    fit: LossForm, curves: Sequence[Curve], flops: Sequence[float]
) -> list[tuple[float, float, int]]:
    """``(flops, lowest predicted loss, index of the size)`` at each of ``flops``."""
    out = []
    for f in flops:
        losses = [c.loss(fit, f) for c in curves]
        best = int(np.argmin(losses))
        out.append((float(f), losses[best], best))
    return out


def segments(points: Sequence[tuple[float, float, int]]) -> list[dict[str, Any]]:
    """The envelope as runs of one size: ``{"size": index, "from": F, "to": F}``."""
    out: list[dict[str, Any]] = []
    for f, _, index in points:
        if out and out[-1]["size"] == index:
            out[-1]["to"] = f
        else:
            out.append({"size": index, "from": f, "to": f})
    return out


def step_fractions(
    schedule: Schedule, step_flops: Sequence[float], budget: float
) -> tuple[list[float], int]:
    """Each stage's step as a fraction of the run's steps, and the run's steps: a size's
    phase takes ``(FLOPs in the phase) / (its FLOPs per step)`` steps. The fractions are
    what a growth config holds (``step: 0.2``) and what
    :func:`progrow.flops.steps_for_budget` turns back into the same FLOPs."""
    bounds = [0.0, *(f for f, _ in schedule.stages), budget]
    sizes = schedule.path()
    steps = [(b - a) / step_flops[i] for a, b, i in zip(bounds, bounds[1:], sizes, strict=False)]
    total = sum(steps)
    done, fractions = 0.0, []
    for s in steps[:-1]:
        done += s
        fractions.append(done / total)
    return fractions, round(total)
