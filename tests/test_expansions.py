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
    BLOCK_VARIANTS,
    COMPOSITIONS,
    EXPANSIONS,
    GPT2_LAYERNORM,
    LAYERNORM_CASES,
    ExpansionCase,
)
from torch import nn
from torch.testing import assert_close

from progrow import (
    GROWABLE_DIMS,
    ExpansionRecord,
    Transformer,
    add_heads,
    add_layers,
    expand_hidden,
    expand_kv_heads,
    expand_qk,
    grow,
)
from progrow.model import Attention, RMSNorm, rope_inv_freq

# Covers each value of each axis (tying, final norm, activation, depth, dropout in eval).
VARIANTS: dict[str, dict[str, Any]] = {
    "untied-finalnorm-gelu-2L": dict(),
    "tied-finalnorm-relu-1L": dict(tie_embeddings=True, activation="relu", n_layers=1),
    "tied-nofinalnorm-gelu-3L": dict(tie_embeddings=True, final_norm=False, n_layers=3),
    "untied-nofinalnorm-relu-1L": dict(final_norm=False, activation="relu", n_layers=1),
    "tied-dropout-2L": dict(tie_embeddings=True, dropout=0.1),
    **BLOCK_VARIANTS,
}
LAYERNORM_VARIANTS: dict[str, dict[str, Any]] = {
    "gpt2": GPT2_LAYERNORM,
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
    cfg = model.config
    sizes = (cfg.n_heads, cfg.kv_heads, cfg.d_qk, cfg.d_v)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(attns) == model.config.n_layers
    assert all((a.n_heads, a.n_kv_heads, a.d_qk, a.d_v) == sizes for a in attns)
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


TRAINED_VARIANTS = {
    "untied": dict(),
    "tied": dict(tie_embeddings=True),
    "llama": BLOCK_VARIANTS["llama"],
    "gpt2-rms": BLOCK_VARIANTS["gpt2-rms"],
}


@pytest.mark.parametrize("variant", TRAINED_VARIANTS.values(), ids=TRAINED_VARIANTS.keys())
@pytest.mark.parametrize("case", EXPANSIONS, ids=repr)
def test_expansion_preserves_logits_of_trained_model(case: ExpansionCase, variant) -> None:
    cfg = tiny_config(**variant)
    tokens = make_tokens(cfg)
    model = train_(make_model(cfg), tokens, steps=5, lr=3e-2)
    before = logits(model, tokens)
    case.apply(model, gen())
    assert_close(logits(model, tokens), before, rtol=0, atol=TOLERANCE[torch.float64])


COMPOSITION_VARIANTS = {k: VARIANTS[k] for k in [*list(VARIANTS)[:3], *BLOCK_VARIANTS]}


INITS = ["zero", "split"]


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", COMPOSITION_VARIANTS.values(), ids=COMPOSITION_VARIANTS)
@pytest.mark.parametrize("compose", COMPOSITIONS.values(), ids=COMPOSITIONS.keys())
def test_compositions_preserve_logits(compose, variant, dtype, init: str) -> None:
    cfg = tiny_config(**variant)
    model = make_model(cfg, dtype)
    tokens = make_tokens(cfg)
    before = logits(model, tokens)
    record = compose(model, gen(), init)
    assert model.config.sizes() != cfg.sizes()
    assert set(record.expansions) >= set(GROWABLE_DIMS)
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
    "llama-train": (BLOCK_VARIANTS["llama"], True),
    "gpt2-eval": (GPT2_LAYERNORM, False),
    "gated-biases-rope-gqa-eval": (BLOCK_VARIANTS["gated-biases-rope-gqa"], False),
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


STRUCTURE_COMPOSITION_VARIANTS = {
    "untied": dict(),
    "tied": dict(tie_embeddings=True),
    **BLOCK_VARIANTS,
}


@pytest.mark.parametrize(
    "variant", STRUCTURE_COMPOSITION_VARIANTS.values(), ids=STRUCTURE_COMPOSITION_VARIANTS.keys()
)
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("compose", COMPOSITIONS.values(), ids=COMPOSITIONS.keys())
def test_composition_structure(compose, variant, init: str) -> None:
    model = make_model(tiny_config(**variant))
    compose(model, gen(), init)
    assert_same_structure(model, torch.float64)


# ---------------------------------------------------------------- 3. new parameters learn


LEARN_VARIANTS = {
    "untied": dict(),
    "tied": dict(tie_embeddings=True),
    **BLOCK_VARIANTS,
    "gpt2": GPT2_LAYERNORM,
}


@pytest.mark.parametrize("variant", LEARN_VARIANTS.values(), ids=LEARN_VARIANTS.keys())
@pytest.mark.parametrize("case", ALL_CASES, ids=repr)
def test_every_new_block_learns(case: ExpansionCase, variant) -> None:
    cfg = tiny_config(**variant)
    if not case.applies_to(cfg):
        pytest.skip("hidden expansion needs RMSNorm")
    model = make_model(cfg)
    tokens = make_tokens(cfg, length=cfg.max_seq_len + 1)
    record = case.apply(model, gen())
    masks = new_entry_masks(record, model)
    assert masks, "the expansion created no new entries"
    post = snapshot(model)
    train_(model, tokens, steps=4, lr=1e-2)
    after = snapshot(model)
    for name, mask in masks.items():
        if _shift_invariant(cfg, name):  # no gradient to learn from, old or new
            continue
        moved = after[name][mask] != post[name][mask]
        assert moved.all(), f"{name}: {int((~moved).sum())} of {int(mask.sum())} new entries stuck"


def _shift_invariant(cfg, name: str) -> bool:
    """A key bias with learned positions adds ``q_i . b`` to every score of query ``i``:
    softmax ignores it, so its gradient is zero up to rounding (Adam turns that rounding
    into full-size steps, or none where it is exactly 0: whether it "moves" is noise).
    With RoPE the bias is rotated per position and does reach the scores."""
    return name.endswith("attn.k.bias") and cfg.positions == "learned"


def test_key_bias_gets_no_gradient_with_learned_positions() -> None:
    """Why test_every_new_block_learns leaves the key bias out: for every layer, old or
    new, its gradient is rounding noise next to the query bias's."""
    cfg = tiny_config(**GPT2_LAYERNORM)
    model = make_model(cfg).train()  # float64, perturbed: biases away from zero
    tokens = make_tokens(cfg, length=cfg.max_seq_len + 1)
    lm_loss(model, tokens).backward()
    for block in model.blocks:
        attn = block.attn
        assert isinstance(attn, Attention)
        k_bias, q_bias = attn.k.bias, attn.q.bias
        assert k_bias.grad is not None and q_bias.grad is not None
        assert k_bias.grad.abs().max() < 1e-12 * q_bias.grad.abs().max()


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("variant", [dict(tie_embeddings=True), BLOCK_VARIANTS["llama"]])
@pytest.mark.parametrize("composition", ["grow-all-interleave", "hidden-first-and-last"])
def test_every_new_block_learns_after_composition(composition: str, variant, init: str) -> None:
    cfg = tiny_config(**variant)
    model = make_model(cfg)
    tokens = make_tokens(cfg, length=cfg.max_seq_len + 1)
    record = COMPOSITIONS[composition](model, gen(), init)
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
    ("d_mlp", "mlp.fc.weight", "base"),
    ("n_heads", "attn.q.weight", "base"),
    ("n_heads", "attn.v.weight", "base"),
    ("d_qk", "attn.q.weight", "base"),
    ("d_v", "attn.v.weight", "base"),
    ("n_layers-append", "attn.q.weight", "base"),
    ("n_layers-append", "mlp.fc.weight", "base"),
    # SwiGLU: gate and up both wait for down; GQA: new query heads and KV heads for W_O.
    ("d_mlp", "mlp.fc.weight", "llama"),
    ("d_mlp", "mlp.gate.weight", "llama"),
    ("n_heads", "attn.q.weight", "llama"),
    ("n_kv_heads", "attn.q.weight", "llama"),
    ("n_kv_heads", "attn.k.weight", "llama"),
    ("n_kv_heads", "attn.v.weight", "llama"),
    ("d_qk", "attn.q.weight", "llama"),
    ("d_qk-x2", "attn.q.weight", "llama"),
    ("n_layers-append", "mlp.gate.weight", "llama"),
]


