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


def placement_changes(
    saved: Iterable[Mapping[str, Any]], stages: Iterable[Mapping[str, Any]]
) -> dict[int, str]:
    """The stages that ``stages`` (e.g. ``schedule.to_list()``) place differently from a
    saved list of the same run, by stage index (older lists read as :func:`saved_stages`).

    Example:
        >>> placement_changes([{"step": 5, "d_model": 64}],
        ...                   [{"step": 5, "d_model": 64, "hidden_factor_at": "readers"}])
        {0: "stage 0 (step 5): hidden_factor_at was 'gains', now 'readers'"}
    """
    changes = {}
    for i, (old, new) in enumerate(zip(saved_stages(saved), stages, strict=False)):
        moved = [
            f"{p.key} was {old[p.key]!r}, now {new[p.key]!r}"
            for p in PLACEMENTS
            if p.key in old and p.key in new and old[p.key] != new[p.key]
        ]
        if moved:
            changes[i] = f"stage {i} (step {new.get('step')}): " + ", ".join(moved)
    return changes
