"""The registry of expansions and model variants that every expansion-related test is
parametrized over.

One :class:`ExpansionCase` per way of growing a model: the seven expansions, plus the
other insertion modes of ``add_layers`` and an integer-factor key/query growth (the RoPE
layout that keeps Hugging Face's frequency table). ``BLOCK_VARIANTS`` are the decoder
block families (Llama-style, GPT-2-style, ...) the expansions must be exact on. Later
test files (optimizer surgery, the growth callback, resume) import from here so that a
new expansion, or a new variant, is tested everywhere by adding one row.
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
    expand_kv_heads,
    expand_mlp,
    expand_qk,
    expand_value,
    grow,
)

#: What the new entries of a parameter must hold right after an expansion:
#: "zero" exactly zero; "fresh" a fresh weight draw N(0, init_std^2) (not all zero);
#: "free" arbitrary but deterministic (norm gains, biases: constants by design);
#: "copy" a copy of an old entry (``init="split"``), as the record's twins say.
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

    def applies_to(self, config: TransformerConfig) -> bool:
        """Whether this expansion is defined for ``config`` (hidden growth needs RMSNorm)."""
        return config.norm == "rmsnorm" or not self.needs_rmsnorm

    def apply(
        self, model: Transformer, generator: torch.Generator | None = None
    ) -> ExpansionRecord:
        return self.fn(model, self.target(model.config), generator=generator, **self.kwargs)

    def block_kind(self, name: str) -> BlockKind:
        kinds = [kind for suffix, kind in self.new_blocks.items() if name.endswith(suffix)]
        assert len(kinds) == 1, f"{self.name}: no single block kind for {name}: {kinds}"
        return kinds[0]

    @property
    def init(self) -> str:
        """How the new entries are filled: "zero" (zero blocks) or "split" (copies)."""
        return str(self.kwargs.get("init", "zero"))

    @property
    def draws(self) -> bool:
        """Whether the generator decides new values (copied layers draw nothing)."""
        return not (self.init == "split" and self.dim == "n_layers")

    def __repr__(self) -> str:  # short pytest ids
        return self.name


_NEW_HEAD = {
    "attn.q.weight": "fresh",
    "attn.k.weight": "fresh",
    "attn.v.weight": "fresh",
    "attn.o.weight": "zero",
    "attn.q.bias": "free",
    "attn.k.bias": "free",
    "attn.v.bias": "free",
}
_NEW_LAYER = {
    **_NEW_HEAD,
    "attn.o.bias": "zero",
    "mlp.fc.weight": "fresh",
    "mlp.fc.bias": "free",
    "mlp.gate.weight": "fresh",
    "mlp.gate.bias": "free",
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
    new_blocks={
        "mlp.fc.weight": "fresh",
        "mlp.fc.bias": "free",
        "mlp.gate.weight": "fresh",
        "mlp.gate.bias": "free",
        "mlp.proj.weight": "zero",
    },
)
KV_HEADS = ExpansionCase(
    "n_kv_heads",
    expand_kv_heads,
    "n_kv_heads",
    lambda c: c.kv_heads + 2,
    new_blocks=_NEW_HEAD,
)
HEADS = ExpansionCase(
    "n_heads",
    add_heads,
    "n_heads",
    # Under grouped-query attention every group gets two more query heads.
    lambda c: c.n_heads + (2 if c.n_kv_heads is None else 2 * c.n_kv_heads),
    new_blocks=_NEW_HEAD,
)
VALUE = ExpansionCase(
    "d_v",
    expand_value,
    "d_v",
    lambda c: c.d_v + 3,
    new_blocks={"attn.v.weight": "fresh", "attn.v.bias": "free", "attn.o.weight": "zero"},
)
QK = ExpansionCase(
    "d_qk",
    expand_qk,
    "d_qk",
    lambda c: c.d_qk + 2,  # a non-integer factor (RoPE: the stored-table layout)
    new_blocks={
        "attn.q.weight": "fresh",
        "attn.q.bias": "free",
        "attn.k.weight": "zero",
        "attn.k.bias": "zero",
    },
)
QK_DOUBLE = ExpansionCase(
    "d_qk-x2",
    expand_qk,
    "d_qk",
    lambda c: 2 * c.d_qk,  # an integer factor (RoPE: Hugging Face's table, interleaved)
    new_blocks=QK.new_blocks,
)
# The other placements of the key/query factor, each at a non-integer factor (RoPE: the
# stored table) and at an integer one (RoPE: Hugging Face's default table).
QK_PLACED: tuple[ExpansionCase, ...] = tuple(
    ExpansionCase(
        f"d_qk{suffix}-{place}",
        expand_qk,
        "d_qk",
        target,
        {"factor_at": place},
        QK.new_blocks,
    )
    for place in ("queries", "shared")
    for suffix, target in (("", QK.target), ("-x2", QK_DOUBLE.target))
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
        "attn.o.bias": "zero",
        "mlp.fc.weight": "fresh",
        "mlp.gate.weight": "fresh",
        "mlp.proj.weight": "zero",
        "mlp.proj.bias": "zero",
        "norm_attn.weight": "free",
        "norm_mlp.weight": "free",
        "norm_f.weight": "free",
        "lm_head.weight": "fresh",
    },
)
# The same growth with the factor sqrt(h/h') on the norm gains (the paper's placement)
# instead of the readers (the default).
HIDDEN_GAINS = ExpansionCase(
    "d_model-gains",
    expand_hidden,
    "d_model",
    HIDDEN.target,
    {"factor_at": "gains"},
    HIDDEN.new_blocks,
)
LAYERS_APPEND = _layers("n_layers-append", "append")
LAYERS_INTERLEAVE = _layers("n_layers-interleave", "interleave")
LAYERS_EXPLICIT = _layers("n_layers-at-0-and-2", [0, 2])


def split(case: ExpansionCase) -> ExpansionCase:
    """``case`` with ``init="split"``: every new entry a copy (new layers: copies whose
    writes into the stream are zero)."""
    kinds = {suffix: "copy" for suffix in case.new_blocks}
    if case.dim == "n_layers":
        kinds.update({s: "zero" for s in _ZERO_IN_NEW_LAYER})
    return ExpansionCase(
        f"{case.name}-split",
        case.fn,
        case.dim,
        case.target,
        {**case.kwargs, "init": "split"},
        kinds,
    )


_ZERO_IN_NEW_LAYER = ("attn.o.weight", "attn.o.bias", "mlp.proj.weight", "mlp.proj.bias")
#: ``init="split"`` of every case above; the hidden size also grown past 2x (coordinates
#: split in three).
SPLIT_CASES: tuple[ExpansionCase, ...] = (
    split(MLP),
    split(KV_HEADS),
    split(HEADS),
    split(VALUE),
    split(QK),
    split(QK_DOUBLE),
    *(split(case) for case in QK_PLACED),
    split(HIDDEN),
    split(HIDDEN_GAINS),
    ExpansionCase(
        "d_model-x2.4-split",
        expand_hidden,
        "d_model",
        lambda c: 2 * c.d_model + 3,
        {"init": "split"},
        {suffix: "copy" for suffix in HIDDEN.new_blocks},
    ),
    split(LAYERS_APPEND),
    split(LAYERS_INTERLEAVE),
    split(LAYERS_EXPLICIT),
)

#: The seven expansions, one each, in ``GROWABLE_DIMS`` order.
EXPANSIONS: tuple[ExpansionCase, ...] = (MLP, KV_HEADS, HEADS, VALUE, QK, HIDDEN, LAYERS_APPEND)
#: The seven plus the other layer-insertion modes, the integer-factor key/query growth,
#: the hidden growth with its factor on the gains, and all of them with ``init="split"``.
ALL_CASES: tuple[ExpansionCase, ...] = (
    *EXPANSIONS,
    QK_DOUBLE,
    *QK_PLACED,
    HIDDEN_GAINS,
    LAYERS_INTERLEAVE,
    LAYERS_EXPLICIT,
    *SPLIT_CASES,
)
#: Cases that apply to LayerNorm models (all but the hidden expansion).
LAYERNORM_CASES: tuple[ExpansionCase, ...] = tuple(c for c in ALL_CASES if not c.needs_rmsnorm)


#: Decoder-block families, as overrides of ``conftest.tiny_config`` (odd sizes where the
#: block allows: RoPE needs an even ``d_qk``, here 6 = 3 odd pairs; GQA groups of 2 under 3
#: KV heads). Each value of each new option appears at least once.
BLOCK_VARIANTS: dict[str, dict[str, Any]] = {
    # Llama: RMSNorm, SwiGLU, no biases, RoPE, grouped-query attention, untied, final norm.
    "llama": dict(
        activation="silu",
        mlp_gated=True,
        mlp_bias=False,
        positions="rope",
        d_qk=6,
        n_heads=6,
        n_kv_heads=3,
    ),
    # Multi-query attention, tied, without final norm, RoPE with a non-default base.
    "llama-mqa-tied": dict(
        activation="silu",
        mlp_gated=True,
        mlp_bias=False,
        positions="rope",
        rope_theta=500.0,
        d_qk=4,
        n_kv_heads=1,
        tie_embeddings=True,
        final_norm=False,
    ),
    # GPT-2's blocks with RMSNorm (so that the hidden size can grow): tanh GELU, biases
    # everywhere, learned positions, tied.
    "gpt2-rms": dict(activation="gelu_tanh", attn_bias=True, tie_embeddings=True),
    # Everything on at once: gated GELU with biases, attention biases, RoPE, GQA.
    "gated-biases-rope-gqa": dict(
        mlp_gated=True,
        attn_bias=True,
        positions="rope",
        d_qk=6,
        n_heads=6,
        n_kv_heads=2,
        activation="gelu",
    ),
}
#: GPT-2 itself (LayerNorm): every expansion but the hidden size.
GPT2_LAYERNORM: dict[str, Any] = dict(
    norm="layernorm", activation="gelu_tanh", attn_bias=True, tie_embeddings=True
)


# Compositions of all seven expansions, in several orders. Each takes a model of any
# ``conftest.tiny_config``-derived config (block variants included) and returns the
# record composed from the original model to the grown one. Targets are relative to the
# model's sizes, so that they are valid for every variant (even d_qk under RoPE, query
# heads a multiple of the KV heads).
Composition = Callable[..., ExpansionRecord]
"""``(model, generator, init="zero") -> record``; ``init`` goes to every expansion."""


def _grow_all(
    model: Transformer,
    gen: torch.Generator | None,
    init: Any = "zero",
    hidden_factor_at: Any = "gains",  # one rescale per tensor: the record is bit-exact
) -> ExpansionRecord:
    """Everything in one ``grow``; more query heads than KV heads asked for, so a model
    with one KV head per query head becomes grouped-query."""
    c = model.config
    kv = c.kv_heads + 1
    return grow(
        model,
        d_mlp=2 * c.d_mlp + 1,
        n_kv_heads=kv,
        n_heads=kv * (c.kv_group + 1),
        d_v=c.d_v + 3,
        d_qk=c.d_qk + 2,
        d_model=c.d_model + 6,
        n_layers=2 * c.n_layers,
        layer_positions="interleave",
        hidden_factor_at=hidden_factor_at,
        init=init,
        generator=gen,
    )


def _grow_all_readers(
    model: Transformer, gen: torch.Generator | None, init: Any = "zero"
) -> ExpansionRecord:
    """:func:`_grow_all` with the default placement (the readers): W_K is rescaled twice,
    by d_qk's factor and by d_model's."""
    return _grow_all(model, gen, init, hidden_factor_at="readers")


def _grow_twice(
    model: Transformer, gen: torch.Generator | None, init: Any = "zero"
) -> ExpansionRecord:
    c = model.config
    n = c.n_layers
    first = grow(
        model,
        n_heads=c.n_heads + c.kv_heads,
        d_model=c.d_model + 3,
        d_qk=c.d_qk + 2,
        n_layers=n + 1,
        layer_positions=[0],
        hidden_factor_at="gains",
        init=init,
        generator=gen,
    )
    second = grow(
        model,
        d_mlp=2 * c.d_mlp + 1,
        n_kv_heads=model.config.kv_heads + 1,
        d_v=c.d_v + 3,
        d_qk=2 * c.d_qk + 4,
        d_model=c.d_model + 6,
        n_layers=n + 3,
        hidden_factor_at="readers",  # after a growth with the factor on the gains
        init=init,
        generator=gen,
    )
    return first.then(second)


def _layers_first(
    model: Transformer, gen: torch.Generator | None, init: Any = "zero"
) -> ExpansionRecord:
    """New layers at 0 and 2 first (so they are widened later), hidden size grown twice."""
    c = model.config
    record = add_layers(model, c.n_layers + 2, positions=[0, 2], generator=gen, init=init)
    record = record.then(
        expand_hidden(model, c.d_model + 3, factor_at="gains", generator=gen, init=init)
    )
    record = record.then(expand_qk(model, 2 * c.d_qk, generator=gen, init=init))
    record = record.then(add_heads(model, c.n_heads + c.kv_heads, generator=gen, init=init))
    record = record.then(
        expand_kv_heads(model, model.config.kv_heads + 1, generator=gen, init=init)
    )
    record = record.then(
        expand_hidden(model, c.d_model + 6, factor_at="gains", generator=gen, init=init)
    )
    record = record.then(expand_value(model, c.d_v + 3, generator=gen, init=init))
    return record.then(expand_mlp(model, 2 * c.d_mlp + 1, generator=gen, init=init))


def _hidden_first(
    model: Transformer, gen: torch.Generator | None, init: Any = "zero"
) -> ExpansionRecord:
    """Hidden first (factor on the readers) and last (on the gains), layers interleaved in
    the middle."""
    c = model.config
    record = expand_hidden(model, c.d_model + 6, factor_at="readers", generator=gen, init=init)
    record = record.then(expand_mlp(model, 2 * c.d_mlp + 1, generator=gen, init=init))
    record = record.then(
        add_layers(model, 2 * c.n_layers + 1, positions="interleave", generator=gen, init=init)
    )
    record = record.then(expand_value(model, c.d_v + 3, generator=gen, init=init))
    record = record.then(expand_kv_heads(model, c.kv_heads + 2, generator=gen, init=init))
    grown = model.config
    record = record.then(add_heads(model, grown.n_heads + grown.kv_heads, generator=gen, init=init))
    record = record.then(expand_qk(model, c.d_qk + 2, generator=gen, init=init))
    return record.then(
        expand_hidden(model, c.d_model + 9, factor_at="gains", generator=gen, init=init)
    )


def _mixed_inits(
    model: Transformer, gen: torch.Generator | None, init: Any = "zero"
) -> ExpansionRecord:
    """Zero blocks and copies in turn (``init`` says which comes first): copies of fresh
    entries, fresh entries beside copies, each expansion twice."""
    other: Any = "split" if init == "zero" else "zero"
    record = _grow_all_readers(model, gen, init)
    c = model.config
    return record.then(
        grow(
            model,
            d_mlp=c.d_mlp + 3,
            n_heads=c.n_heads + c.kv_heads,
            d_v=c.d_v + 1,
            d_qk=c.d_qk + 2,
            d_model=c.d_model + 5,
            n_layers=c.n_layers + 1,
            init=other,
            generator=gen,
        )
    )


COMPOSITIONS: dict[str, Composition] = {
    "grow-all-interleave": _grow_all,
    "grow-all-readers": _grow_all_readers,
    "grow-twice": _grow_twice,
    "layers-first-hidden-twice": _layers_first,
    "hidden-first-and-last": _hidden_first,
    "mixed-inits": _mixed_inits,
}