@pytest.mark.parametrize(("case_name", "suffix", "variant"), DELAYED_GRADIENT)
def test_zero_first_gradient_then_nonzero(case_name: str, suffix: str, variant: str) -> None:
    case = next(c for c in ALL_CASES if c.name == case_name)
    cfg = tiny_config(**BLOCK_VARIANTS.get(variant, {}))
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


# Every new option on in one of these, so every new parameter kind is checked.
ZERO_OR_FRESH_BLOCKS = {
    "plain": dict(),
    "llama": dict(
        activation="silu", mlp_gated=True, mlp_bias=False, positions="rope", n_kv_heads=2
    ),
    "biases-gated-rope-mqa": dict(mlp_gated=True, attn_bias=True, positions="rope", n_kv_heads=1),
}


@pytest.mark.parametrize("blocks", ZERO_OR_FRESH_BLOCKS.values(), ids=ZERO_OR_FRESH_BLOCKS.keys())
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("case", ALL_CASES, ids=repr)
def test_new_blocks_are_zero_or_fresh(case: ExpansionCase, tied: bool, norm: str, blocks) -> None:
    if case.needs_rmsnorm and norm != "rmsnorm":
        pytest.skip("hidden expansion needs RMSNorm")
    cfg = tiny_config(
        vocab_size=64, d_model=32, d_mlp=32, n_heads=4, d_qk=8, d_v=8, init_std=0.05
    ).replace(tie_embeddings=tied, norm=norm, **blocks)
    model = make_model(cfg)
    before = snapshot(model)
    record = case.apply(model, gen())
    params = dict(model.named_parameters())
    kinds = set()
    for name, mask in new_entry_masks(record, model).items():
        kind = case.block_kind(name)
        kinds.add(kind)
        values = params[name].detach()[mask]
        twins = record.changes[name].twins if name in record.changes else None
        if kind == "copy" and twins is not None:  # copies of their sources, times factors
            copied = twins.values(before[record.changes[name].old_name])
            assert torch.equal(values, copied[mask]), name
            assert twins.derived()[mask].all(), name
        elif kind == "copy":  # a copied layer: its source is another block
            assert name in record.new and values.abs().max() > 0, name
        elif kind == "zero":
            assert torch.equal(values, torch.zeros_like(values)), name
        elif kind == "fresh":
            assert values.abs().max() > 0, name
            if values.numel() >= 50:
                std = values.std().item()
                assert cfg.init_std / 2 < std < 2 * cfg.init_std, (name, std)
        else:
            assert torch.isfinite(values).all(), name
    assert {"zero", "fresh"} <= kinds if case.init == "zero" else "copy" in kinds


