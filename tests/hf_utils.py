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
