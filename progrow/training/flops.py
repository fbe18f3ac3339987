"""Training compute from the current architecture: FLOPs per token."""

from __future__ import annotations

from progrow.config import TransformerConfig


def matmul_params(config: TransformerConfig) -> int:
    """Weights used in matrix multiplies (embedding lookups, norms and biases excluded)."""
    h, e = config.d_model, config.n_heads
    attn = h * e * config.d_qk * 2 + h * e * config.d_v * 2  # WQ, WK, WV, W_O
    mlp = 2 * h * config.d_mlp
    return config.n_layers * (attn + mlp) + h * config.vocab_size  # + output projection


def forward_flops_per_token(config: TransformerConfig, seq_len: int) -> float:
    """Forward FLOPs per token at sequence length ``seq_len`` (multiply-add = 2 FLOPs).

    ``2 * matmul_params`` for the weights, plus the attention scores and the weighted sum
    of values: ``2 * n_heads * (d_qk + d_v)`` per attended position, and a causal token
    attends to ``(seq_len + 1) / 2`` positions on average.
    """
    ctx = (seq_len + 1) / 2
    attn = 2 * config.n_layers * config.n_heads * (config.d_qk + config.d_v) * ctx
    return 2 * matmul_params(config) + attn


def train_flops_per_token(config: TransformerConfig, seq_len: int) -> float:
    """Forward plus backward (twice the forward): ``3 x`` forward FLOPs."""
    return 3 * forward_flops_per_token(config, seq_len)
