"""The FLOPs count against torch's own counter, in both conventions."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from progrow import Transformer, TransformerConfig
from progrow.flops import standard_train_flops_per_token, train_flops_per_token

BASE: dict[str, Any] = dict(
    vocab_size=50, d_model=24, d_mlp=40, n_heads=4, d_qk=8, d_v=8, n_layers=3, max_seq_len=32
)
VARIANTS = {
    "plain": {},
    "llama_like": dict(d_qk=6, d_v=10, n_kv_heads=2, mlp_gated=True, activation="silu"),
    "tied_rope": dict(tie_embeddings=True, positions="rope", attn_bias=True),
}


def measured(config: TransformerConfig, batch: int, seq_len: int) -> dict[str, int]:
    """FLOPs of one forward and backward, by aten op. The math attention backend is used
    because torch's counter does not see the fused CPU kernel; it computes the full score
    matrix with batched matmuls (``bmm``), as dense attention kernels do."""
    torch.manual_seed(0)
    model = Transformer(config)
    tokens = torch.randint(0, config.vocab_size, (batch, seq_len))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens).float().sum().backward()
    return {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize("seq_len", [32, 7])
def test_flops_match_torch_flop_counter(variant: dict[str, Any], seq_len: int) -> None:
    config = TransformerConfig(**{**BASE, **variant})
    batch = 2
    tokens = batch * seq_len
    counts = measured(config, batch, seq_len)
    attention = counts.pop("aten.bmm")  # scores and weighted values, the full T x T
    weights = sum(counts.values())  # mm / addmm: every weight matrix, forward + backward
    assert weights + attention == standard_train_flops_per_token(config, seq_len) * tokens
    # The causal count keeps the weights and the average causal share of the attention.
    causal_attention = attention * (seq_len + 1) / (2 * seq_len)
    assert train_flops_per_token(config, seq_len) * tokens == pytest.approx(
        weights + causal_attention, rel=1e-12
    )
