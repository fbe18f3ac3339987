"""What ``init="split"`` adds beyond preservation (tested with every case of the table):
every new entry has a gradient at once, twins carry split weights near 1/2 and their
source's moments, copied layers copy the block below, RoPE pairs keep their frequency,
and twins grow apart when trained on real data."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import lm_loss, logits, make_model, make_tokens, snapshot, tiny_config
from expansion_table import BLOCK_VARIANTS, SPLIT_CASES, ExpansionCase
from torch.testing import assert_close

from progrow import (
    GrowthSchedule,
    GrowthStep,
    Transformer,
    TransformerConfig,
    add_layers,
    expand_mlp,
    expand_qk,
    grow,
)
from progrow.data.batches import sample_batch
from progrow.data.files import load_stdlib
from progrow.expand import grown_config
from progrow.model import rope_inv_freq
from progrow.record import ExpansionRecord
from progrow.surgery import grow_with_optimizers, optimizer_state_by_name


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def twin_masks(record: ExpansionRecord) -> dict[str, torch.Tensor]:
    """Per parameter with twins: True at the copied entries (not at the old ones)."""
    masks = {}
    for name, change in record.changes.items():
        if change.twins is not None:
            mask = change.twins.derived().clone()
            mask[change.positions()] = False
            masks[name] = mask
    return masks


WIDTH_SPLITS = [c for c in SPLIT_CASES if c.dim != "n_layers"]
GRADIENT_VARIANTS = {"untied": dict(), "tied": dict(tie_embeddings=True), **BLOCK_VARIANTS}


@pytest.mark.parametrize("variant", GRADIENT_VARIANTS.values(), ids=GRADIENT_VARIANTS.keys())
@pytest.mark.parametrize("case", WIDTH_SPLITS, ids=repr)
def test_every_copied_entry_has_a_gradient_at_once(case: ExpansionCase, variant) -> None:
    """No zero block: unlike init="zero", no new entry waits for another to move."""
    cfg = tiny_config(**variant)
    model = make_model(cfg).train()
    tokens = make_tokens(cfg, length=cfg.max_seq_len + 1)
    record = case.apply(model, gen())
    masks = twin_masks(record)
    assert masks and not record.new
    lm_loss(model, tokens).backward()
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name.endswith("attn.k.bias"):
            continue  # softmax ignores what a key bias adds (q . b_k is the same for all keys)
        grad = params[name].grad
        assert grad is not None and (grad[mask] != 0).all(), name


def test_mlp_split_weights() -> None:
    """W2's columns of a unit and its copy: old * r and old * (1 - r), r in (0.3, 0.7);
    W1's rows copied as they are."""
    model = make_model(tiny_config())  # d_mlp 5 -> 9: four units copied once
    before = snapshot(model)
    record = expand_mlp(model, 9, init="split", generator=gen())
    proj = record.changes["blocks.0.mlp.proj.weight"]
    assert proj.twins is not None
    source = proj.twins.source[1]
    assert source.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    w = proj.twins.factor[0]
    assert ((w[:4] > 0.3) & (w[:4] < 0.7)).all() and w[4] == 1.0
    assert_close(w[:4] + w[5:], torch.ones(4, dtype=w.dtype), rtol=0, atol=1e-15)
    after = snapshot(model)
    assert torch.equal(after["blocks.0.mlp.fc.weight"][5:], before["blocks.0.mlp.fc.weight"][:4])
    w1 = record.changes["blocks.1.mlp.proj.weight"].twins
    assert w1 is not None and not torch.equal(w1.factor, proj.twins.factor)  # per layer


