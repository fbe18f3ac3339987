"""Where an expansion puts its rescaling factor: the placement keys of growth stages, and
how a saved stage list differs from a schedule.

A growth stage may say where the hidden expansion puts its ``sqrt(h / h')``
(``hidden_factor_at``, with ``d_model``) and where the key/query expansion puts its
``sqrt(d_qk' / k)`` (``qk_factor_at``, with ``d_qk``). :meth:`GrowthSchedule.to_list
<progrow.GrowthSchedule.to_list>` writes the placement on every stage that grows its
dimension, so a saved list means the same whatever the defaults become.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from progrow.expand.hidden import DEFAULT_FACTOR_AT, check_factor_at
from progrow.expand.widths import DEFAULT_QK_FACTOR_AT, check_qk_factor_at


@dataclass(frozen=True)
class Placement:
    """One placement key of a growth stage."""

    key: str
    """The stage key (and ``grow()`` keyword)."""
    dim: str
    """The dimension whose growth it places; the key is refused on stages without it."""
    check: Callable[[object, str], str]
    """Returns a valid value, or raises ``ValueError`` naming the field and the value."""
    default: str
    """The value of a stage that does not name one."""


PLACEMENTS: tuple[Placement, ...] = (
    Placement("hidden_factor_at", "d_model", check_factor_at, DEFAULT_FACTOR_AT),
    Placement("qk_factor_at", "d_qk", check_qk_factor_at, DEFAULT_QK_FACTOR_AT),
)
PLACEMENT_KEYS: tuple[str, ...] = tuple(p.key for p in PLACEMENTS)
BY_KEY: dict[str, Placement] = {p.key: p for p in PLACEMENTS}


def stage_changes(
    saved: Iterable[Mapping[str, Any]], stages: Iterable[Mapping[str, Any]]
) -> dict[int, str]:
    """How ``stages`` (e.g. ``schedule.to_list()``) differ from a saved list of the same
    run, by stage index: a stage whose step, sizes, placement or init changed, one added
    and one dropped.

    Example:
        >>> stage_changes([{"step": 5, "d_model": 64, "hidden_factor_at": "gains"}],
        ...               [{"step": 5, "d_model": 64, "hidden_factor_at": "readers"}])
        {0: "stage 0 (step 5): hidden_factor_at was 'gains', now 'readers'"}
        >>> stage_changes([], [{"step": 5, "d_mlp": 32}])
        {0: "stage 0 (step 5): not in the saved schedule, now {'step': 5, 'd_mlp': 32}"}
    """
    old_list = [dict(stage) for stage in saved]
    new_list = [dict(stage) for stage in stages]
    changes = {}
    for i in range(max(len(old_list), len(new_list))):
        old = old_list[i] if i < len(old_list) else None
        new = new_list[i] if i < len(new_list) else None
        if old != new:
            changes[i] = _stage_change(i, old, new)
    return changes


def _stage_change(i: int, old: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    """One line naming stage ``i``'s change (``None``: the list has no such stage)."""
    step = (new or old or {}).get("step")
    head = f"stage {i} (step {step}): "
    if old is None:
        return head + f"not in the saved schedule, now {new}"
    if new is None:
        return head + f"was {old}, not in this schedule"
    keys = [*old, *(k for k in new if k not in old)]
    moved = [k for k in keys if old.get(k, _UNSET) != new.get(k, _UNSET)]
    return head + ", ".join(f"{k} was {_value(old, k)}, now {_value(new, k)}" for k in moved)


def _value(stage: dict[str, Any], key: str) -> str:
    return repr(stage[key]) if key in stage else "unset"


_UNSET = object()
