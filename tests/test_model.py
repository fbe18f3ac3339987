"""TransformerConfig validation and round-trip, and parameter counts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, make_tokens, tiny_config
from torch import Tensor, nn
from torch.testing import assert_close

from progrow import Transformer, TransformerConfig, grow
from progrow.flops import matmul_params
from progrow.model import apply_rope, rope_cos_sin, rope_inv_freq, state_dict_config

BAD_FIELDS = [
    ("vocab_size", 0),
    ("max_seq_len", -1),
    ("d_model", 2.5),
    ("d_mlp", "8"),
    ("n_heads", True),
    ("d_qk", 0),
    ("d_v", -3),
    ("n_layers", None),
    ("norm_eps", -1e-5),
    ("norm_eps", math.nan),
    ("norm_eps", math.inf),
    ("norm_eps", True),
    ("norm_eps", "1e-5"),
    ("activation", "tanh"),
    ("activation", "swiglu"),
    ("mlp_gated", 1),
    ("mlp_bias", "no"),
    ("attn_bias", None),
    ("positions", "alibi"),
    ("rope_theta", 0),
    ("rope_theta", math.inf),
    ("rope_theta", "1e4"),
    ("n_kv_heads", 0),
    ("n_kv_heads", 5),
    ("n_kv_heads", 1.0),
    ("norm", "batchnorm"),
    ("final_norm", 1),
    ("tie_embeddings", "yes"),
    ("dropout", 1.0),
    ("dropout", -0.1),
    ("dropout", True),
    ("dropout", math.nan),
    ("init_std", 0),
    ("init_std", -0.02),
    ("init_std", True),
    ("init_std", math.inf),
    ("init_std", math.nan),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_bad_field_raises_naming_it(field: str, value: Any) -> None:
    with pytest.raises(
        ValueError, match=rf"^{field}\b.*{value!r}" if value is not math.nan else field
    ):
        TransformerConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        tiny_config().replace(**{field: value})


def test_unknown_field_in_from_dict_raises() -> None:
    data = tiny_config().to_dict() | {"d_ff": 3}
    with pytest.raises(ValueError, match="d_ff"):
        TransformerConfig.from_dict(data)


def test_round_trip() -> None:
    config = tiny_config(tie_embeddings=True, norm="layernorm", activation="relu", dropout=0.1)
    data = config.to_dict()
    assert TransformerConfig.from_dict(data) == config
    assert set(data) >= {"d_model", "d_mlp", "n_heads", "d_qk", "d_v", "n_layers"}
    assert config.sizes() == {
        "d_mlp": 5,
        "n_kv_heads": 3,  # None means one per query head
        "n_heads": 3,
        "d_v": 2,
        "d_qk": 3,
        "d_model": 7,
        "n_layers": 2,
    }


BLOCK_VARIANTS: dict[str, dict[str, Any]] = {
    "gpt2": dict(activation="gelu_tanh", attn_bias=True, tie_embeddings=True),
    "llama": dict(
        d_qk=4,
        n_heads=4,
        n_kv_heads=2,
        activation="silu",
        mlp_gated=True,
        mlp_bias=False,
        positions="rope",
    ),
    "mqa-gated-gelu-bias": dict(n_kv_heads=1, mlp_gated=True, attn_bias=True, norm="layernorm"),
    "rope-mha-relu-nobias": dict(d_qk=6, positions="rope", activation="relu", mlp_bias=False),
}


@pytest.mark.parametrize("final_norm", [True, False])
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("tied", [False, True])
def test_num_params(tied: bool, norm: str, final_norm: bool) -> None:
    config = tiny_config(tie_embeddings=tied, norm=norm, final_norm=final_norm)
    model = Transformer(config)
    expected = sum(p.numel() for p in model.parameters())
    assert config.num_params() == model.num_params() == expected


@pytest.mark.parametrize("variant", BLOCK_VARIANTS.values(), ids=BLOCK_VARIANTS.keys())
def test_num_params_of_block_variants(variant: dict[str, Any]) -> None:
    config = tiny_config(**variant)
    model = Transformer(config)
    assert config.num_params() == model.num_params() == sum(p.numel() for p in model.parameters())


def test_default_blocks_are_unchanged() -> None:
    """The defaults build today's model: a config dict without the new fields (an older
    checkpoint's) loads, and the parameter names are the GPT-2 style ones."""
    old_fields = [
        "vocab_size",
        "max_seq_len",
        "d_model",
        "d_mlp",
        "n_heads",
        "d_qk",
        "d_v",
        "n_layers",
        "norm_eps",
        "activation",
        "norm",
        "final_norm",
        "tie_embeddings",
        "dropout",
        "init_std",
    ]
    old = {k: v for k, v in tiny_config().to_dict().items() if k in old_fields}
    config = TransformerConfig.from_dict(old)
    assert config == tiny_config()
    names = [n for n, _ in Transformer(config).named_parameters()]
    assert names[:2] == ["tok_emb.weight", "pos_emb.weight"]
    block0 = sorted(n.removeprefix("blocks.0.") for n in names if n.startswith("blocks.0."))
    assert block0 == [
        "attn.k.weight",
        "attn.o.weight",
        "attn.q.weight",
        "attn.v.weight",
        "mlp.fc.bias",
        "mlp.fc.weight",
        "mlp.proj.bias",
        "mlp.proj.weight",
        "norm_attn.weight",
        "norm_mlp.weight",
    ]


