"""What one parameter's optimizer state becomes across a growth: carried into the grown
parametrization, started afresh, or (a new parameter) started from its group's step.

The rules of :mod:`progrow.surgery` (which stages and commits them for a whole optimizer)
on one parameter's state at a time: a parameter multiplied by ``a`` has gradients divided
by ``a``, so first moments (averages of gradients) are divided by ``a`` and second moments
(averages of squares) by ``a**2``; new entries are zero; ``step`` is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from progrow.optimizer_layout import layer_pattern
from progrow.record import ExpansionRecord, ParamChange

_ADAM_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})
#: The optimizers whose state semantics are known, and the state keys each may hold.
#: Exact classes: a subclass may keep state with the same keys but another meaning.
SUPPORTED: dict[type[torch.optim.Optimizer], frozenset[str]] = {
    torch.optim.Adam: _ADAM_KEYS,
    torch.optim.AdamW: _ADAM_KEYS,
    torch.optim.SGD: frozenset({"momentum_buffer"}),
}
_FIRST_MOMENTS = frozenset({"exp_avg", "momentum_buffer"})  # averages of gradients
_SECOND_MOMENTS = frozenset({"exp_avg_sq", "max_exp_avg_sq"})  # averages of squares

State = dict[str, Any]


@dataclass(frozen=True)
class StateTransport:
    """How :func:`update_optimizer` reads a parameter's state and stores the carried one.

    Default (no transport): the optimizer's own tensors, as they are. Sharded training
    (FSDP2) gathers one parameter's state to full tensors on ``read`` and shards the
    carried state like its new parameter on ``write``, so the rules run on full tensors
    while no full copy of the whole optimizer state is ever held.
    """

    read: Callable[[Tensor, State], State]
    """``(old parameter, its state) -> full state`` for the rules."""
    write: Callable[[Tensor, State], State]
    """``(new parameter, carried full state) -> the state the optimizer keeps``."""


def supported_keys(optimizer: torch.optim.Optimizer) -> frozenset[str]:
    known = SUPPORTED.get(type(optimizer))
    if known is None:
        raise TypeError(
            f"optimizer surgery does not support {type(optimizer).__name__}: its state "
            f"semantics are unknown (supported: {sorted(c.__name__ for c in SUPPORTED)})"
        )
    return known


def stage_state(
    optimizer: torch.optim.Optimizer,
    record: ExpansionRecord,
    old_by_new: dict[str, Tensor],
    names_per_group: list[list[str]],
    params: dict[str, nn.Parameter],
    fill_typical: bool,
    transport: StateTransport | None = None,
    reset: frozenset[str] = frozenset(),
) -> dict[str, State]:
    """The state of every grown parameter: existing ones first, then new ones (whose
    state copies the group's step and, with ``fill_typical``, their siblings' moments);
    those in ``reset`` start afresh (:func:`_reset`) instead, and an empty state is left
    out. With a ``transport``, each state is read just before and written just after
    its rule."""

    def write(name: str, state: State) -> State:
        return transport.write(params[name], state) if state and transport else state

    staged: dict[str, State] = {}
    for name, old_p in old_by_new.items():
        state = optimizer.state.get(old_p)
        if state:
            if transport is not None:
                state = transport.read(old_p, state)
            staged[name] = write(name, _existing(name, state, record, params, fill_typical, reset))
    for names in names_per_group:
        group_states = [staged[n] for n in names if staged.get(n)]
        if not group_states:
            continue  # a group that has not stepped: lazy init as usual
        for name in names:
            if name not in old_by_new:
                state = _new(name, group_states[0], staged, old_by_new, params, fill_typical, reset)
                staged[name] = write(name, state)
    return {name: state for name, state in staged.items() if state}


def _existing(
    name: str,
    state: State,
    record: ExpansionRecord,
    params: dict[str, nn.Parameter],
    fill_typical: bool,
    reset: frozenset[str],
) -> State:
    """The state of an existing parameter after growth: reset, carried into the grown
    parametrization, or (unchanged parameter) the very same state."""
    change = record.changes.get(name)
    grown = change if change is not None and not change.is_identity else None
    if grown is not None and tuple(params[name].shape) != grown.new_shape:
        raise ValueError(
            f"{name}: module shape {tuple(params[name].shape)} is not "
            f"the record's {grown.new_shape}"
        )
    if name in reset:
        return _reset(params[name], state)
    if grown is not None:
        return _carry(state, grown, fill_typical)
    return state  # same values and shape: keep the very same state


def _new(
    name: str,
    template: State,
    staged: dict[str, State],
    old_by_new: dict[str, Tensor],
    params: dict[str, nn.Parameter],
    fill_typical: bool,
    reset: frozenset[str],
) -> State:
    """The state of a new parameter in a group that has stepped (``template``: the
    group's first state): reset, or the group's step with its siblings' moments."""
    if name in reset:
        return _reset(params[name], template)
    key = layer_pattern(name)
    siblings = [s for n, s in staged.items() if n in old_by_new and layer_pattern(n) == key]
    return _fresh(params[name], template, siblings, fill_typical)


def _carry(state: State, change: ParamChange, fill_typical: bool) -> State:
    """``state`` of a grown parameter, in the grown parametrization (see module docstring)."""
    out: State = {}
    for key, value in state.items():
        if key == "step" or not isinstance(value, Tensor):
            out[key] = value.clone() if isinstance(value, Tensor) else value
            continue
        placed = change.carry(value, -2.0 if key in _SECOND_MOMENTS else -1.0)
        if fill_typical and key in _SECOND_MOMENTS and value.numel() > 0:
            is_carried = change.carry(torch.ones_like(value), 0.0).bool()  # old and twins
            placed = torch.where(is_carried, placed, change.take(placed).mean())
        out[key] = placed
    return out


def _reset(param: Tensor, template: State) -> State:
    """The state a new optimizer starts ``param`` with, shaped after ``template`` (the
    parameter's own state or its group's): Adam's ``step`` 0 and zero moments, which
    torch then steps exactly as its lazy init; SGD's momentum buffer left out, since
    torch starts it from the first gradient, not from zero (with dampening they differ).
    """
    out: State = {}
    for key, value in template.items():
        if key == "momentum_buffer":
            continue
        if key == "step":
            out[key] = torch.zeros_like(value) if isinstance(value, Tensor) else 0
        elif isinstance(value, Tensor):
            out[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
        else:
            out[key] = value
    return out


def _fresh(param: Tensor, template: State, siblings: list[State], fill_typical: bool) -> State:
    """State of a wholly new parameter: the group's step, zero moments (or typical ones)."""
    out: State = {}
    for key, value in template.items():
        if key == "step" or not isinstance(value, Tensor):
            out[key] = value.clone() if isinstance(value, Tensor) else value
            continue
        # The parameter's dtype and device, as torch's lazy init would choose: the
        # template may belong to a parameter of another dtype or device in the same group.
        out[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
        typical = [s[key] for s in siblings if isinstance(s.get(key), Tensor)]
        if fill_typical and key in _SECOND_MOMENTS and typical:
            out[key].fill_(torch.stack([t.mean() for t in typical]).mean())
    return out


__all__ = ["SUPPORTED", "State", "StateTransport", "stage_state", "supported_keys"]
