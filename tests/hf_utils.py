"""Tiny Hugging Face models for the tests and experiments (local configs, no Hub).

``exact_llama_norm`` makes HF's ``LlamaRMSNorm`` keep float64 inputs in float64: as
shipped it normalizes in float32 whatever the dtype, so float64 comparisons against it
stop at float32 rounding. Only float64 inputs are affected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

from progrow import Transformer

_STOCK_NORM = modeling_llama.LlamaRMSNorm.forward


def _norm_in_input_dtype(self: Any, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float64:
        return _STOCK_NORM(self, x)
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


@contextlib.contextmanager
def exact_llama_norm(enabled: bool = True) -> Iterator[None]:
    """While active, HF Llama's RMSNorm computes float64 inputs in float64 (or, with
    ``enabled=False``, as shipped)."""
    cls = modeling_llama.LlamaRMSNorm
    previous = cls.forward
    cls.forward = _norm_in_input_dtype if enabled else _STOCK_NORM  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        cls.forward = previous  # type: ignore[method-assign]


def perturb_hf_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random: gains around 1, biases around 0, weights ~ 1/sqrt(fan-in)
    (HF's init has unit gains and zero biases, which would hide mapping bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float64)
            if "norm" in name or ".ln_" in name:
                value = 1.0 + 0.3 * noise if name.endswith("weight") else 0.3 * noise
            elif name.endswith("bias"):
                value = 0.3 * noise
            else:
                value = noise / max(param.shape) ** 0.5 * 1.5
            param.copy_(value.to(param.dtype))
    return model


def tiny_llama(dtype: torch.dtype = torch.float64, seed: int = 0, **overrides: Any) -> Any:
    """A perturbed ``LlamaForCausalLM`` in eval mode; ``rope_theta=`` sets the RoPE base."""
    theta = overrides.pop("rope_theta", 10000.0)
    fields: dict[str, Any] = dict(
        vocab_size=37,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        rms_norm_eps=1e-2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    model: Any = LlamaForCausalLM(LlamaConfig(**fields))
    return perturb_hf_(model.to(dtype), seed).eval()


def tiny_gpt2(dtype: torch.dtype = torch.float64, seed: int = 0, **overrides: Any) -> Any:
    """A perturbed ``GPT2LMHeadModel`` in eval mode."""
    fields: dict[str, Any] = dict(
        vocab_size=37,
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=2,
        layer_norm_epsilon=1e-2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    model: Any = GPT2LMHeadModel(GPT2Config(**fields))
    return perturb_hf_(model.to(dtype), seed).eval()


# --- the variants every HF test runs on ---------------------------------------------

#: Max abs logits difference per dtype.
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
DTYPES = [torch.float32, torch.float64]

#: Llama variants: GQA, multi-query with head_dim != hidden / heads, plain multi-head.
LLAMA: dict[str, dict[str, Any]] = {
    "gqa_untied": dict(hidden_size=24, num_attention_heads=4, num_key_value_heads=2, head_dim=6),
    "mqa_headdim_bias_tied": dict(
        hidden_size=20,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=14,
        intermediate_size=33,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
        hidden_act="gelu_pytorch_tanh",
        rope_theta=500.0,
    ),
    "mha_tied": dict(
        hidden_size=16, num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True
    ),
}
#: GPT-2 variants: tied with the default MLP size, untied with an odd one.
GPT2: dict[str, dict[str, Any]] = {
    "tied": dict(n_embd=24, n_head=4),
    "untied_odd": dict(
        n_embd=15, n_head=3, n_inner=29, tie_word_embeddings=False, activation_function="gelu"
    ),
}
CASES = [("llama", k) for k in LLAMA] + [("gpt2", k) for k in GPT2]


def build(family: str, variant: str, dtype: torch.dtype = torch.float64) -> Any:
    if family == "llama":
        return tiny_llama(dtype=dtype, **LLAMA[variant])
    return tiny_gpt2(dtype=dtype, **GPT2[variant])


def tokens_for(hf_model: Any, length: int = 11) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(hf_model.config.vocab_size, (3, length), generator=gen)


@torch.no_grad()
def hf_logits(hf_model: Any, tokens: torch.Tensor) -> torch.Tensor:
    return hf_model(tokens).logits


@torch.no_grad()
def our_logits(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --- growth and refusal registries (tests and experiments/hf_preservation.py) ---------

#: (family, variant, growth) that the family can represent after growth. Sizes are odd
#: where the family allows it; Llama's head counts must divide its hidden size.
EXPORTABLE: list[tuple[str, str, dict[str, Any]]] = [
    ("llama", "gqa_untied", {"d_mlp": 37}),
    ("llama", "gqa_untied", {"n_heads": 6}),
    ("llama", "gqa_untied", {"n_kv_heads": 4}),
    ("llama", "gqa_untied", {"d_qk": 12, "d_v": 12}),
    ("llama", "gqa_untied", {"d_model": 36}),
    ("llama", "gqa_untied", {"n_layers": 3}),
    ("llama", "gqa_untied", {"n_layers": 4, "layer_positions": "interleave"}),
    (
        "llama",
        "gqa_untied",
        {"d_mlp": 37, "n_heads": 8, "n_kv_heads": 4, "d_qk": 18, "d_v": 18, "d_model": 40},
    ),
    (
        "llama",
        "mqa_headdim_bias_tied",
        {"d_mlp": 41, "n_heads": 4, "d_qk": 28, "d_v": 28, "d_model": 28, "n_layers": 3},
    ),
    ("llama", "mha_tied", {"n_heads": 4, "d_model": 20, "n_layers": 3}),
    ("gpt2", "tied", {"d_mlp": 101}),
    ("gpt2", "tied", {"n_layers": 3}),
    ("gpt2", "untied_odd", {"n_layers": 4, "layer_positions": "interleave"}),
    ("gpt2", "untied_odd", {"d_mlp": 31, "n_layers": 3}),
]


def grow_id(case: tuple[str, str, dict[str, Any]]) -> str:
    family, variant, sizes = case
    return f"{family}-{variant}-" + "-".join(f"{k}{v}" for k, v in sizes.items())


#: (family, variant, growth, what the refusal names) for layouts the family cannot hold.
REFUSED: list[tuple[str, str, dict[str, Any], str]] = [
    ("llama", "gqa_untied", {"d_v": 9}, "d_qk=6 != d_v=9"),
    ("llama", "gqa_untied", {"d_qk": 12}, "d_qk=12 != d_v=6"),
    ("llama", "gqa_untied", {"d_qk": 10, "d_v": 10}, "rope_inv_freq: d_qk=10"),
    ("llama", "mha_tied", {"n_heads": 3}, "n_heads=3 does not divide d_model=16"),
    ("gpt2", "tied", {"n_heads": 5}, "n_heads=5 x d_qk=6 != d_model=24"),
    ("gpt2", "tied", {"d_v": 8}, "d_qk=6 != d_v=8"),
    ("gpt2", "tied", {"d_qk": 8, "d_v": 8}, "n_heads=4 x d_qk=8 != d_model=24"),
]


LLAMA_LIKE: dict[str, Any] = dict(
    vocab_size=11, d_model=8, d_mlp=6, n_heads=2, d_qk=4, d_v=4, n_layers=1, positions="rope"
)
GPT2_LIKE: dict[str, Any] = dict(
    vocab_size=11, d_model=8, d_mlp=6, n_heads=2, d_qk=4, d_v=4, n_layers=1, norm="layernorm"
)
#: (family, config fields, what the refusal names).
LAYOUT_REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("llama", {**LLAMA_LIKE, "positions": "learned", "mlp_gated": True}, "positions='learned'"),
    ("llama", {**LLAMA_LIKE, "mlp_gated": False}, "mlp_gated=False"),
    ("llama", {**LLAMA_LIKE, "mlp_gated": True, "norm": "layernorm"}, "norm='layernorm'"),
    ("llama", {**LLAMA_LIKE, "mlp_gated": True, "final_norm": False}, "final_norm=False"),
    ("gpt2", {**GPT2_LIKE, "norm": "rmsnorm"}, "norm='rmsnorm'"),
    ("gpt2", {**GPT2_LIKE, "mlp_gated": True}, "mlp_gated=True"),
    ("gpt2", {**GPT2_LIKE, "positions": "rope"}, "positions='rope'"),
    ("gpt2", {**GPT2_LIKE, "n_kv_heads": 1}, "n_kv_heads=1 != n_heads=2"),
    ("gpt2", {**GPT2_LIKE, "d_qk": 6, "d_v": 6}, "n_heads=2 x d_qk=6 != d_model=8"),
    ("gpt2", {**GPT2_LIKE, "final_norm": False}, "final_norm=False"),
]


def hf_refusals() -> list[tuple[str, Any, str]]:
    from transformers import LlamaConfig, LlamaModel

    linear = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    return [
        ("base_model", lambda: LlamaModel(LlamaConfig(**SMALL_LLAMA)), "LlamaModel"),
        ("rope_scaling", lambda: tiny_llama(rope_parameters=linear), "rope_type='linear'"),
        ("activation", lambda: tiny_llama(hidden_act="gelu_fast"), "hidden_act='gelu_fast'"),
        (
            "gpt2_layer_scale",
            lambda: tiny_gpt2(scale_attn_by_inverse_layer_idx=True),
            "scale_attn_by_inverse_layer_idx=True",
        ),
        ("gpt2_unscaled", lambda: tiny_gpt2(scale_attn_weights=False), "scale_attn_weights=False"),
        ("gpt2_cross", lambda: tiny_gpt2(add_cross_attention=True), "add_cross_attention=True"),
    ]


SMALL_LLAMA: dict[str, Any] = dict(
    vocab_size=11, hidden_size=8, intermediate_size=6, num_hidden_layers=1, num_attention_heads=2
)
