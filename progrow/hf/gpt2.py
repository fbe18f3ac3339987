"""``GPT2LMHeadModel`` <-> progrow.

GPT-2 is progrow with learned positions, LayerNorm, a plain (ungated) MLP, biases on
attention and MLP, and ``d_qk = d_v = d_model / n_heads``. Its ``Conv1D`` layers store
weights as ``(in, out)``, the transpose of ``nn.Linear``'s, and ``c_attn`` holds q, k and v
side by side in one ``(d_model, 3 d_model)`` matrix.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from progrow.config import TransformerConfig
from progrow.hf._common import Family, activation_from_hf, rename

_TO_HF_ACTIVATION = {"silu": "silu", "relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new"}

#: Parameters that are renamed only (no transpose, no split); ``{i}`` is the layer.
_NAMES = [
    ("transformer.wte.weight", "tok_emb.weight"),
    ("transformer.wpe.weight", "pos_emb.weight"),
    ("transformer.ln_f.weight", "norm_f.weight"),
    ("transformer.ln_f.bias", "norm_f.bias"),
    ("lm_head.weight", "lm_head.weight"),
] + [
    (f"transformer.h.{{i}}.{hf}.{leaf}", f"blocks.{{i}}.{ours}.{leaf}")
    for hf, ours in [("ln_1", "norm_attn"), ("ln_2", "norm_mlp")]
    for leaf in ("weight", "bias")
]
#: Conv1D layers other than ``c_attn``: HF name -> progrow Linear.
_CONV = {"attn.c_proj": "attn.o", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}


def config_from_hf(hf: Any) -> TransformerConfig:
    """The progrow config of a ``GPT2Config``; attention variants progrow lacks refused."""
    for field, supported in [
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ]:
        if bool(getattr(hf, field, supported)) != supported:
            raise ValueError(
                f"from_hf: {field}={getattr(hf, field)!r} is not supported "
                f"(progrow's attention needs {field}={supported})"
            )
    head = hf.n_embd // hf.n_head
    return TransformerConfig(
        vocab_size=hf.vocab_size,
        max_seq_len=hf.n_positions,
        d_model=hf.n_embd,
        d_mlp=hf.n_inner or 4 * hf.n_embd,
        n_heads=hf.n_head,
        d_qk=head,
        d_v=head,
        n_layers=hf.n_layer,
        norm_eps=float(hf.layer_norm_epsilon),
        activation=activation_from_hf(  # type: ignore[arg-type]
            "activation_function", hf.activation_function
        ),
        norm="layernorm",
        final_norm=True,
        tie_embeddings=bool(hf.tie_word_embeddings),
        mlp_bias=True,
        attn_bias=True,
        positions="learned",
        # progrow has one dropout rate (attention weights, residual branches, embeddings).
        dropout=float(hf.resid_pdrop),
        init_std=float(hf.initializer_range),
    )


def params_from_hf(params: dict[str, Tensor], config: TransformerConfig) -> dict[str, Tensor]:
    """GPT-2 parameters as progrow's: Conv1D weights transposed, ``c_attn`` split."""
    plain = {k: v for k, v in params.items() if ".attn.c_" not in k and ".mlp.c_" not in k}
    out = rename(plain, _NAMES)
    h = config.d_model
    for i in range(config.n_layers):
        hf, ours = f"transformer.h.{i}.", f"blocks.{i}."
        qkv_w = params[hf + "attn.c_attn.weight"].t()  # (h, 3h) -> (3h, h): q, k, v rows
        qkv_b = params[hf + "attn.c_attn.bias"]
        for j, name in enumerate("qkv"):
            out[f"{ours}attn.{name}.weight"] = qkv_w[j * h : (j + 1) * h]
            out[f"{ours}attn.{name}.bias"] = qkv_b[j * h : (j + 1) * h]
        for conv, linear in _CONV.items():
            weight = params[f"{hf}{conv}.weight"]  # Conv1D: (in, out)
            out[f"{ours}{linear}.weight"] = weight.t()  # (in, out) -> (out, in)
            out[f"{ours}{linear}.bias"] = params[f"{hf}{conv}.bias"]
    if config.tie_embeddings:
        out["lm_head.weight"] = out["tok_emb.weight"]
    return out