def test_hidden_expansion_new_gain_entries() -> None:
    model = make_model(tiny_config())
    expand_hidden(model, 13, factor_at="gains", generator=gen())
    for name, p in model.named_parameters():
        if name.endswith(("norm_attn.weight", "norm_mlp.weight", "norm_f.weight")):
            assert_close(p[7:], torch.full((6,), math.sqrt(7 / 13), dtype=p.dtype))


_GAINS = ("norm_attn.weight", "norm_mlp.weight", "norm_f.weight")
_READER_WEIGHTS = ("attn.q.weight", "attn.k.weight", "attn.v.weight", "mlp.fc.weight")


@pytest.mark.parametrize(
    ("overrides", "head", "final_gain"),
    [
        (dict(), math.sqrt(7 / 13), 1.0),  # untied, final norm: the unembedding reads it
        (dict(tie_embeddings=True), 1.0, math.sqrt(7 / 13)),  # tied: the final gain does
        (dict(final_norm=False), 1.0, None),  # the unembedding reads the raw stream
        (dict(mlp_gated=True, tie_embeddings=True, final_norm=False), 1.0, None),
    ],
    ids=["untied", "tied", "no-final-norm", "gated-tied-no-final-norm"],
)
def test_hidden_factor_on_readers(overrides, head: float, final_gain: float | None) -> None:
    """factor_at="readers": block gains keep their values (new entries 1), the old columns
    of every reader are multiplied by sqrt(h/h'), and the record says so tensor by tensor."""
    cfg = tiny_config(**overrides)
    model = make_model(cfg)
    before = snapshot(model)
    record = expand_hidden(model, 13, factor_at="readers", generator=gen())
    after = snapshot(model)
    a = math.sqrt(7 / 13)
    readers = (*_READER_WEIGHTS, "mlp.gate.weight") if cfg.mlp_gated else _READER_WEIGHTS
    for name, change in record.changes.items():
        if name.endswith(readers):
            expected = a
        elif name == "lm_head.weight":
            expected = head
        elif name == "norm_f.weight":
            assert final_gain is not None
            expected = final_gain
        else:
            expected = 1.0
        assert change.factor == expected, name
        assert_close(change.take(after[name]), before[name] * expected, rtol=0, atol=0)
    for name in after:
        if name.endswith(_GAINS[:2]):
            assert torch.equal(after[name][7:], torch.ones(6, dtype=after[name].dtype)), name
    assert sum(n.endswith(readers) for n in record.changes) == len(readers) * cfg.n_layers
    assert model.config.norm_eps == cfg.norm_eps * 7 / 13  # eps is rescaled either way


