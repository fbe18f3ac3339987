"""The expansion record: every change maps old values to new positions exactly, every
parameter is accounted for, and composed records (grow, ``then``) are equally right."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from conftest import make_model, snapshot, tiny_config
from expansion_table import (
    ALL_CASES,
    BLOCK_VARIANTS,
    COMPOSITIONS,
    GPT2_LAYERNORM,
    LAYERNORM_CASES,
    ExpansionCase,
)
from torch.testing import assert_close

from progrow import ExpansionRecord, Transformer, add_layers, expand_hidden, expand_qk, grow


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_record_right(
    record: ExpansionRecord,
    before: dict[str, torch.Tensor],
    old_config,
    model: Transformer,
    exact: bool = True,
) -> None:
    """``record`` describes exactly how ``before`` (parameters of the model with
    ``old_config``) became ``model``'s parameters.

    ``exact=False`` for records composed of several rescales of one parameter (hidden size
    grown twice): ``(old * a) * b`` and ``old * (a * b)`` may differ in the last bit.
    """
    after = dict(model.named_parameters())
    assert record.old_config == old_config
    assert record.new_config == model.config
    assert not set(record.changes) & set(record.new)
    assert set(record.changes) <= set(after) and set(record.new) <= set(after)
    for name, change in record.changes.items():
        assert change.name == name
        assert change.old_name in before, name
        old, new = before[change.old_name], after[name].detach()
        assert change.old_shape == tuple(old.shape), name
        assert change.new_shape == tuple(new.shape), name
        for ix, n in zip(change.index, change.new_shape, strict=True):
            assert ix.dtype == torch.long and ix.unique().numel() == ix.numel()
            assert ix.numel() == 0 or 0 <= int(ix.min()) <= int(ix.max()) < n
        if exact:
            assert torch.equal(change.take(new), old * change.factor), name
        else:
            assert_close(change.take(new), old * change.factor, rtol=1e-14, atol=0)
        if change.twins is not None:  # every copied entry: its source times its factor
            derived = change.twins.derived()
            assert derived[change.positions()].all(), name
            grid = torch.meshgrid(*[s.clamp(min=0) for s in change.twins.source], indexing="ij")
            copied = old[grid] * change.twins.factor
            assert_close(new[derived], copied[derived], rtol=1e-14, atol=0)
            assert_close(change.carry(old), torch.where(derived, new, 0.0), rtol=1e-14, atol=0)
    # Every parameter of the grown model is changed, new, or unchanged under its name.
    for name, p in after.items():
        if name in record.changes or name in record.new:
            continue
        assert name in before, f"{name} is neither in the record nor in the old model"
        assert torch.equal(p.detach(), before[name]), f"{name} changed but is not recorded"
    # Every old parameter went somewhere: into a change, or unchanged under its name.
    moved = {c.old_name for c in record.changes.values()}
    assert len(moved) == len(record.changes), "two changes claim the same old parameter"
    for name in before:
        kept = name in after and name not in record.changes and name not in record.new
        assert name in moved or kept, f"old {name} is lost"


RECORD_VARIANTS = {"untied": dict(), "tied": dict(tie_embeddings=True), **BLOCK_VARIANTS}


@pytest.mark.parametrize("variant", RECORD_VARIANTS.values(), ids=RECORD_VARIANTS.keys())
@pytest.mark.parametrize("case", ALL_CASES, ids=repr)
def test_record_is_right(case: ExpansionCase, variant) -> None:
    model = make_model(tiny_config(**variant))
    before, config = snapshot(model), model.config
    record = case.apply(model, gen())
    assert record.expansions == (case.dim,)
    assert not record.is_noop
    assert_record_right(record, before, config, model)


@pytest.mark.parametrize(
    "variant", [dict(norm="layernorm", final_norm=False), GPT2_LAYERNORM], ids=["ln", "gpt2"]
)
@pytest.mark.parametrize("case", LAYERNORM_CASES, ids=repr)
def test_record_is_right_layernorm(case: ExpansionCase, variant) -> None:
    model = make_model(tiny_config(**variant))
    before, config = snapshot(model), model.config
    assert_record_right(case.apply(model, gen()), before, config, model)


@pytest.mark.parametrize("init", ["zero", "split"])
@pytest.mark.parametrize("variant", RECORD_VARIANTS.values(), ids=RECORD_VARIANTS.keys())
@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_composed_record_is_right(name: str, variant, init: str) -> None:
    model = make_model(tiny_config(**variant))
    before, config = snapshot(model), model.config
    record = COMPOSITIONS[name](model, gen(), init)
    # Bit-exact where every tensor is rescaled at most once: the manual sequences grow the
    # hidden size twice, and "grow-all-readers" rescales W_K by d_qk's and d_model's
    # factors; splits compose per-entry factors of several expansions.
    exact = name == "grow-all-interleave" and init == "zero"
    assert_record_right(record, before, config, model, exact=exact)


def test_grow_record_lists_expansions_in_order() -> None:
    model = make_model(tiny_config())
    record = grow(model, n_layers=3, d_model=9, d_mlp=7, generator=gen())
    assert record.expansions == ("d_mlp", "d_model", "n_layers")


def test_key_factor_and_attention_scale() -> None:
    model = make_model(tiny_config(d_qk=3))
    record = expand_qk(model, 5, generator=gen())
    for i in range(model.config.n_layers):
        assert record.changes[f"blocks.{i}.attn.k.weight"].factor == math.sqrt(5 / 3)
        assert record.changes[f"blocks.{i}.attn.q.weight"].factor == 1.0


_ROOT = math.sqrt(5 / 3)


@pytest.mark.parametrize(
    ("factor_at", "q", "k"),
    [
        ("keys", 1.0, _ROOT),
        ("queries", _ROOT, 1.0),
        ("shared", (5 / 3) ** 0.25, (5 / 3) ** 0.25),
    ],
)
@pytest.mark.parametrize("variant", ["gpt2-rms", "gated-biases-rope-gqa"])
def test_key_query_factor_placements(factor_at: Any, q: float, k: float, variant: str) -> None:
    """Each placement's factors on the old query and key rows, weights and biases
    (attn_bias) alike, in every layer; their product is sqrt(d_qk'/k). Learned positions
    with d_qk 3 -> 5, and RoPE under GQA with 6 -> 10 (the stored-table layout)."""
    model = make_model(tiny_config(**BLOCK_VARIANTS[variant]))
    record = expand_qk(model, model.config.d_qk * 5 // 3, factor_at=factor_at, generator=gen())
    assert q * k == pytest.approx(_ROOT, rel=1e-15)
    for i in range(model.config.n_layers):
        for suffix, factor in (("q.weight", q), ("q.bias", q), ("k.weight", k), ("k.bias", k)):
            assert record.changes[f"blocks.{i}.attn.{suffix}"].factor == factor, suffix


@pytest.mark.parametrize("final_norm", [True, False])
def test_hidden_factors_and_eps(final_norm: bool) -> None:
    model = make_model(tiny_config(final_norm=final_norm, norm_eps=1e-2))
    record = expand_hidden(model, 13, factor_at="gains", generator=gen())
    gains = [n for n in record.changes if ".norm" in f".{n}"]
    assert len(gains) == 2 * model.config.n_layers + final_norm
    for name, change in record.changes.items():
        expected = math.sqrt(7 / 13) if name in gains else 1.0
        assert change.factor == expected, name
    assert model.config.norm_eps == pytest.approx(1e-2 * 7 / 13, rel=1e-15)
    assert record.new_config.norm_eps == model.config.norm_eps
    for m in model.modules():
        if hasattr(m, "eps"):
            assert m.eps == model.config.norm_eps


def test_layer_insertion_renames() -> None:
    model = make_model(tiny_config(n_layers=2))
    record = add_layers(model, 4, positions=[0, 2], generator=gen())
    renames = {
        c.old_name.split(".")[1] + "->" + c.name.split(".")[1] for c in record.changes.values()
    }
    assert renames == {"0->1", "1->3"}
    assert {n.split(".")[1] for n in record.new} == {"0", "2"}
    change = record.change_for_old("blocks.1.attn.q.weight")
    assert change is not None and change.name == "blocks.3.attn.q.weight"


def test_place_inverts_take() -> None:
    model = make_model(tiny_config())
    before = snapshot(model)
    # Gains: one rescale per tensor, so placing the old values reproduces them bit for bit.
    record = grow(model, d_v=5, d_qk=5, d_model=13, hidden_factor_at="gains", generator=gen())
    for name, change in record.changes.items():
        old = before[change.old_name]
        placed = change.place(old, change.factor)
        assert placed.shape == change.new_shape
        assert torch.equal(
            change.take(placed), change.take(dict(model.named_parameters())[name].detach())
        )
        rest = torch.ones(change.new_shape, dtype=torch.bool)
        rest[change.positions()] = False
        assert not placed[rest].any(), name  # zeros away from the old positions