def test_block_options_change_parameters() -> None:
    config = tiny_config(
        n_heads=4,
        n_kv_heads=2,
        d_qk=4,
        mlp_gated=True,
        attn_bias=True,
        mlp_bias=False,
        positions="rope",
    )
    params = dict(Transformer(config).named_parameters())
    assert "pos_emb.weight" not in params
    assert params["blocks.0.mlp.gate.weight"].shape == (5, 7)
    assert params["blocks.0.attn.q.weight"].shape == (4 * 4, 7)
    assert params["blocks.0.attn.k.weight"].shape == (2 * 4, 7)
    assert params["blocks.0.attn.v.weight"].shape == (2 * 2, 7)
    assert params["blocks.0.attn.o.bias"].shape == (7,)
    assert params["blocks.0.attn.k.bias"].shape == (2 * 4,)
    assert not any(n.startswith("blocks.0.mlp") and n.endswith("bias") for n in params)


def test_rope_needs_even_d_qk_and_a_matching_table() -> None:
    with pytest.raises(ValueError, match=r"d_qk=3 must be even with positions='rope'"):
        tiny_config(positions="rope")
    with pytest.raises(ValueError, match=r"rope_inv_freq.*positions='learned'"):
        tiny_config(rope_inv_freq=(1.0,))
    with pytest.raises(ValueError, match=r"rope_inv_freq must hold d_qk/2=2"):
        tiny_config(d_qk=4, positions="rope", rope_inv_freq=(1.0, 0.5, 0.1))
    with pytest.raises(ValueError, match=r"rope_inv_freq must hold.*-1.0"):
        tiny_config(d_qk=4, positions="rope", rope_inv_freq=(1.0, -1.0))
    config = tiny_config(d_qk=4, positions="rope", rope_inv_freq=[1.0, 0.5])
    assert config.rope_inv_freq == (1.0, 0.5)
    assert TransformerConfig.from_dict(config.to_dict()) == config


def test_default_rope_table_is_hugging_faces_and_nests() -> None:
    config = tiny_config(d_qk=6, positions="rope", rope_theta=500.0)
    expected = 1.0 / (500.0 ** (torch.arange(0, 6, 2, dtype=torch.int64).float() / 6))
    assert torch.equal(rope_inv_freq(config), expected)
    # An integer multiple of d_qk contains the old table, bit for bit, at indices m * i.
    for m in (2, 3, 5):
        bigger = rope_inv_freq(config.replace(d_qk=6 * m))
        assert torch.equal(bigger[::m], expected), m