def test_hidden_factor_defaults_to_the_readers() -> None:
    """Every entry point without a placement puts the factor on the readers."""
    cfg = tiny_config()
    readers, default, grown = make_model(cfg), make_model(cfg), make_model(cfg)
    old_gain = snapshot(readers)["blocks.0.norm_attn.weight"]
    expand_hidden(readers, 13, factor_at="readers", generator=gen())
    expand_hidden(default, 13, generator=gen())
    grow(grown, d_model=13, generator=gen())
    expected = snapshot(readers)
    for other in (snapshot(default), snapshot(grown)):
        assert other.keys() == expected.keys()
        for name, value in expected.items():
            assert torch.equal(other[name], value), name
    # The gains placement would have scaled the old gain and set sqrt(7/13) in the new.
    gain = expected["blocks.0.norm_attn.weight"]
    assert torch.equal(gain[:7], old_gain) and torch.equal(gain[7:], torch.ones_like(gain[7:]))


def test_hidden_factor_placements_differ_only_in_parameters() -> None:
    """Same function, different parameters: the placement is a real choice."""
    cfg = tiny_config()
    gains, readers = make_model(cfg), make_model(cfg)
    tokens = make_tokens(cfg)
    expand_hidden(gains, 13, factor_at="gains", generator=gen())
    expand_hidden(readers, 13, factor_at="readers", generator=gen())
    assert_close(logits(readers, tokens), logits(gains, tokens), rtol=0, atol=1e-10)
    g, r = snapshot(gains), snapshot(readers)
    assert not torch.equal(g["blocks.0.norm_attn.weight"], r["blocks.0.norm_attn.weight"])
    assert not torch.equal(g["blocks.0.attn.q.weight"], r["blocks.0.attn.q.weight"])


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
    assert case.draws == (not all(torch.equal(sd_a[k], sd_c[k]) for k in sd_a))
    case.apply(d, None)  # the global RNG also works
    assert d.config == a.config


# ---------------------------------------------------------------- 5. traps of the new blocks


def test_rope_integer_factor_keeps_hugging_faces_table() -> None:
    """d_qk 6 -> 12: old pair i moves to new pair 2i, whose default frequency is the old
    one bit for bit, so the config keeps the default table (exportable as is)."""
    model = make_model(tiny_config(**BLOCK_VARIANTS["llama"]))
    old = rope_inv_freq(model.config)
    record = expand_qk(model, 12, generator=gen())
    assert model.config.rope_inv_freq is None
    assert torch.equal(rope_inv_freq(model.config)[::2], old)
    rows = record.changes["blocks.0.attn.k.weight"].index[0]
    # KV head 0: old entries 0, 1, 2 (first half) and 3, 4, 5 (second half) of 6.
    assert rows[:6].tolist() == [0, 2, 4, 6, 8, 10]
    assert rows[6:12].tolist() == [12, 14, 16, 18, 20, 22]  # KV head 1 starts at 12


def test_rope_other_factor_stores_the_table() -> None:
    """d_qk 6 -> 8: old pairs keep their indices and frequencies; the new pair gets the new
    size's default frequency; the table is in the config."""
    model = make_model(tiny_config(**BLOCK_VARIANTS["llama"]))
    old = rope_inv_freq(model.config)
    record = expand_qk(model, 8, generator=gen())
    table = model.config.rope_inv_freq
    assert table is not None and len(table) == 4
    assert torch.equal(rope_inv_freq(model.config)[:3], old)
    default_8 = rope_inv_freq(model.config.replace(rope_inv_freq=None))
    assert table[3] == default_8[3].item()
    rows = record.changes["blocks.0.attn.q.weight"].index[0]
    assert rows[:6].tolist() == [0, 1, 2, 4, 5, 6]  # second half starts at 8 / 2