def test_copied_layers_copy_the_block_below() -> None:
    model = make_model(tiny_config(n_layers=2))
    before = snapshot(model)
    record = add_layers(model, 5, positions=[0, 2, 4], init="split")
    after = snapshot(model)
    # Grown stack: new(copy of old 0), old 0, new(copy of old 0), old 1, new(copy of old 1).
    for new, old in ((0, 0), (2, 0), (4, 1)):
        for leaf in ("attn.q.weight", "mlp.fc.weight", "norm_attn.weight", "mlp.fc.bias"):
            assert torch.equal(after[f"blocks.{new}.{leaf}"], before[f"blocks.{old}.{leaf}"])
        for leaf in ("attn.o.weight", "mlp.proj.weight", "mlp.proj.bias"):
            assert not after[f"blocks.{new}.{leaf}"].any()
    assert {n.split(".")[1] for n in record.new} == {"0", "2", "4"}
    # The copies are copies, not views: training one leaves its source alone.
    params = dict(model.named_parameters())
    with torch.no_grad():
        params["blocks.0.attn.q.weight"].add_(1.0)
    assert torch.equal(params["blocks.1.attn.q.weight"], before["blocks.0.attn.q.weight"])


def test_rope_split_copies_pairs_with_their_frequency() -> None:
    cfg = tiny_config(**BLOCK_VARIANTS["llama"])  # d_qk 6: pairs 0, 1, 2
    model = make_model(cfg)
    old = rope_inv_freq(cfg)
    record = expand_qk(model, 10, init="split", generator=gen())  # 5 pairs: copies of 0, 1
    assert model.config == grown_config(cfg, {"d_qk": 10}, "split")
    assert model.config != grown_config(cfg, {"d_qk": 10})  # zero init: another table
    table = rope_inv_freq(model.config)
    assert torch.equal(table, old[[0, 1, 2, 0, 1]])
    k = record.changes["blocks.0.attn.k.weight"]
    assert k.twins is not None
    # KV head 0: entries 0..4 (first halves of pairs), 5..9 (second halves).
    assert k.twins.source[0][:10].tolist() == [0, 1, 2, 0, 1, 3, 4, 5, 3, 4]
    w = k.twins.factor[:10, 0] ** 2 / (10 / 6)  # sqrt(w) * sqrt(d_qk / k), squared
    assert torch.equal(w[:5], w[5:])  # both entries of a pair share their weight
    assert_close(w[0] + w[3], torch.tensor(1.0, dtype=w.dtype), rtol=0, atol=1e-14)


def test_split_surgery_moves_moments_per_entry() -> None:
    """AdamW state after a split: W2's old columns divided by their split weight (first
    moments) and its square (second), the copies get their source's moments the same way."""
    model = Transformer(tiny_config())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = make_tokens(model.config, length=model.config.max_seq_len + 1)
    for _ in range(2):
        opt.zero_grad()
        lm_loss(model, tokens).backward()
        opt.step()
    before = copy.deepcopy(optimizer_state_by_name(opt, model))
    spec = GrowthStep({"d_mlp": 9}, init="split")
    record = grow_with_optimizers(model, model, [opt], spec, generator=gen())
    after = optimizer_state_by_name(opt, model)
    twins = record.changes["blocks.0.mlp.proj.weight"].twins
    assert twins is not None
    w = twins.factor[0].float()
    src = [0, 1, 2, 3, 4, 0, 1, 2, 3]
    old, new = before["blocks.0.mlp.proj.weight"], after["blocks.0.mlp.proj.weight"]
    assert_close(new["exp_avg"], old["exp_avg"][:, src] / w, rtol=1e-6, atol=0)
    assert_close(new["exp_avg_sq"], old["exp_avg_sq"][:, src] / w**2, rtol=1e-6, atol=0)
    fc_old, fc_new = before["blocks.0.mlp.fc.weight"], after["blocks.0.mlp.fc.weight"]
    assert torch.equal(fc_new["exp_avg"], fc_old["exp_avg"][src])


