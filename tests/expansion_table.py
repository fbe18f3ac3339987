"""The registry of expansions that every expansion-related test is parametrized over.

One :class:`ExpansionCase` per way of growing a model: the six expansions, plus the other
insertion modes of ``add_layers``. Later test files (optimizer surgery, the growth
callback, resume) import ``EXPANSIONS`` / ``ALL_CASES`` from here so that a new
expansion, or a new variant, is tested everywhere by adding one row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from progrow import (
    ExpansionRecord,
    Transformer,
    TransformerConfig,
    add_heads,
    add_layers,
    expand_hidden,
    expand_mlp,
    expand_qk,
    expand_value,
    grow,
)

#: What the new entries of a parameter must hold right after an expansion:
#: "zero" exactly zero; "fresh" a fresh weight draw N(0, init_std^2) (not all zero);
#: "free" arbitrary but deterministic (norm gains, biases: constants by design).
BlockKind = str


@dataclass(frozen=True)
class ExpansionCase:
    """One expansion, how big to grow, and what its new blocks must hold."""

    name: str
    """Test id."""
    fn: Callable[..., ExpansionRecord]
    dim: str
    """The config field it grows (one of ``progrow.GROWABLE_DIMS``)."""
    target: Callable[[TransformerConfig], int]
    """The grown size, from the current config (odd growth steps on the tiny configs)."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments (``positions`` for ``add_layers``)."""
    new_blocks: Mapping[str, BlockKind] = field(default_factory=dict)
    """Parameter-name suffix -> kind of its new entries. Every parameter with new entries
    must match exactly one suffix: an unexpected change fails the tests."""

    @property
    def needs_rmsnorm(self) -> bool:
        return self.dim == "d_model"

    def apply(
        self, model: Transformer, generator: torch.Generator | None = None
    ) -> ExpansionRecord:
        return self.fn(model, self.target(model.config), generator=generator, **self.kwargs)

    def block_kind(self, name: str) -> BlockKind:
        kinds = [kind for suffix, kind in self.new_blocks.items() if name.endswith(suffix)]
        assert len(kinds) == 1, f"{self.name}: no single block kind for {name}: {kinds}"
        return kinds[0]

    def __repr__(self) -> str:  # short pytest ids
        return self.name


_NEW_LAYER = {
    "attn.q.weight": "fresh",
    "attn.k.weight": "fresh",
    "attn.v.weight": "fresh",
    "attn.o.weight": "zero",
    "mlp.fc.weight": "fresh",
    "mlp.fc.bias": "free",
    "mlp.proj.weight": "zero",
    "mlp.proj.bias": "zero",
    "norm_attn.weight": "free",
    "norm_attn.bias": "free",
    "norm_mlp.weight": "free",
    "norm_mlp.bias": "free",
}


def _layers(name: str, positions: Any) -> ExpansionCase:
    return ExpansionCase(
        name,
        add_layers,
        "n_layers",
        lambda c: c.n_layers + 2,
        {"positions": positions},
        _NEW_LAYER,
    )


MLP = ExpansionCase(
    "d_mlp",
    expand_mlp,
    "d_mlp",
    lambda c: 2 * c.d_mlp + 1,
    new_blocks={"mlp.fc.weight": "fresh", "mlp.fc.bias": "free", "mlp.proj.weight": "zero"},
)
HEADS = ExpansionCase(
    "n_heads",
    add_heads,
    "n_heads",
    lambda c: c.n_heads + 2,
    new_blocks={
        "attn.q.weight": "fresh",
        "attn.k.weight": "fresh",
        "attn.v.weight": "fresh",
        "attn.o.weight": "zero",
    },
)
VALUE = ExpansionCase(
    "d_v",
    expand_value,
    "d_v",
    lambda c: c.d_v + 3,
    new_blocks={"attn.v.weight": "fresh", "attn.o.weight": "zero"},
)
QK = ExpansionCase(
    "d_qk",
    expand_qk,
    "d_qk",
    lambda c: c.d_qk + 2,
    new_blocks={"attn.q.weight": "fresh", "attn.k.weight": "zero"},
)
HIDDEN = ExpansionCase(
    "d_model",
    expand_hidden,
    "d_model",
    lambda c: c.d_model + 6,
    new_blocks={
        "tok_emb.weight": "zero",
        "pos_emb.weight": "zero",
        "attn.q.weight": "fresh",
        "attn.k.weight": "fresh",
        "attn.v.weight": "fresh",
        "attn.o.weight": "zero",
        "mlp.fc.weight": "fresh",
        "mlp.proj.weight": "zero",
        "mlp.proj.bias": "zero",
        "norm_attn.weight": "free",
        "norm_mlp.weight": "free",
        "norm_f.weight": "free",
        "lm_head.weight": "fresh",
    },
)
LAYERS_APPEND = _layers("n_layers-append", "append")
LAYERS_INTERLEAVE = _layers("n_layers-interleave", "interleave")
LAYERS_EXPLICIT = _layers("n_layers-at-0-and-2", [0, 2])

