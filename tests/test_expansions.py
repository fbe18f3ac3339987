"""The six function-preserving expansions: preservation, structure, learning, new blocks,
determinism, and bad input. Parametrized over the table in ``expansion_table.py``."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from conftest import (
    TOLERANCE,
    lm_loss,
    logits,
    make_model,
    make_tokens,
    snapshot,
    tiny_config,
    train_,
)
from expansion_table import (
    ALL_CASES,
    COMPOSITIONS,
    EXPANSIONS,
    LAYERNORM_CASES,
    ExpansionCase,
)
from torch import nn
from torch.testing import assert_close

from progrow import (
    ExpansionRecord,
    Transformer,
    add_layers,
    expand_hidden,
)
from progrow.model import Attention, RMSNorm

# Covers each value of each axis (tying, final norm, activation, depth, dropout in eval).
VARIANTS: dict[str, dict[str, Any]] = {
    "untied-finalnorm-gelu-2L": dict(),
    "tied-finalnorm-relu-1L": dict(tie_embeddings=True, activation="relu", n_layers=1),
    "tied-nofinalnorm-gelu-3L": dict(tie_embeddings=True, final_norm=False, n_layers=3),
    "untied-nofinalnorm-relu-1L": dict(final_norm=False, activation="relu", n_layers=1),
    "tied-dropout-2L": dict(tie_embeddings=True, dropout=0.1),
}
LAYERNORM_VARIANTS: dict[str, dict[str, Any]] = {
    "ln-untied-finalnorm-gelu-2L": dict(norm="layernorm"),
    "ln-tied-nofinalnorm-relu-1L": dict(
        norm="layernorm", tie_embeddings=True, final_norm=False, activation="relu", n_layers=1
    ),
}
DTYPES = [torch.float64, torch.float32]


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def new_entry_masks(record: ExpansionRecord, model: Transformer) -> dict[str, torch.Tensor]:
    """For every parameter with new entries: a bool mask, True at the new entries."""
    params = dict(model.named_parameters())
    masks = {}
    for name, change in record.changes.items():
        mask = torch.ones(change.new_shape, dtype=torch.bool)
        mask[change.positions()] = False
        if mask.any():
            masks[name] = mask
    for name in record.new:
        masks[name] = torch.ones(params[name].shape, dtype=torch.bool)
    return masks


def assert_same_structure(model: Transformer, dtype: torch.dtype) -> None:
    """The grown model is indistinguishable in structure from ``Transformer(model.config)``."""
    fresh = Transformer(model.config).to(dtype).train(model.training)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert repr(model) == repr(fresh)
    assert [type(m) for m in model.modules()] == [type(m) for m in fresh.modules()]
    sd, fresh_sd = model.state_dict(), fresh.state_dict()
    assert list(sd) == list(fresh_sd)
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in fresh_sd.items()}
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in fresh.named_parameters()]
    for name, p in model.named_parameters():
        assert type(p) is nn.Parameter and p.requires_grad, name
        assert p.is_contiguous(), name
        assert p.dtype == dtype and p.device == torch.device("cpu"), name
        assert not p._backward_hooks, name
    for m in model.modules():
        assert m.training == model.training, type(m)
        hooks = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks)
        assert not any(hooks), type(m)
        assert not m._backward_pre_hooks, type(m)
    sizes = (model.config.n_heads, model.config.d_qk, model.config.d_v)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(attns) == model.config.n_layers
    assert all((a.n_heads, a.d_qk, a.d_v) == sizes for a in attns)
    if model.config.tie_embeddings:
        assert model.lm_head.weight is model.tok_emb.weight
    else:
        assert model.lm_head.weight is not model.tok_emb.weight
        assert model.lm_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()
    tokens = make_tokens(model.config)
    model_mode = model.training
    model.eval()
    fresh.eval()
    assert_close(logits(fresh, tokens), logits(model, tokens), rtol=0, atol=0)
    model.train(model_mode)


# ---------------------------------------------------------------- 1. preservation


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize("case", ALL_CASES, ids=repr)
def test_expansion_preserves_logits(case: ExpansionCase, variant, dtype) -> None:
    cfg = tiny_config(**variant)
    model = make_model(cfg, dtype)
    tokens = make_tokens(cfg)
    before = logits(model, tokens)
    case.apply(model, gen())
    assert model.config.sizes()[case.dim] == case.target(cfg)
    assert_close(logits(model, tokens), before, rtol=0, atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", LAYERNORM_VARIANTS.values(), ids=LAYERNORM_VARIANTS.keys())
@pytest.mark.parametrize("case", LAYERNORM_CASES, ids=repr)
def test_expansion_preserves_logits_layernorm(case: ExpansionCase, variant, dtype) -> None:
    cfg = tiny_config(**variant)
    model = make_model(cfg, dtype)
    tokens = make_tokens(cfg)
    before = logits(model, tokens)
    case.apply(model, gen())
    assert_close(logits(model, tokens), before, rtol=0, atol=TOLERANCE[dtype])


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("case", EXPANSIONS, ids=repr)
def test_expansion_preserves_logits_of_trained_model(case: ExpansionCase, tied: bool) -> None:
    cfg = tiny_config(tie_embeddings=tied)
    tokens = make_tokens(cfg)
    model = train_(make_model(cfg), tokens, steps=5, lr=3e-2)
    before = logits(model, tokens)
    case.apply(model, gen())
    assert_close(logits(model, tokens), before, rtol=0, atol=TOLERANCE[torch.float64])


COMPOSITION_VARIANTS = {k: VARIANTS[k] for k in list(VARIANTS)[:3]}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", COMPOSITION_VARIANTS.values(), ids=COMPOSITION_VARIANTS)
@pytest.mark.parametrize("compose", COMPOSITIONS.values(), ids=COMPOSITIONS.keys())
def test_compositions_preserve_logits(compose, variant, dtype) -> None:
    cfg = tiny_config(**variant)
    model = make_model(cfg, dtype)
    tokens = make_tokens(cfg)
    before = logits(model, tokens)
    record = compose(model, gen())
    assert model.config.sizes() != cfg.sizes()
    assert set(record.expansions) >= {"d_mlp", "n_heads", "d_v", "d_qk", "d_model", "n_layers"}
    assert_close(logits(model, tokens), before, rtol=0, atol=TOLERANCE[dtype])


def test_preservation_check_detects_a_missing_eps_rescale() -> None:
    """Sanity check of the test setup: with norm_eps=1e-2, forgetting to rescale eps in the
    hidden expansion is visible far above the float64 tolerance."""
    cfg = tiny_config()
    model = make_model(cfg)
    tokens = make_tokens(cfg)
    before = logits(model, tokens)
    expand_hidden(model, 13, generator=gen())
    for m in model.modules():
        if isinstance(m, RMSNorm):
            m.eps = cfg.norm_eps
    assert (logits(model, tokens) - before).abs().max() > 1e-4


@pytest.mark.parametrize("case", ALL_CASES, ids=repr)
def test_expansion_bfloat16(case: ExpansionCase) -> None:
    cfg = tiny_config(tie_embeddings=case.name == "d_model")
    model = make_model(cfg, torch.bfloat16)
    tokens = make_tokens(cfg)
    before = logits(model, tokens).double()
    case.apply(model, gen())
    assert_same_structure(model, torch.bfloat16)
    after = logits(model, tokens).double()
    # bf16 keeps ~3 significant digits; rescaled gains round, so only loosely equal.
    assert_close(after, before, rtol=0, atol=0.03 * before.abs().max().item())


# ---------------------------------------------------------------- 2. structure


STRUCTURE_VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "rms-untied-eval": (dict(), False),
    "rms-tied-train": (dict(tie_embeddings=True, n_layers=1), True),
    "layernorm-untied-eval": (dict(norm="layernorm", final_norm=False), False),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", STRUCTURE_VARIANTS.values(), ids=STRUCTURE_VARIANTS.keys())
@pytest.mark.parametrize("case", ALL_CASES, ids=repr)
def test_expansion_structure(case: ExpansionCase, variant, dtype) -> None:
    overrides, train_mode = variant
    cfg = tiny_config(**overrides)
    if case.needs_rmsnorm and cfg.norm != "rmsnorm":
        pytest.skip("hidden expansion needs RMSNorm")
    model = make_model(cfg, dtype).train(train_mode)
    case.apply(model, gen())
    assert_same_structure(model, dtype)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("compose", COMPOSITIONS.values(), ids=COMPOSITIONS.keys())
def test_composition_structure(compose, tied: bool) -> None:
    model = make_model(tiny_config(tie_embeddings=tied))
    compose(model, gen())
    assert_same_structure(model, torch.float64)


# ---------------------------------------------------------------- 3. new parameters learn


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("case", ALL_CASES, ids=repr)
def test_every_new_block_learns(case: ExpansionCase, tied: bool) -> None:
    cfg = tiny_config(tie_embeddings=tied)
    model = make_model(cfg)
    tokens = make_tokens(cfg, length=cfg.max_seq_len + 1)
    record = case.apply(model, gen())
    masks = new_entry_masks(record, model)
    assert masks, "the expansion created no new entries"
    post = snapshot(model)
    train_(model, tokens, steps=4, lr=1e-2)
    after = snapshot(model)
    for name, mask in masks.items():
        moved = after[name][mask] != post[name][mask]
        assert moved.all(), f"{name}: {int((~moved).sum())} of {int(mask.sum())} new entries stuck"


@pytest.mark.parametrize("composition", ["grow-all-interleave", "hidden-first-and-last"])
def test_every_new_block_learns_after_composition(composition: str) -> None:
    cfg = tiny_config(tie_embeddings=True)
    model = make_model(cfg)
    tokens = make_tokens(cfg, length=cfg.max_seq_len + 1)
    record = COMPOSITIONS[composition](model, gen())
    masks = new_entry_masks(record, model)
    post = snapshot(model)
    train_(model, tokens, steps=4, lr=1e-2)
    after = snapshot(model)
    for name, mask in masks.items():
        assert (after[name][mask] != post[name][mask]).all(), name


def _grad(param: nn.Parameter) -> torch.Tensor:
    assert param.grad is not None
    return param.grad


# (case, parameter suffix) whose new entries get exactly zero gradient on the first step
# (the other side of their unit is zero) and a nonzero one once that side has moved.
DELAYED_GRADIENT = [
    ("d_mlp", "mlp.fc.weight"),
    ("n_heads", "attn.q.weight"),
    ("n_heads", "attn.v.weight"),
    ("d_qk", "attn.q.weight"),
    ("d_v", "attn.v.weight"),
    ("n_layers-append", "attn.q.weight"),
    ("n_layers-append", "mlp.fc.weight"),
]


@pytest.mark.parametrize(("case_name", "suffix"), DELAYED_GRADIENT)
def test_zero_first_gradient_then_nonzero(case_name: str, suffix: str) -> None:
    case = next(c for c in ALL_CASES if c.name == case_name)
    cfg = tiny_config()
    model = make_model(cfg).train()
    tokens = make_tokens(cfg, length=cfg.max_seq_len + 1)
    record = case.apply(model, gen())
    masks = {n: m for n, m in new_entry_masks(record, model).items() if n.endswith(suffix)}
    assert masks
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    for _ in range(2):
        opt.zero_grad()
        lm_loss(model, tokens).backward()
        grads.append({n: _grad(params[n])[m].clone() for n, m in masks.items()})
        opt.step()
    for name in masks:
        assert torch.equal(grads[0][name], torch.zeros_like(grads[0][name])), name
        assert grads[1][name].abs().min() > 0, name


# ---------------------------------------------------------------- 4. zero and fresh blocks


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("case", ALL_CASES, ids=repr)
def test_new_blocks_are_zero_or_fresh(case: ExpansionCase, tied: bool, norm: str) -> None:
    if case.needs_rmsnorm and norm != "rmsnorm":
        pytest.skip("hidden expansion needs RMSNorm")
    cfg = tiny_config(
        vocab_size=64, d_model=32, d_mlp=32, n_heads=4, d_qk=8, d_v=8, init_std=0.05
    ).replace(tie_embeddings=tied, norm=norm)
    model = make_model(cfg)
    record = case.apply(model, gen())
    params = dict(model.named_parameters())
    kinds = set()
    for name, mask in new_entry_masks(record, model).items():
        kind = case.block_kind(name)
        kinds.add(kind)
        values = params[name].detach()[mask]
        if kind == "zero":
            assert torch.equal(values, torch.zeros_like(values)), name
        elif kind == "fresh":
            assert values.abs().max() > 0, name
            if values.numel() >= 50:
                std = values.std().item()
                assert cfg.init_std / 2 < std < 2 * cfg.init_std, (name, std)
        else:
            assert torch.isfinite(values).all(), name
    assert {"zero", "fresh"} <= kinds


def test_hidden_expansion_new_gain_entries() -> None:
    model = make_model(tiny_config())
    expand_hidden(model, 13, generator=gen())
    for name, p in model.named_parameters():
        if name.endswith(("norm_attn.weight", "norm_mlp.weight", "norm_f.weight")):
            assert_close(p[7:], torch.full((6,), math.sqrt(7 / 13), dtype=p.dtype))


def test_new_layer_gains_are_ones_and_biases_zero() -> None:
    model = make_model(tiny_config(norm="layernorm"))
    record = add_layers(model, 4, positions=[0, 2], generator=gen())
    params = dict(model.named_parameters())
    assert {name.split(".")[1] for name in record.new} == {"0", "2"}
    for name in record.new:
        if ".norm_" in name:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.equal(params[name], torch.full_like(params[name], expected)), name
        elif name.endswith("bias"):
            assert torch.equal(params[name], torch.zeros_like(params[name])), name


@pytest.mark.parametrize("case", ALL_CASES, ids=repr)
def test_determinism(case: ExpansionCase) -> None:
    model = make_model(tiny_config())
    a, b, c, d = (copy.deepcopy(model) for _ in range(4))
    rng_state = torch.get_rng_state()
    case.apply(a, gen(123))
    case.apply(b, gen(123))
    case.apply(c, gen(124))
    # A generator is the only source of randomness: the global RNG is left alone.
    assert torch.equal(torch.get_rng_state(), rng_state)
    sd_a, sd_b, sd_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not all(torch.equal(sd_a[k], sd_c[k]) for k in sd_a)
    case.apply(d, None)  # the global RNG also works
    assert d.config == a.config
