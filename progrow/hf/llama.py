"""``LlamaForCausalLM`` <-> progrow: a one-to-one renaming of parameters.

Llama is progrow with ``positions="rope"`` (same half-rotation layout and float32
frequency table), ``mlp_gated=True`` (``gate_proj`` -> ``mlp.gate``, ``up_proj`` ->
``mlp.fc``, ``down_proj`` -> ``mlp.proj``), RMSNorm and a final norm; its
``num_key_value_heads`` group query heads exactly as progrow's ``n_kv_heads`` do.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from progrow.config import TransformerConfig
from progrow.hf._common import Family, activation_from_hf, rename, rope_table_problem

_TO_HF_ACTIVATION = {
    "silu": "silu",
    "relu": "relu",
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
}

#: (HF name, progrow name); ``{i}`` is the layer index.
_NAMES = [
    ("model.embed_tokens.weight", "tok_emb.weight"),
    ("model.norm.weight", "norm_f.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("model.layers.{i}.input_layernorm.weight", "blocks.{i}.norm_attn.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "blocks.{i}.norm_mlp.weight"),
] + [
    (f"model.layers.{{i}}.{hf}.{leaf}", f"blocks.{{i}}.{ours}.{leaf}")
    for hf, ours in [
        ("self_attn.q_proj", "attn.q"),
        ("self_attn.k_proj", "attn.k"),
        ("self_attn.v_proj", "attn.v"),
        ("self_attn.o_proj", "attn.o"),
        ("mlp.gate_proj", "mlp.gate"),
        ("mlp.up_proj", "mlp.fc"),
        ("mlp.down_proj", "mlp.proj"),
    ]
    for leaf in ("weight", "bias")
]


def config_from_hf(hf: Any) -> TransformerConfig:
    """The progrow config of a ``LlamaConfig``; unsupported RoPE variants are refused."""
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"from_hf: rope_parameters.rope_type={rope['rope_type']!r} is not supported "
            "(only the default RoPE, whose frequencies progrow grows exactly)"
        )
    if getattr(hf, "pretraining_tp", 1) not in (1, None):
        raise ValueError(f"from_hf: pretraining_tp={hf.pretraining_tp!r} is not supported")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    kv_heads = hf.num_key_value_heads or hf.num_attention_heads
    return TransformerConfig(
        vocab_size=hf.vocab_size,
        max_seq_len=hf.max_position_embeddings,
        d_model=hf.hidden_size,
        d_mlp=hf.intermediate_size,
        n_heads=hf.num_attention_heads,
        # None keeps plain multi-head attention growing KV heads with query heads.
        n_kv_heads=None if kv_heads == hf.num_attention_heads else kv_heads,
        d_qk=head_dim,
        d_v=head_dim,
        n_layers=hf.num_hidden_layers,
        norm_eps=float(hf.rms_norm_eps),
        activation=activation_from_hf("hidden_act", hf.hidden_act),  # type: ignore[arg-type]
        norm="rmsnorm",
        final_norm=True,
        tie_embeddings=bool(hf.tie_word_embeddings),
        mlp_gated=True,
        mlp_bias=bool(hf.mlp_bias),
        attn_bias=bool(hf.attention_bias),
        positions="rope",
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        dropout=float(hf.attention_dropout or 0.0),
        init_std=float(hf.initializer_range),
    )


def params_from_hf(params: dict[str, Tensor], config: TransformerConfig) -> dict[str, Tensor]:
    """Llama parameters renamed to progrow's (tied: ``lm_head`` is the embedding)."""
    out = rename(params, _NAMES)
    if config.tie_embeddings:
        out["lm_head.weight"] = out["tok_emb.weight"]
    return out


def problems(config: TransformerConfig) -> list[str]:
    """Why ``LlamaForCausalLM`` cannot represent ``config`` (empty: it can)."""
    found = []
    if config.positions != "rope":
        found.append(f"positions={config.positions!r}: Llama has rotary positions only")
    if not config.mlp_gated:
        found.append("mlp_gated=False: Llama's MLP is gated (down(act(gate(x)) * up(x)))")
    if config.norm != "rmsnorm":
        found.append(f"norm={config.norm!r}: Llama has RMSNorm only")
    if not config.final_norm:
        found.append("final_norm=False: Llama always applies a final norm")
    if config.d_qk != config.d_v:
        found.append(
            f"d_qk={config.d_qk} != d_v={config.d_v}: Llama has one head_dim for keys, "
            "queries and values; grow d_qk and d_v together"
        )
    if config.d_model % config.n_heads:
        found.append(
            f"n_heads={config.n_heads} does not divide d_model={config.d_model}: transformers' "
            "LlamaConfig requires hidden_size % num_attention_heads == 0"
        )
    rope = rope_table_problem(config) if config.positions == "rope" else None
    if rope:
        found.append(rope)
    return found


def hf_config(config: TransformerConfig, base: dict[str, Any], transformers: Any) -> Any:
    """A ``LlamaConfig`` with ``config``'s architecture and ``base``'s other fields."""
    arch = {
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_mlp,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.d_qk,
        "num_hidden_layers": config.n_layers,
        "rms_norm_eps": config.norm_eps,
        "hidden_act": _TO_HF_ACTIVATION[config.activation],
        "tie_word_embeddings": config.tie_embeddings,
        "mlp_bias": config.mlp_bias,
        "attention_bias": config.attn_bias,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_dropout": config.dropout,
        "initializer_range": config.init_std,
        "pretraining_tp": 1,
    }
    fields = {k: v for k, v in base.items() if k not in ("model_type", "architectures")}
    if not base:  # token ids belong to a tokenizer progrow does not know: unset, not guessed
        fields = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return transformers.LlamaConfig(**{**fields, **arch, "architectures": ["LlamaForCausalLM"]})


def params_to_hf(params: dict[str, Tensor], config: TransformerConfig) -> dict[str, Tensor]:
    """progrow parameters renamed to Llama's."""
    return rename(params, [(ours, hf) for hf, ours in _NAMES], "to_hf")


FAMILY = Family(
    name="llama",
    hf_class="LlamaForCausalLM",
    config_from_hf=config_from_hf,
    params_from_hf=params_from_hf,
    problems=problems,
    hf_config=hf_config,
    params_to_hf=params_to_hf,
)
