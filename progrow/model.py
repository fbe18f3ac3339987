"""The transformer of Gesmundo & Maile (2023): pre-norm blocks, per-head key/query size
``d_qk`` independent of the value size ``d_v``, learned positions, MLP with biases.

Reads top to bottom: norms, attention, MLP, block, model. Parameter names are part of the
growth record and of checkpoints, so they are kept short and stable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from progrow.config import TransformerConfig

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``; no bias, no mean-centring."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalize in float32 at least: bf16 sums of squares lose too much.
        xf = x.float() if x.dtype in _LOW_PRECISION else x
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(config: TransformerConfig) -> nn.Module:
    """The norm the config asks for, of width ``d_model``."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


class Attention(nn.Module):
    """Causal multi-head attention without biases.

    ``q``/``k`` hold ``n_heads`` blocks of ``d_qk`` rows each, ``v`` holds ``n_heads``
    blocks of ``d_v`` rows, ``o`` maps the concatenated heads back to ``d_model``.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        h, e = config.d_model, config.n_heads
        self.n_heads, self.d_qk, self.d_v = e, config.d_qk, config.d_v
        self.dropout = config.dropout
        self.q = nn.Linear(h, e * config.d_qk, bias=False)
        self.k = nn.Linear(h, e * config.d_qk, bias=False)
        self.v = nn.Linear(h, e * config.d_v, bias=False)
        self.o = nn.Linear(e * config.d_v, h, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        e = self.n_heads
        q = self.q(x).view(b, t, e, self.d_qk).transpose(1, 2)  # (B, E, T, k)
        k = self.k(x).view(b, t, e, self.d_qk).transpose(1, 2)  # (B, E, T, k)
        v = self.v(x).view(b, t, e, self.d_v).transpose(1, 2)  # (B, E, T, v)
        # The default scale is 1/sqrt(k), the paper's; expand_qk relies on it.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, E, T, v)
        y = y.transpose(1, 2).reshape(b, t, e * self.d_v)  # (B, T, E*v)
        return self.o(y)  # (B, T, E*v) -> (B, T, h)


class MLP(nn.Module):
    """``act(x W1 + b1) W2 + b2``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_mlp)
        self.proj = nn.Linear(config.d_mlp, config.d_model)
        self.activation = config.activation

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.fc(x)  # (B, T, h) -> (B, T, p)
        hidden = F.relu(hidden) if self.activation == "relu" else F.gelu(hidden)
        return self.proj(hidden)  # (B, T, p) -> (B, T, h)


class Block(nn.Module):
    """Pre-norm block: ``x + Attn(Norm(x))``, then ``x + MLP(Norm(x))``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.norm_attn = make_norm(config)
        self.attn = Attention(config)
        self.norm_mlp = make_norm(config)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm_attn(x)))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class Transformer(nn.Module):
    """Decoder-only transformer whose every size is a :class:`TransformerConfig` field.

    Example:
        >>> model = Transformer(TransformerConfig(vocab_size=32, d_model=8, n_layers=1))
        >>> model(torch.zeros(2, 5, dtype=torch.long)).shape
        torch.Size([2, 5, 32])
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_f = make_norm(config) if config.final_norm else nn.Identity()
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Fresh GPT-2 style initialization of every parameter."""
        for name, param in self.named_parameters():
            init_param_(param, name, self.config, generator)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(B, T, vocab_size)`` for token ids ``(B, T)``."""
        t = tokens.shape[1]
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len={self.config.max_seq_len}")
        pos = torch.arange(t, device=tokens.device)
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(pos))  # (B, T, h)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm_f(x))  # (B, T, h) -> (B, T, V)

    def num_params(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())


def is_residual_projection(name: str) -> bool:
    """Whether ``name`` is a weight writing into the residual stream (scaled-down init)."""
    return name.endswith(("attn.o.weight", "mlp.proj.weight"))


def fresh_init(
    shape: tuple[int, ...] | torch.Size,
    name: str,
    config: TransformerConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A float32 CPU tensor drawn as a fresh model's parameter ``name`` would be.

    Drawing on the CPU makes new values identical on every device and rank for one seed.
    Norm gains are ones, biases zeros, weights ``N(0, init_std^2)`` and residual
    projections ``N(0, init_std^2 / (2 n_layers))``.
    """
    leaf = name.rsplit(".", 1)[-1]
    is_norm = ".norm" in f".{name}"
    if is_norm and leaf == "weight":
        return torch.ones(shape)
    if leaf == "bias":
        return torch.zeros(shape)
    std = config.init_std
    if is_residual_projection(name):
        std = std / math.sqrt(2 * config.n_layers)
    return torch.randn(shape, generator=generator) * std


def init_param_(
    param: Tensor,
    name: str,
    config: TransformerConfig,
    generator: torch.Generator | None = None,
) -> None:
    """Overwrite ``param`` in place with :func:`fresh_init` values."""
    with torch.no_grad():
        param.copy_(fresh_init(param.shape, name, config, generator))
