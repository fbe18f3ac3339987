"""Optimizer-state surgery: carry a live optimizer across a growth step.

The expansions replace grown parameters by new ``nn.Parameter`` objects and describe what
they did in an :class:`~progrow.ExpansionRecord`; they never touch an optimizer. This
module is the only place that does. :func:`update_optimizer` edits the optimizer in place
(so an attached LR scheduler stays attached and every group keeps its ``lr``,
``initial_lr``, ``weight_decay``, ``betas``, ``foreach``, ``fused``, ...), matching
parameters by name because the old objects are gone after growth.

What the optimizer holds afterwards is what it would hold had it trained in the grown
parametrization (see ``docs/expansions.md``): a
parameter multiplied by ``a`` has gradients divided by ``a``, so averages of gradients
(``exp_avg``, ``momentum_buffer``) are divided by ``a`` and averages of squared gradients
(``exp_avg_sq``, ``max_exp_avg_sq``) by ``a**2``; new entries are zero; ``step`` is kept.
Factors may differ entry by entry (exact splits); each entry gets its own. Instead of
carrying, ``optimizer_state`` may start the state of the changed parameters, or of every
parameter, afresh (see :func:`update_optimizer`).

Twins (new entries copied from an old one by an exact split, ``init="split"``) get their
source's moments divided by their own factor (first) and its square (second), the same
rule. For a plain rescale that is exact; for a split it is an approximation: a unit
whose outgoing weights were split in ``r`` and ``1 - r`` keeps gradients of the old size
on those weights and gets ``r`` times the old gradient on its copied incoming weights,
so the carried moments are off by ``1/r`` against the new gradients until they decay
(over about ``1/(1 - beta)`` steps). Adam's step ``m / sqrt(v)`` is the same under any
per-entry rescale of both moments, so each twin's first steps equal its source's rather
than starting from zero moments, whose first steps are ``(1-b1)/sqrt(1-b2)`` times
too large under a long-kept ``step`` (see ``new_moments``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from progrow.expand.grow import grow_step
from progrow.expand.step import GrowthStep
from progrow.model import Transformer
from progrow.moments import State, StateTransport, stage_state, supported_keys
from progrow.optimizer_layout import (
    GroupForNew,
    ParamOrder,
    add_new_params,
    existing_names,
    layout_options,
    ordered,
    param_names,
    prefix_of,
)
from progrow.record import ExpansionRecord

NewMoments = Literal["zero", "bias_corrected"]
#: What happens to optimizer state at a growth (see :func:`update_optimizer`).
OptimizerState = Literal["carry", "reset_old", "reset_all"]
OPTIMIZER_STATES: tuple[str, ...] = get_args(OptimizerState)


def check_new_moments(new_moments: Any) -> NewMoments:
    """``new_moments`` if it is ``"zero"`` or ``"bias_corrected"``, else a ``ValueError``."""
    if new_moments not in ("zero", "bias_corrected"):
        raise ValueError(f"new_moments must be 'zero' or 'bias_corrected', got {new_moments!r}")
    return new_moments


def check_optimizer_state(
    optimizer_state: Any, new_moments: Any = "zero", field: str = "optimizer_state"
) -> OptimizerState:
    """``optimizer_state`` if it is one of :data:`OPTIMIZER_STATES` and goes with
    ``new_moments``, else a ``ValueError`` naming ``field`` and the value.

    A reset leaves no moment to fill, so ``new_moments="bias_corrected"`` (which fills
    new second moments from the old ones) would do nothing and is refused with it.

    Example:
        >>> check_optimizer_state("reset_old")
        'reset_old'
    """
    if not isinstance(optimizer_state, str) or optimizer_state not in OPTIMIZER_STATES:
        raise ValueError(f"{field}={optimizer_state!r}: use one of {list(OPTIMIZER_STATES)}")
    if optimizer_state != "carry" and new_moments != "zero":
        raise ValueError(
            f"{field}={optimizer_state!r} with new_moments={new_moments!r}: a reset leaves "
            "no moment to fill; use new_moments='zero' or optimizer_state='carry'"
        )
    return optimizer_state  # type: ignore[return-value]  # checked against its values


@dataclass(frozen=True)
class SurgeryOptions:
    """How a growth carries the optimizers: one value for every growth path; checked in
    ``__post_init__`` (``ValueError`` naming the field and the value).

    ``new_moments``, ``optimizer_state``, ``group_for_new`` and ``param_order`` are
    :func:`update_optimizer`'s, the same for every optimizer. Without the last two,
    ``layout(module)``, called once the module has grown, gives per optimizer the groups
    it must end with (:func:`layout_options`), e.g. the names of the optimizers
    ``configure_optimizers`` builds over the grown module.

    Example:
        >>> SurgeryOptions(optimizer_state="reset_old").optimizer_state
        'reset_old'
    """

    new_moments: NewMoments = "zero"
    """How new Adam second moments are filled: "zero" or "bias_corrected"."""
    optimizer_state: OptimizerState = "carry"
    """Whose state is carried: "carry", "reset_old" or "reset_all"."""
    group_for_new: GroupForNew | None = None
    """Group index (or ``None``) for each wholly new parameter; default: its siblings'."""
    param_order: ParamOrder | None = None
    """The names of each group's params, in order; default: module order."""
    layout: Callable[[nn.Module], Sequence[Sequence[Sequence[str]]]] | None = None
    """Per optimizer, the groups it must end with, from the grown module."""

    def __post_init__(self) -> None:
        check_optimizer_state(self.optimizer_state, check_new_moments(self.new_moments))

    def per_optimizer(self, module: nn.Module, count: int) -> list[dict[str, Any]]:
        """``group_for_new``/``param_order`` for each of ``count`` optimizers of the grown
        ``module``: as given, else from ``layout(module)``."""
        if self.layout is None or self.group_for_new is not None or self.param_order is not None:
            return [
                {"group_for_new": self.group_for_new, "param_order": self.param_order}
                for _ in range(count)
            ]
        groups = self.layout(module)
        if len(groups) != count:
            raise ValueError(f"layout gave {len(groups)} optimizer(s) for {count} live one(s)")
        return [layout_options(g) for g in groups]


