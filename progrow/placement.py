"""Where an expansion puts its rescaling factor: the placement keys of growth stages, and
stage lists saved before every placement was written into them.

A growth stage may say where the hidden expansion puts its ``sqrt(h / h')``
(``hidden_factor_at``, with ``d_model``) and where the key/query expansion puts its
``sqrt(d_qk' / k)`` (``qk_factor_at``, with ``d_qk``). :meth:`GrowthSchedule.to_list
<progrow.GrowthSchedule.to_list>` writes the placement on every stage that grows its
dimension, so a saved list means the same whatever the defaults become. Older lists left
a placement out when it equalled the default of the day; :func:`saved_stages` reads them
with that default (:attr:`Placement.legacy`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from progrow.config import GROWABLE_DIMS
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
    legacy: str
    """What a saved stage of ``dim`` without the key meant (the default when such lists
    were written)."""


PLACEMENTS: tuple[Placement, ...] = (
    Placement("hidden_factor_at", "d_model", check_factor_at, DEFAULT_FACTOR_AT, "gains"),
    Placement("qk_factor_at", "d_qk", check_qk_factor_at, DEFAULT_QK_FACTOR_AT, "keys"),
)
PLACEMENT_KEYS: tuple[str, ...] = tuple(p.key for p in PLACEMENTS)
BY_KEY: dict[str, Placement] = {p.key: p for p in PLACEMENTS}


def saved_stages(stages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A stage list as a checkpoint stored it, with every placement explicit: a stage that
    grows a placement's dimension without naming the placement was written before
    placements were always written, and means :attr:`Placement.legacy`.

    Lists written now (:meth:`GrowthSchedule.to_list <progrow.GrowthSchedule.to_list>`)
    come back unchanged.

    Example:
        >>> saved_stages([{"step": 5, "d_model": 64}, {"step": 9, "d_mlp": 256}])
        [{'step': 5, 'd_model': 64, 'hidden_factor_at': 'gains'}, {'step': 9, 'd_mlp': 256}]
    """
    out = []
    for stage in stages:
        full = dict(stage)
        for p in PLACEMENTS:
            if full.get(p.dim) is not None and p.key not in full:
                full[p.key] = p.legacy
        out.append(full)
    return out


def unnamed_placements(stages: Iterable[Mapping[str, Any]]) -> list[str]:
    """The placement keys that a saved list leaves out on some stage growing their
    dimension (an older list's, written when the default was :attr:`Placement.legacy`).

    Example:
        >>> unnamed_placements([{"step": 5, "d_model": 64, "d_qk": 16}])
        ['hidden_factor_at', 'qk_factor_at']
        >>> unnamed_placements([{"step": 5, "d_model": 64, "hidden_factor_at": "readers"}])
        []
    """
    listed = list(stages)
    return [
        p.key
        for p in PLACEMENTS
        if any(s.get(p.dim) is not None and p.key not in s for s in listed)
    ]


def saved_placement(stages: Iterable[Mapping[str, Any]], index: int, key: str) -> str | None:
    """The placement ``key`` of the saved list's stage ``index`` (``None`` if there is no
    such stage or it does not grow the key's dimension); older lists read as
    :func:`saved_stages`.

    Example:
        >>> saved_placement([{"step": 5, "d_model": 64}], 0, "hidden_factor_at")
        'gains'
        >>> saved_placement([{"step": 5, "d_model": 64}], 0, "qk_factor_at") is None
        True
    """
    p = BY_KEY[key]
    listed = saved_stages(stages)
    if not 0 <= index < len(listed) or listed[index].get(p.dim) is None:
        return None
    return p.check(listed[index][key], key)


def stage_changes(
    saved: Iterable[Mapping[str, Any]],
    stages: Iterable[Mapping[str, Any]],
    grown: Collection[int] = (),
) -> dict[int, str]:
    """How ``stages`` (e.g. ``schedule.to_list()``) differ from a saved list of the same
    run, by stage index: a stage whose step, sizes, placement or init changed, one added
    and one dropped.

    Older lists read as :func:`saved_stages`, except on the stages in ``grown`` (already
    applied to the model): there a key the saved stage leaves out is compared only if it
    is the step or a size. The others only say how the stage filled the grown model,
    which is done, and a list may predate their being written.

    Example:
        >>> stage_changes([{"step": 5, "d_model": 64}],
        ...               [{"step": 5, "d_model": 64, "hidden_factor_at": "readers"}])
        {0: "stage 0 (step 5): hidden_factor_at was 'gains', now 'readers'"}
        >>> stage_changes([{"step": 5, "d_model": 64}],
        ...               [{"step": 5, "d_model": 64, "hidden_factor_at": "readers"}], {0})
        {}
        >>> stage_changes([], [{"step": 5, "d_mlp": 32}])
        {0: "stage 0 (step 5): not in the saved schedule, now {'step': 5, 'd_mlp': 32}"}
    """
    old_list = [dict(stage) for stage in saved]
    filled = saved_stages(old_list)
    new_list = [dict(stage) for stage in stages]
    changes = {}
    for i in range(max(len(old_list), len(new_list))):
        old = (old_list[i] if i in grown else filled[i]) if i < len(old_list) else None
        new = new_list[i] if i < len(new_list) else None
        if i in grown and old is not None and new is not None:
            new = {k: v for k, v in new.items() if k in old or k in _WHAT_AND_WHEN}
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
#: The keys of a stage that say when (the step) and to what sizes the model grew.
_WHAT_AND_WHEN = ("step", *GROWABLE_DIMS)
