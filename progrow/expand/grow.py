"""``grow``: any subset of the seven expansions in one call, validated before any change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from progrow.config import GROWABLE_DIMS
from progrow.expand.hidden import DEFAULT_FACTOR_AT, FactorAt, expand_hidden
from progrow.expand.layers import Positions, add_layers, new_layer_positions
from progrow.expand.step import GrowthStep
from progrow.expand.targets import Init, grown_config, pins_kv_heads
from progrow.expand.widths import (
    DEFAULT_QK_FACTOR_AT,
    QkFactorAt,
    add_heads,
    expand_kv_heads,
    expand_mlp,
    expand_qk,
    expand_value,
)
from progrow.model import Transformer
from progrow.perturb import perturb_grown_
from progrow.record import ExpansionRecord

Expansion = Callable[..., ExpansionRecord]

#: The order ``grow`` applies the expansions in: inside blocks first (KV groups before the
#: query heads that fill them), then the hidden size, then new layers (which are then
#: built at the final width instead of being widened).
GROW_ORDER: tuple[tuple[str, Expansion], ...] = (
    ("d_mlp", expand_mlp),
    ("n_kv_heads", expand_kv_heads),
    ("n_heads", add_heads),
    ("d_v", expand_value),
    ("d_qk", expand_qk),
    ("d_model", expand_hidden),
    ("n_layers", add_layers),
)
assert tuple(dim for dim, _ in GROW_ORDER) == GROWABLE_DIMS


def _pin_kv_heads(model: Transformer) -> ExpansionRecord:
    """Make ``n_kv_heads=None`` explicit (same parameters, same function), so that the
    query heads added next join the KV groups instead of bringing KV heads of their own."""
    old = model.config
    model.config = old.replace(n_kv_heads=old.n_heads)
    return ExpansionRecord(old, model.config)


def grow(
    model: Transformer,
    *,
    d_mlp: int | None = None,
    n_kv_heads: int | None = None,
    n_heads: int | None = None,
    d_v: int | None = None,
    d_qk: int | None = None,
    d_model: int | None = None,
    n_layers: int | None = None,
    layer_positions: Positions = "append",
    hidden_factor_at: FactorAt = DEFAULT_FACTOR_AT,
    init: Init = "zero",
    qk_factor_at: QkFactorAt = DEFAULT_QK_FACTOR_AT,
    generator: torch.Generator | None = None,
    **unknown: Any,
) -> ExpansionRecord:
    """Apply any subset of the seven expansions, in the order of :data:`GROW_ORDER`.

    The keyword form of :func:`grow_step`: the sizes and options make one
    :class:`~progrow.expand.step.GrowthStep`, which is applied.

    Every argument is checked before the model is touched, so a bad one leaves the model
    unchanged. A size equal to the current one is a no-op. An unknown dimension (a typo
    such as ``d_ff``) raises ``ValueError`` naming it and the growable ones. Returns one
    record composing all the expansions applied (old model to grown model).

    ``n_kv_heads`` grows first and adds whole groups (see :func:`expand_kv_heads`), then
    ``n_heads`` fills the groups. On a model with ``n_kv_heads=None`` (a KV head per query
    head), asking for both ``n_kv_heads`` and more query heads than that makes the KV
    count explicit first: ``grow(model, n_kv_heads=4, n_heads=8)`` on 4 heads gives 4 KV
    heads with 2 query heads each.

    ``hidden_factor_at`` is :func:`expand_hidden`'s ``factor_at``: where the hidden
    expansion puts its ``sqrt(h / h')`` factor ("readers", the default, or "gains", the
    paper's); ``qk_factor_at`` is :func:`expand_qk`'s: where the key/query expansion puts
    its ``sqrt(d_qk' / k)`` ("keys", "queries" or "shared").
    ``init`` is every expansion's: "zero" (zero blocks, the paper's) or "split" (exact
    copies with split outgoing weights, no zero block); "stack" grows only ``n_layers``
    (copied blocks with their outputs kept, not function-preserving; see
    :func:`add_layers`).

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(d_model=8, n_layers=1))
        >>> record = grow(model, d_model=12, n_layers=2)
        >>> record.expansions, model.config.d_model, model.config.n_layers
        (('d_model', 'n_layers'), 12, 2)
    """
    if unknown:
        raise ValueError(
            f"grow() got unknown dimension(s) {sorted(unknown)}; the growable dimensions "
            f"are {list(GROWABLE_DIMS)} (other keywords: layer_positions, hidden_factor_at, "
            "qk_factor_at, init, generator)"
        )
    if not isinstance(model, Transformer):
        raise TypeError(f"expected a progrow.Transformer, got {type(model).__name__}")
    sizes = dict(
        d_mlp=d_mlp,
        n_kv_heads=n_kv_heads,
        n_heads=n_heads,
        d_v=d_v,
        d_qk=d_qk,
        d_model=d_model,
        n_layers=n_layers,
    )
    step = GrowthStep(
        sizes,  # type: ignore[arg-type]  # the None sizes are dropped
        layer_positions=layer_positions,
        hidden_factor_at=hidden_factor_at,
        init=init,
        qk_factor_at=qk_factor_at,
    )
    return grow_step(model, step, generator=generator)


def grow_step(
    model: Transformer, step: GrowthStep, *, generator: torch.Generator | None = None
) -> ExpansionRecord:
    """Apply the growth ``step`` to ``model``: its expansions (:func:`grow`), then its
    perturbations (:func:`progrow.perturb.perturb_grown_`), drawing from ``generator``.

    The sizes are checked against ``model`` before it is touched (the options were checked
    when ``step`` was built). Returns the record (old model to grown model).
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"expected a progrow.Transformer, got {type(model).__name__}")
    if not isinstance(step, GrowthStep):
        raise TypeError(f"expected a GrowthStep, got {type(step).__name__}")
    todo = dict(step.sizes)
    init = step.init
    grown_config(model.config, todo, init)  # validates every target, in order
    if "n_layers" in todo and todo["n_layers"] != model.config.n_layers:
        new_layer_positions(model.config.n_layers, todo["n_layers"], step.layer_positions)
    pin = pins_kv_heads(model.config, todo)
    record = ExpansionRecord(model.config, model.config)
    for dim, expansion in GROW_ORDER:
        if dim == "n_heads" and pin:
            record = record.then(_pin_kv_heads(model))
        if dim not in todo:
            continue
        kwargs: dict[str, Any] = {"init": init}
        if dim == "n_layers":
            kwargs["positions"] = step.layer_positions
        elif dim == "d_model":
            kwargs["factor_at"] = step.hidden_factor_at
        elif dim == "d_qk":
            kwargs["factor_at"] = step.qk_factor_at
        record = record.then(expansion(model, todo[dim], generator=generator, **kwargs))
    perturb_grown_(
        model,
        record,
        shrink_perturb=step.shrink_perturb,
        new_noise=step.new_noise,
        generator=generator,
    )
    return record