def grow_with_optimizers(
    module: nn.Module,
    model: Transformer,
    optimizers: Sequence[torch.optim.Optimizer],
    step: GrowthStep | Mapping[str, int],
    surgery: SurgeryOptions | None = None,
    *,
    generator: torch.Generator | None = None,
) -> ExpansionRecord:
    """Grow ``model`` (held by ``module``) per ``step`` and carry every optimizer across.

    The one sequence every growth path runs (in the training loop, on a checkpoint; FSDP2's
    ``grow_sharded`` the same on gathered shards): names taken before growth,
    :func:`progrow.expand.grow.grow_step` (the expansions, then the step's perturbations,
    drawing from ``generator``), then :func:`carry_optimizers` with the record's names made
    relative to ``module``. Returns the record (names relative to ``model``).

    ``step``: a :class:`~progrow.GrowthStep`, or just the target sizes (every option at
    its default). ``surgery``: how the optimizers are carried (default:
    ``SurgeryOptions()``).

    Example:
        >>> from progrow import TransformerConfig
        >>> model = Transformer(TransformerConfig(vocab_size=16, d_model=8, d_mlp=8, n_layers=1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> record = grow_with_optimizers(model, model, [opt], {"d_mlp": 12})
        >>> record.expansions, model.config.d_mlp
        (('d_mlp',), 12)
    """
    spec = step if isinstance(step, GrowthStep) else GrowthStep(step)
    surgery = SurgeryOptions() if surgery is None else surgery
    old_names = param_names(module)
    prefix = prefix_of(module, model)
    record = grow_step(model, spec, generator=generator)
    carry_optimizers(module, record.prefixed(prefix), old_names, optimizers, surgery)
    return record


def carry_optimizers(
    module: nn.Module,
    record: ExpansionRecord,
    old_names: dict[int, str],
    optimizers: Sequence[torch.optim.Optimizer],
    surgery: SurgeryOptions | None = None,
    *,
    transport: StateTransport | None = None,
) -> None:
    """:func:`update_optimizer` for each optimizer of a grown ``module``, per ``surgery``
    (:class:`SurgeryOptions`, default: its defaults).

    ``record`` names are relative to ``module``; ``old_names`` is ``param_names(module)``
    from before the growth. ``transport``: see :class:`StateTransport`.
    """
    surgery = SurgeryOptions() if surgery is None else surgery
    options = surgery.per_optimizer(module, len(optimizers))
    for optimizer, opts in zip(optimizers, options, strict=True):
        update_optimizer(
            optimizer,
            record,
            old_names,
            module,
            new_moments=surgery.new_moments,
            transport=transport,
            optimizer_state=surgery.optimizer_state,
            **opts,
        )