#: The six expansions, one each, in ``GROWABLE_DIMS`` order.
EXPANSIONS: tuple[ExpansionCase, ...] = (MLP, HEADS, VALUE, QK, HIDDEN, LAYERS_APPEND)
#: The six plus the other layer-insertion modes.
ALL_CASES: tuple[ExpansionCase, ...] = (*EXPANSIONS, LAYERS_INTERLEAVE, LAYERS_EXPLICIT)
#: Cases that apply to LayerNorm models (all but the hidden expansion).
LAYERNORM_CASES: tuple[ExpansionCase, ...] = tuple(c for c in ALL_CASES if not c.needs_rmsnorm)


# Compositions of all six expansions, in several orders. Each takes a model of
# ``conftest.tiny_config`` sizes (d_model 7, d_mlp 5, 3 heads, d_qk 3, d_v 2, any n_layers)
# and returns the record composed from the original model to the grown one.
Composition = Callable[[Transformer, torch.Generator | None], ExpansionRecord]


def _grow_all(model: Transformer, gen: torch.Generator | None) -> ExpansionRecord:
    n = model.config.n_layers
    return grow(
        model,
        d_mlp=11,
        n_heads=5,
        d_v=5,
        d_qk=5,
        d_model=13,
        n_layers=2 * n,
        layer_positions="interleave",
        generator=gen,
    )


def _grow_twice(model: Transformer, gen: torch.Generator | None) -> ExpansionRecord:
    n = model.config.n_layers
    first = grow(model, d_model=10, d_qk=4, n_layers=n + 1, layer_positions=[0], generator=gen)
    second = grow(
        model, d_mlp=11, n_heads=5, d_v=5, d_qk=5, d_model=13, n_layers=n + 3, generator=gen
    )
    return first.then(second)


def _layers_first(model: Transformer, gen: torch.Generator | None) -> ExpansionRecord:
    """New layers at 0 and 2 first (so they are widened later), hidden size grown twice."""
    n = model.config.n_layers
    record = add_layers(model, n + 2, positions=[0, 2], generator=gen)
    record = record.then(expand_hidden(model, 10, generator=gen))
    record = record.then(expand_qk(model, 5, generator=gen))
    record = record.then(add_heads(model, 5, generator=gen))
    record = record.then(expand_hidden(model, 13, generator=gen))
    record = record.then(expand_value(model, 5, generator=gen))
    return record.then(expand_mlp(model, 11, generator=gen))


def _hidden_first(model: Transformer, gen: torch.Generator | None) -> ExpansionRecord:
    """Hidden first and last, layers interleaved in the middle."""
    n = model.config.n_layers
    record = expand_hidden(model, 13, generator=gen)
    record = record.then(expand_mlp(model, 11, generator=gen))
    record = record.then(add_layers(model, 2 * n + 1, positions="interleave", generator=gen))
    record = record.then(expand_value(model, 5, generator=gen))
    record = record.then(add_heads(model, 5, generator=gen))
    record = record.then(expand_qk(model, 5, generator=gen))
    return record.then(expand_hidden(model, 16, generator=gen))


COMPOSITIONS: dict[str, Composition] = {
    "grow-all-interleave": _grow_all,
    "grow-twice": _grow_twice,
    "layers-first-hidden-twice": _layers_first,
    "hidden-first-and-last": _hidden_first,
}