def problems(config: TransformerConfig) -> list[str]:
    """Why ``GPT2LMHeadModel`` cannot represent ``config`` (empty: it can)."""
    found = []
    if config.positions != "learned":
        found.append(f"positions={config.positions!r}: GPT-2 has learned positions only")
    if config.norm != "layernorm":
        found.append(f"norm={config.norm!r}: GPT-2 has LayerNorm only")
    if not config.final_norm:
        found.append("final_norm=False: GPT-2 always applies a final LayerNorm (ln_f)")
    if config.mlp_gated:
        found.append("mlp_gated=True: GPT-2's MLP is not gated")
    if config.kv_heads != config.n_heads:
        found.append(
            f"n_kv_heads={config.n_kv_heads} != n_heads={config.n_heads}: GPT-2 has one "
            "key/value head per query head"
        )
    if config.d_qk != config.d_v:
        found.append(f"d_qk={config.d_qk} != d_v={config.d_v}: GPT-2 has one head size")
    if config.n_heads * config.d_qk != config.d_model:
        found.append(
            f"n_heads={config.n_heads} x d_qk={config.d_qk} != d_model={config.d_model}: "
            "GPT-2's head size is d_model / n_heads"
        )
    return found


def hf_config(config: TransformerConfig, base: dict[str, Any], transformers: Any) -> Any:
    """A ``GPT2Config`` with ``config``'s architecture and ``base``'s other fields."""
    arch = {
        "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len,
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.d_mlp,
        "activation_function": _TO_HF_ACTIVATION[config.activation],
        "layer_norm_epsilon": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": config.init_std,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
    }
    fields = {k: v for k, v in base.items() if k not in ("model_type", "architectures")}
    if not base:  # token ids belong to a tokenizer progrow does not know: unset, not guessed
        fields = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return transformers.GPT2Config(**{**fields, **arch, "architectures": ["GPT2LMHeadModel"]})


def params_to_hf(params: dict[str, Tensor], config: TransformerConfig) -> dict[str, Tensor]:
    """progrow parameters as GPT-2's: Linear weights transposed, q, k, v fused.

    A progrow model without attention or MLP biases gets zero biases, which compute the
    same function.
    """
    plain = {k: v for k, v in params.items() if ".attn." not in k and ".mlp." not in k}
    out = rename(plain, [(ours, hf) for hf, ours in _NAMES], "to_hf")

    def bias(name: str, size: int) -> Tensor:
        weight = params[name + ".weight"]
        return params.get(name + ".bias", weight.new_zeros(size))

    for i in range(config.n_layers):
        hf, ours = f"transformer.h.{i}.", f"blocks.{i}."
        qkv = [f"{ours}attn.{name}" for name in "qkv"]
        out[hf + "attn.c_attn.weight"] = torch.cat([params[n + ".weight"] for n in qkv]).t()
        out[hf + "attn.c_attn.bias"] = torch.cat([bias(n, config.d_model) for n in qkv])
        for conv, linear in _CONV.items():
            weight = params[f"{ours}{linear}.weight"]
            out[f"{hf}{conv}.weight"] = weight.t()  # (out, in) -> (in, out)
            out[f"{hf}{conv}.bias"] = bias(ours + linear, weight.shape[0])
    return out


FAMILY = Family(
    name="gpt2",
    hf_class="GPT2LMHeadModel",
    config_from_hf=config_from_hf,
    params_from_hf=params_from_hf,
    problems=problems,
    hf_config=hf_config,
    params_to_hf=params_to_hf,
)