def optimizer_state_by_name(
    optimizer: torch.optim.Optimizer, module: nn.Module
) -> dict[str, dict[str, Tensor]]:
    """The optimizer's state keyed by ``module``'s parameter names (params with state only).

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(vocab_size=16, d_model=8, n_layers=1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> model(torch.zeros(1, 3, dtype=torch.long)).sum().backward(); opt.step()
        >>> optimizer_state_by_name(opt, model)["lm_head.weight"]["momentum_buffer"].shape
        torch.Size([16, 8])
    """
    names = param_names(module)
    return {
        names[id(p)]: dict(optimizer.state[p])
        for group in optimizer.param_groups
        for p in group["params"]
        if id(p) in names and optimizer.state.get(p)
    }


def update_optimizer(
    optimizer: torch.optim.Optimizer,
    record: ExpansionRecord,
    old_names: dict[int, str],
    module: nn.Module,
    *,
    group_for_new: GroupForNew | None = None,
    param_order: ParamOrder | None = None,
    new_moments: NewMoments = "zero",
    transport: StateTransport | None = None,
    optimizer_state: OptimizerState = "carry",
) -> None:
    """Move ``optimizer`` onto the grown parameters of ``module``, in place.

    Everything is checked and staged first; the optimizer changes only if nothing raised.

    * Grown or renamed parameters: their param-group slot and state follow them. State
      tensors are placed at the record's positions, first moments times ``1/factor``,
      second moments times ``1/factor**2``, new entries zero; ``step`` is cloned as is.
    * Wholly new parameters (``record.new``) join the group of their siblings (the
      parameters of the other layers with the same name, ``blocks.#.mlp.fc.bias``), unless
      ``group_for_new(name, param)`` gives a group index; ``None`` (from
      ``group_for_new``, or no group holding a sibling) leaves it out of this optimizer,
      as for its siblings. Once that group has state, a new
      parameter gets state too: the group's ``step`` (that of its first param with state)
      and zero moments, exactly as for new entries. (Left empty, torch would start it at
      ``step=0`` with full bias correction, unlike the new entries of a grown tensor,
      which share their tensor's kept step.)
    * Order: each group's params are sorted by their position in ``module.named_parameters()``
      (or listed by ``param_order(module)``, one list of names per group), so that the
      groups equal what ``configure_optimizers`` builds on a fresh grown module, and
      ``optimizer.state_dict()`` loads onto that fresh optimizer param by param. When
      ``configure_optimizers`` orders or groups parameters otherwise, pass both options
      from an optimizer built over the grown module (:func:`layout_options`).

    ``new_moments="bias_corrected"``: with a large kept ``step`` Adam's bias correction is
    off, so a zero ``exp_avg_sq`` makes the first updates of new entries about
    ``(1-b1)/sqrt(1-b2)`` (3.2x) full size. This option fills the new entries of every
    second moment with the mean of that tensor's old entries (for a new parameter: the
    mean over its siblings), a typical second moment: the first update of a new entry is
    then ``(1-b1) g / sqrt(v_typical)``, ramping to normal size as ``exp_avg`` fills over
    about ``1/(1-b1)`` steps, instead of starting 3.2x too large. First moments stay zero.
    No effect on SGD.

    ``optimizer_state`` says whose state is carried as above and whose starts afresh:

    * ``"carry"`` (default): every parameter's, as above;
    * ``"reset_old"``: the parameters the growth changed (reshaped or rescaled; their old
      entries' moments describe gradients of the smaller model) and the new ones start
      afresh; parameters the growth left as they were (or only renamed) carry theirs;
    * ``"reset_all"``: every parameter starts afresh.

    Afresh means as a new optimizer would start it, per parameter: Adam's ``step`` 0 and
    zero moments (so its bias correction restarts: the first update is ``g / |g|``-sized,
    not the ``(1-b1)/sqrt(1-b2)`` times that zero moments get under a kept step), SGD's
    momentum buffer dropped (torch starts it from the next gradient). Group
    hyperparameters, the LR scheduler and the groups' order are kept in every case.

    Args:
        optimizer: a ``torch.optim`` Adam, AdamW or SGD over (some of) ``module``'s params.
        record: what the growth did (names relative to ``module``).
        old_names: ``param_names(module)`` taken before the growth.
        module: the grown module; its parameter names must be the record's (for a
            LightningModule holding the model, prefix the record's names).
        group_for_new: group index (or ``None``: not in this optimizer) for each wholly
            new parameter (default: its siblings' group).
        param_order: the names of each group's params, in order (default: module order).
        new_moments: ``"zero"`` (default) or ``"bias_corrected"``.
        transport: how state is read and stored (default: as it is); see
            :class:`StateTransport`.
        optimizer_state: ``"carry"`` (default), ``"reset_old"`` or ``"reset_all"``.

    Raises:
        TypeError: unsupported optimizer class (named).
        ValueError: unknown state key (named), a parameter missing from ``old_names`` or
            from ``module``, no unique sibling group, or a bad ``param_order``.

    Example:
        >>> from progrow import Transformer, TransformerConfig, expand_mlp
        >>> model = Transformer(TransformerConfig(vocab_size=16, d_model=8, d_mlp=8, n_layers=1))
        >>> opt = torch.optim.AdamW(model.parameters())
        >>> model(torch.zeros(1, 3, dtype=torch.long)).sum().backward(); opt.step()
        >>> names = param_names(model)
        >>> record = expand_mlp(model, 12)
        >>> update_optimizer(opt, record, names, model)
        >>> opt.state[model.blocks[0].mlp.fc.weight]["exp_avg_sq"].shape
        torch.Size([12, 8])
    """
    known = supported_keys(optimizer)
    check_optimizer_state(optimizer_state, check_new_moments(new_moments))
    params = dict(module.named_parameters())
    # 1. Where every parameter the optimizer holds now is after the growth (by name).
    old_by_new, names_per_group = existing_names(optimizer, record, old_names, params, known)
    # 2. Which group each wholly new parameter joins.
    add_new_params(names_per_group, record.new, params, group_for_new)
    # 3. The order of each group: what configure_optimizers would build now.
    names_per_group = ordered(names_per_group, module, params, param_order)
    # 4. Stage the new state (nothing changed yet), 5. commit it (nothing can raise).
    fill_typical = new_moments == "bias_corrected"
    reset = _reset_names(optimizer_state, record, old_by_new, names_per_group)
    staged = stage_state(
        optimizer, record, old_by_new, names_per_group, params, fill_typical, transport, reset
    )
    _commit(optimizer, names_per_group, params, staged)


