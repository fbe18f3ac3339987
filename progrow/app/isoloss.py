"""Iso-loss compute: what a fixed-size model needs to reach a given loss.

A growing run that ends at loss ``L`` after ``F`` FLOPs saves compute if a fixed-size
run of its final size needs more than ``F`` to reach ``L`` *at the end of its own
run* (its own LR schedule decayed over its own length). The in-run crossing of the
equal-budget baseline's final loss (``progrow-report``'s other figure) compares a
decayed curve with one that is still mid-schedule, which over- or understates the saving
depending on the LR schedule. Here fixed-size runs at several budgets give points
``(FLOPs, final loss)``; ``L``'s compute is interpolated linearly in ``log(FLOPs)``
between the two budgets whose final losses bracket it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class IsoLoss:
    """The baseline compute for a loss, or which side of the baselines' range it lies."""

    flops: float | None
    """Interpolated FLOPs; ``None`` when the loss is outside the baselines' range."""
    outside: Literal["", "better", "worse"] = ""
    """``"better"``: lower than every baseline's final loss (needs more than the largest
    budget, ``bound``); ``"worse"``: higher than the smallest budget's (needs less than
    ``bound``); ``""``: interpolated."""
    bound: float | None = None
    """The largest (``better``) or smallest (``worse``) baseline budget."""


def iso_loss_flops(points: Sequence[tuple[float, float]], loss: float) -> IsoLoss:
    """The FLOPs a fixed-size run needs to end at ``loss``, from ``(flops, final loss)``
    of fixed-size runs at two or more budgets (same model, seed and LR schedule).

    Walks the budgets in increasing FLOPs and interpolates ``log(flops)`` linearly in the
    loss between the first adjacent pair whose final losses bracket ``loss``.

    Raises:
        ValueError: fewer than two distinct budgets, or a non-positive or non-finite value.

    Example:
        >>> iso = iso_loss_flops([(100.0, 2.0), (400.0, 1.0)], 1.5)
        >>> round(iso.flops, 6)
        200.0
        >>> iso_loss_flops([(100.0, 2.0), (400.0, 1.0)], 0.5)
        IsoLoss(flops=None, outside='better', bound=400.0)
    """
    if any(not (math.isfinite(f) and f > 0 and math.isfinite(v)) for f, v in points):
        raise ValueError(f"points={list(points)}: FLOPs must be positive, losses finite")
    ordered = sorted(points)
    if len({f for f, _ in ordered}) < 2:
        raise ValueError(f"points={list(points)}: need baselines at two or more budgets")
    for (f0, l0), (f1, l1) in itertools.pairwise(ordered):
        if min(l0, l1) <= loss <= max(l0, l1):
            if l0 == l1:
                return IsoLoss(f0)
            t = (l0 - loss) / (l0 - l1)
            return IsoLoss(math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0))))
    if loss < min(v for _, v in ordered):
        return IsoLoss(None, "better", ordered[-1][0])
    return IsoLoss(None, "worse", ordered[0][0])


def saving_pct(iso: IsoLoss, flops: float) -> float | None:
    """``100 * (1 - flops / iso.flops)``: the share of the fixed-size run's compute a run
    that spent ``flops`` saved; ``None`` if ``iso`` lies outside the baselines.

    Example:
        >>> saving_pct(IsoLoss(200.0), 150.0)
        25.0
    """
    return None if iso.flops is None else 100.0 * (1.0 - flops / iso.flops)
