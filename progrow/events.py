"""``GrowthEvent``: what one growth did, the record every reader of growth events uses.

The growth callback, offline growth, the training app's summary and the report all read
and write this one type. Its dict form (:meth:`GrowthEvent.to_dict`) is what checkpoints,
``summary.json`` and logs hold; the keys are those written since the first release, so
existing checkpoints and run folders load with :meth:`GrowthEvent.from_dict`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from progrow.config import from_known_fields


@dataclass(frozen=True)
class GrowthEvent:
    """One growth stage applied to a model.

    Example:
        >>> event = GrowthEvent(stage=0, step=4, params_before=10, params=20,
        ...                     loss_before=2.5, loss_after=2.25)
        >>> event.loss_delta, GrowthEvent.from_dict(event.to_dict()) == event
        (-0.25, True)
    """

    stage: int
    """Index of the stage in its schedule."""
    step: int
    """Global optimizer step at which the model grew (before that step's update)."""
    params_before: int | None = None
    """Parameter count before the growth (``None`` when only logs were read)."""
    params: int | None = None
    """Parameter count after the growth."""
    sizes: Mapping[str, int] = field(default_factory=dict)
    """The growable sizes after the growth."""
    loss_before: float | None = None
    """Probe loss just before the growth (``None``: not measured, e.g. offline)."""
    loss_after: float | None = None
    """Probe loss just after the growth."""
    loss_delta: float | None = None
    """``loss_after - loss_before`` (computed from them when both are given)."""
    seconds: float | None = None
    """Wall time of the growth proper: expansion, optimizer surgery, re-wrapping."""
    flops: float | None = None
    """Training FLOPs spent before the growth."""

    def __post_init__(self) -> None:
        if self.loss_before is not None and self.loss_after is not None:
            delta = self.loss_after - self.loss_before
            if self.loss_delta is None:
                object.__setattr__(self, "loss_delta", delta)
            # NaN != NaN: a diverged probe loss (kept under on_loss_jump="warn") must
            # still load from the checkpoint it was saved in.
            elif self.loss_delta != delta and not (
                math.isnan(delta) and math.isnan(self.loss_delta)
            ):
                raise ValueError(
                    f"growth event {self.stage}: loss_delta={self.loss_delta!r} is not "
                    f"loss_after - loss_before = {delta!r}"
                )
        object.__setattr__(self, "sizes", dict(self.sizes))

    def to_dict(self) -> dict[str, Any]:
        """Plain form (checkpoints, ``summary.json``, logs); keys as written since v0.1."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GrowthEvent:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        return from_known_fields(cls, data, "growth event")


def events_from_dicts(items: Any) -> list[GrowthEvent]:
    """Typed events from a list of dicts (``None`` or missing: no events)."""
    return [GrowthEvent.from_dict(item) for item in items or []]


__all__ = ["GrowthEvent", "events_from_dicts"]