def _reset_names(
    optimizer_state: OptimizerState,
    record: ExpansionRecord,
    old_by_new: dict[str, Tensor],
    names_per_group: list[list[str]],
) -> frozenset[str]:
    """The parameters whose state starts afresh under ``optimizer_state``."""
    every = frozenset(n for names in names_per_group for n in names)
    if optimizer_state == "reset_all":
        return every
    if optimizer_state == "reset_old":
        changes = record.changes
        unchanged = {n for n in old_by_new if n not in changes or changes[n].is_identity}
        return every - unchanged
    return frozenset()


def _commit(
    optimizer: torch.optim.Optimizer,
    names_per_group: list[list[str]],
    params: dict[str, nn.Parameter],
    staged: dict[str, State],
) -> None:
    for group, names in zip(optimizer.param_groups, names_per_group, strict=True):
        group["params"] = [params[n] for n in names]
        if "param_names" in group:
            group["param_names"] = list(names)
    optimizer.state.clear()
    optimizer.state.update({params[n]: s for n, s in staged.items()})


__all__ = [
    "OPTIMIZER_STATES",
    "NewMoments",
    "OptimizerState",
    "SurgeryOptions",
    "carry_optimizers",
    "check_new_moments",
    "check_optimizer_state",
    "grow_with_optimizers",
    "optimizer_state_by_name",
    "update_optimizer",
]