def _reference_logits(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The same network written out head by head and pair by pair (float64), as a check
    of the vectorized forward: explicit 2x2 rotations of pairs (i, i + k/2), query head e
    reading KV head e // group, the gated MLP as its formula."""
    cfg = model.config
    t = tokens.shape[1]
    k, v, group = cfg.d_qk, cfg.d_v, cfg.kv_group
    x = model.tok_emb(tokens)
    if cfg.positions == "learned":
        assert model.pos_emb is not None
        x = x + model.pos_emb.weight[:t]
    freqs = rope_inv_freq(cfg).double() if cfg.positions == "rope" else None
    pos = torch.arange(t, dtype=torch.float64)

    def rotate(z: torch.Tensor) -> torch.Tensor:  # (B, T, k)
        if freqs is None:
            return z
        out = z.clone()
        for i in range(k // 2):
            ang = (pos.float() * freqs[i].float()).double()
            c, s = ang.float().cos().double(), ang.float().sin().double()
            a, bb = z[..., i], z[..., i + k // 2]
            out[..., i], out[..., i + k // 2] = a * c - bb * s, bb * c + a * s
        return out

    mask = torch.ones(t, t, dtype=torch.bool).tril()
    blocks: list[Any] = list(model.blocks)  # typed as plain Modules otherwise
    for block in blocks:
        a_in = block.norm_attn(x)
        attn = block.attn
        q, kk, vv = attn.q(a_in), attn.k(a_in), attn.v(a_in)
        heads = []
        for e in range(cfg.n_heads):
            j = e // group
            qe, ke = rotate(q[..., e * k : (e + 1) * k]), rotate(kk[..., j * k : (j + 1) * k])
            scores = (qe @ ke.transpose(1, 2) / k**0.5).masked_fill(~mask, -torch.inf)
            heads.append(scores.softmax(-1) @ vv[..., j * v : (j + 1) * v])
        x = x + attn.o(torch.cat(heads, dim=-1))
        m_in = block.norm_mlp(x)
        mlp = block.mlp
        up = mlp.fc(m_in)
        acts: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "silu": F.silu}
        acts["gelu"] = F.gelu
        act = acts.get(cfg.activation) or (lambda z: F.gelu(z, approximate="tanh"))
        hidden = act(mlp.gate(m_in)) * up if mlp.gate is not None else act(up)
        x = x + mlp.proj(hidden)
    return model.lm_head(model.norm_f(x))


@pytest.mark.parametrize("variant", BLOCK_VARIANTS.values(), ids=BLOCK_VARIANTS.keys())
def test_forward_matches_a_written_out_reference(variant: dict[str, Any]) -> None:
    config = tiny_config(**variant)
    model = make_model(config)
    tokens = make_tokens(config)
    with torch.no_grad():
        assert_close(model(tokens), _reference_logits(model, tokens), rtol=0, atol=1e-12)


def test_rope_attention_depends_on_relative_positions_only() -> None:
    """Shifting a whole sequence by s positions keeps every query-key score (RoPE rotates
    q at position p and k at position p' by angles whose difference is (p - p') f_i)."""
    config = tiny_config(d_qk=6, positions="rope", max_seq_len=12, n_layers=1)
    model = make_model(config)
    tokens = make_tokens(config, length=6)
    with torch.no_grad():
        attn: Any = model.blocks[0].attn
        x = model.norm_f(model.tok_emb(tokens))  # any input: only positions differ
        cos, sin = rope_cos_sin(config, 9, x.device)
        q = attn.q(x).view(4, 6, 3, 6).transpose(1, 2)
        k = attn.k(x).view(4, 6, 3, 6).transpose(1, 2)
        at0 = apply_rope(q, cos[:6], sin[:6]) @ apply_rope(k, cos[:6], sin[:6]).transpose(2, 3)
        at3 = apply_rope(q, cos[3:], sin[3:]) @ apply_rope(k, cos[3:], sin[3:]).transpose(2, 3)
    assert_close(at3, at0, rtol=0, atol=1e-6)
    assert (at0 - q @ k.transpose(2, 3)).abs().max() > 1e-3  # the rotation does something


@pytest.mark.parametrize("variant", BLOCK_VARIANTS.values(), ids=BLOCK_VARIANTS.keys())
def test_every_parameter_of_a_block_variant_gets_a_gradient(variant: dict[str, Any]) -> None:
    config = tiny_config(**variant)
    model = make_model(config).train()
    tokens = make_tokens(config, length=config.max_seq_len + 1)
    out = model(tokens[:, :-1])
    F.cross_entropy(out.reshape(-1, out.shape[-1]), tokens[:, 1:].reshape(-1)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_model_rejects_too_long_sequence() -> None:
    import torch

    config = tiny_config()
    with pytest.raises(ValueError, match="max_seq_len=9"):
        Transformer(config)(torch.zeros(1, 10, dtype=torch.long))


@pytest.mark.parametrize(
    "variant", [{}, *BLOCK_VARIANTS.values()], ids=["default", *BLOCK_VARIANTS.keys()]
)
def test_flops_count_every_matrix_of_the_blocks(variant: dict[str, Any]) -> None:
    config = tiny_config(**variant)
    linears = [m for m in Transformer(config).modules() if isinstance(m, nn.Linear)]
    assert matmul_params(config) == sum(m.weight.numel() for m in linears)


def _small_and_grown(tie: bool = False) -> tuple[Transformer, Transformer]:
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=32, d_model=8, d_mlp=12, n_heads=2, d_qk=3, d_v=3,
                               n_layers=1, norm_eps=1e-3, tie_embeddings=tie)  # fmt: skip
    grown = Transformer(config).double()
    grow(grown, d_model=12, d_mlp=20, n_layers=3, generator=torch.Generator().manual_seed(0))
    return Transformer(config).double(), grown


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_state_dict_carries_the_architecture(tie: bool) -> None:
    # A model of the starting size, rebuilt to the architecture a grown state dict names,
    # loads it and becomes the grown model (config, eps, tying, dtype).
    small, grown = _small_and_grown(tie)
    state = grown.state_dict()
    config = state_dict_config(state)
    assert config == grown.config
    rng = torch.get_rng_state()
    small.rebuild(config)
    small.load_state_dict(state)
    assert torch.equal(torch.get_rng_state(), rng)  # rebuilt on meta: nothing drawn
    assert small.config == grown.config and small.config.norm_eps != 1e-3
    assert (small.lm_head.weight is small.tok_emb.weight) == tie
    assert all(p.dtype == torch.float64 for p in small.parameters())
    tokens = torch.randint(0, 32, (2, 7))
    torch.testing.assert_close(small(tokens), grown(tokens), rtol=0, atol=0)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "not_strict"])
@pytest.mark.parametrize("into", ["small", "grown"])
def test_loading_another_size_fails_and_keeps_the_architecture(into: str, strict: bool) -> None:
    """A plain load never resizes the model (an optimizer would keep the old parameters):
    it fails as torch's does for other shapes, naming both sizes, and the model keeps its
    config and its parameter objects."""
    small, grown = _small_and_grown()
    target, source = (small, grown) if into == "small" else (grown, small)
    config = target.config
    optimizer = torch.optim.AdamW(target.parameters())
    with pytest.raises(RuntimeError, match="size mismatch for") as info:
        target.load_state_dict(source.state_dict(), strict=strict)
    assert f"sizes {config.sizes()} -> {source.config.sizes()}" in str(info.value)
    assert "model.rebuild(progrow.model.state_dict_config(state_dict))" in str(info.value)
    assert target.config == config
    assert [id(p) for p in target.parameters()] == [
        id(p) for p in optimizer.param_groups[0]["params"]
    ]