def test_rope_naive_frequency_rebuild_would_change_the_function() -> None:
    """The trap is real: after a key/query growth, recomputing the default table for the
    new size (instead of the kept one) changes the logits far above float error."""
    cfg = tiny_config(**BLOCK_VARIANTS["llama"])
    model = make_model(cfg)
    tokens = make_tokens(cfg)
    before = logits(model, tokens)
    expand_qk(model, 8, generator=gen())
    assert_close(logits(model, tokens), before, rtol=0, atol=TOLERANCE[torch.float64])
    model.config = model.config.replace(rope_inv_freq=None)
    assert (logits(model, tokens) - before).abs().max() > 1e-3


def test_rope_keys_scaled_and_new_key_entries_zero_with_bias() -> None:
    cfg = tiny_config(**BLOCK_VARIANTS["gated-biases-rope-gqa"])
    model = make_model(cfg)
    k_bias = snapshot(model)["blocks.0.attn.k.bias"]
    record = expand_qk(model, 12, generator=gen())
    change = record.changes["blocks.0.attn.k.bias"]
    assert change.factor == math.sqrt(2)
    new_bias = snapshot(model)["blocks.0.attn.k.bias"]
    assert torch.equal(change.take(new_bias), k_bias * math.sqrt(2))
    assert new_bias.count_nonzero() == k_bias.count_nonzero()  # the new entries are zero


def test_gqa_add_heads_joins_the_groups() -> None:
    """3 KV heads, groups of 2 -> 4: old query head e goes to (e // 2) * 4 + e % 2, the two
    new ones of each group after it; W_O's columns follow; K and V are untouched."""
    cfg = tiny_config(**BLOCK_VARIANTS["llama"])  # 6 query heads, 3 KV heads, d_qk 6, d_v 2
    model = make_model(cfg)
    before = snapshot(model)
    record = add_heads(model, 12, generator=gen())
    assert (model.config.n_heads, model.config.n_kv_heads) == (12, 3)
    q_rows = record.changes["blocks.0.attn.q.weight"].index[0].view(6, 6)[:, 0] // 6
    assert q_rows.tolist() == [0, 1, 4, 5, 8, 9]
    o_cols = record.changes["blocks.0.attn.o.weight"].index[1].view(6, 2)[:, 0] // 2
    assert o_cols.tolist() == [0, 1, 4, 5, 8, 9]
    assert "blocks.0.attn.k.weight" not in record.changes
    assert torch.equal(snapshot(model)["blocks.0.attn.k.weight"], before["blocks.0.attn.k.weight"])


def test_kv_heads_growth_brings_its_query_heads() -> None:
    cfg = tiny_config(**BLOCK_VARIANTS["llama"])  # 6 query heads in 3 groups of 2
    model = make_model(cfg)
    record = expand_kv_heads(model, 5, generator=gen())
    assert (model.config.n_heads, model.config.n_kv_heads) == (10, 5)
    for name in ("q", "k", "v"):  # appended: old rows keep their places
        change = record.changes[f"blocks.0.attn.{name}.weight"]
        assert torch.equal(change.index[0], torch.arange(change.old_shape[0]))
    o = snapshot(model)["blocks.0.attn.o.weight"]
    assert not o[:, 6 * 2 :].any()  # the new query heads' W_O columns are zero


def test_kv_heads_of_a_plain_multi_head_model() -> None:
    """n_kv_heads=None: growing KV heads is adding heads, and the model stays plain
    multi-head; asking grow for more query heads than KV heads makes it grouped."""
    model = make_model(tiny_config())  # 3 heads, n_kv_heads None
    expand_kv_heads(model, 4, generator=gen())
    assert (model.config.n_heads, model.config.n_kv_heads) == (4, None)
    tokens = make_tokens(model.config)
    before = logits(model, tokens)
    record = grow(model, n_kv_heads=4, n_heads=8, generator=gen())
    assert (model.config.n_heads, model.config.n_kv_heads) == (8, 4)
    assert record.old_config.n_kv_heads is None
    assert_close(logits(model, tokens), before, rtol=0, atol=TOLERANCE[torch.float64])
    assert_same_structure(model, torch.float64)