def test_twins_grow_apart_on_real_data(tmp_path: Path) -> None:
    """Grow all seven dimensions by splits in the middle of AdamW training on the stdlib
    corpus: after a few steps no copied entry equals its source any more (relative to
    their split weights), so the copies are new capacity, not clones."""
    corpus = load_stdlib(cache_dir=tmp_path, max_bytes=60_000)
    cfg = TransformerConfig(
        vocab_size=corpus.vocab_size, max_seq_len=32, d_model=16, d_mlp=24, n_heads=2,
        d_qk=8, d_v=8, n_layers=2, positions="rope", mlp_gated=True, activation="silu",
    )  # fmt: skip
    torch.manual_seed(0)
    # float64: Adam's steps on a twin and its source can differ by less than float32
    # resolves on entries near 1 (gains) within five steps.
    model = Transformer(cfg).double()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)

    seen = torch.zeros(cfg.vocab_size, dtype=torch.long)  # steps after growth using each token

    def step(i: int) -> None:
        batch = sample_batch(corpus.train, index=i, seed=0, batch_size=8, seq_len=32)
        seen[batch[:, :-1].flatten().unique()] += int(i >= 5)
        opt.zero_grad()
        lm_loss(model, batch).backward()
        opt.step()

    for i in range(5):
        step(i)
    sizes = dict(d_mlp=40, n_heads=3, d_v=11, d_qk=12, d_model=27, n_layers=3)
    spec = GrowthStep(sizes, init="split")
    record = grow_with_optimizers(model, model, [opt], spec, generator=gen())
    grown = snapshot(model)
    for i in range(5, 10):
        step(i)
    after = snapshot(model)
    checked = 0
    for name, mask in twin_masks(record).items():
        if name == "tok_emb.weight":  # rows of tokens rare in the batches barely move
            mask &= (seen >= 3)[:, None]
        change = record.changes[name]
        assert change.twins is not None
        # Where each new entry's source sits now (the old entries keep their positions).
        at_source = torch.meshgrid(
            *[ix[s.clamp(min=0)] for ix, s in zip(change.index, change.twins.source, strict=True)],
            indexing="ij",
        )
        factor = change.twins.factor.expand(change.new_shape).to(grown[name].dtype)
        then, now = grown[name] / factor, after[name] / factor  # per unit of split weight
        assert_close(then[mask], then[at_source][mask], rtol=1e-5, atol=1e-7)
        apart = (now[mask] - now[at_source][mask]).abs() > 1e-12  # float64 rounding: ~1e-16
        assert apart.all(), f"{name}: {int((~apart).sum())} of {int(mask.sum())} twins"
        checked += int(mask.sum())
    assert checked > 1000


def test_stack_copies_blocks_with_their_outputs_and_changes_the_function() -> None:
    """init="stack" (G_stack, for comparison): copies of the block below, outputs kept; the
    logits move (nothing claims otherwise) and the copies are new to the optimizer."""
    cfg = tiny_config()
    model = make_model(cfg)
    before, tokens = snapshot(model), make_tokens(cfg)
    old_logits = logits(model, tokens)
    record = add_layers(model, 4, positions="interleave", init="stack")
    after = snapshot(model)
    for new, old in ((1, 0), (3, 1)):  # old 0, copy, old 1, copy
        for leaf in ("attn.q.weight", "attn.o.weight", "mlp.proj.weight", "mlp.proj.bias"):
            assert torch.equal(after[f"blocks.{new}.{leaf}"], before[f"blocks.{old}.{leaf}"])
    assert {n.split(".")[1] for n in record.new} == {"1", "3"}
    assert (logits(model, tokens) - old_logits).abs().max() > 1e-3


@pytest.mark.parametrize("dim", ["d_mlp", "n_heads", "d_v", "d_qk", "d_model", "n_kv_heads"])
def test_stack_grows_only_layers(dim: str) -> None:
    model = make_model(tiny_config())
    before = snapshot(model)
    target = model.config.sizes()[dim] + 2
    match = rf"{dim}={target} with init='stack': .*grows only n_layers"
    with pytest.raises(ValueError, match=match):
        sizes: dict[str, Any] = {"n_layers": 3, dim: target}
        grow(model, **sizes, init="stack")
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())
    with pytest.raises(ValueError, match=rf"growth stage 0: {match}"):
        GrowthSchedule([{"step": 1, dim: target, "init": "stack"}]).validate_for(model.config)
