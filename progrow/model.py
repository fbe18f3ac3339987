"""The transformer of Gesmundo & Maile (2023): pre-norm blocks, per-head key/query size
``d_qk`` independent of the value size ``d_v``; by default GPT-2 style (learned positions,
MLP with biases), and by config Llama style (rotary positions, gated SwiGLU MLP,
grouped-query attention, no biases).

Reads top to bottom: norms, rotary embeddings, attention, MLP, block, model. Parameter
names are part of the growth record and of checkpoints, so they are kept short and stable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.module import _EXTRA_STATE_KEY_SUFFIX as _EXTRA_STATE_KEY

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


def rope_inv_freq(config: TransformerConfig) -> Tensor:
    """The rotation frequency of each of a head's ``d_qk / 2`` pairs, float32.

    ``config.rope_inv_freq`` if set, else Hugging Face Llama's default
    ``1 / theta**(arange(0, d_qk, 2) / d_qk)``, computed the same way (float32) so that an
    imported model's rotations are bitwise those of the original. For ``d_qk' = m * d_qk``
    the exponent ``2(m i) / d_qk'`` is the same rational as ``2i / d_qk``, so the default
    table of the bigger size contains the old one at indices ``m * i``, bit for bit.
    """
    if config.rope_inv_freq is not None:
        return torch.tensor(config.rope_inv_freq, dtype=torch.float32)
    exponent = torch.arange(0, config.d_qk, 2, dtype=torch.int64).float() / config.d_qk
    return 1.0 / (config.rope_theta**exponent)


def rope_cos_sin(config: TransformerConfig, t: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` of shape ``(T, d_qk)`` for positions ``0..t-1``, float32.

    Half-rotation layout: entry ``i`` and ``i + d_qk/2`` share frequency ``i``. Computed
    in float32 whatever the model's dtype (as Hugging Face Llama does), and only cast
    where applied.
    """
    pos = torch.arange(t, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, rope_inv_freq(config).to(device))  # (T, k/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, k)
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs ``(i, i + d/2)`` of ``x`` ``(B, heads, T, d)`` by the given angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    """Causal attention with ``n_heads`` query heads and ``kv_heads`` key/value heads.

    ``q`` holds ``n_heads`` blocks of ``d_qk`` rows each, ``k`` holds ``kv_heads`` blocks
    of ``d_qk`` rows and ``v`` ``kv_heads`` blocks of ``d_v`` rows; ``o`` maps the
    concatenated query heads back to ``d_model``. Query head ``e`` reads KV head
    ``e // kv_group`` (Hugging Face's ``repeat_kv``). Biases on all four if ``attn_bias``.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        h, e, kv = config.d_model, config.n_heads, config.kv_heads
        self.n_heads, self.n_kv_heads = e, kv
        self.d_qk, self.d_v = config.d_qk, config.d_v
        self.dropout = config.dropout
        bias = config.attn_bias
        self.q = nn.Linear(h, e * config.d_qk, bias=bias)
        self.k = nn.Linear(h, kv * config.d_qk, bias=bias)
        self.v = nn.Linear(h, kv * config.d_v, bias=bias)
        self.o = nn.Linear(e * config.d_v, h, bias=bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        b, t, _ = x.shape
        e, kv = self.n_heads, self.n_kv_heads
        q = self.q(x).view(b, t, e, self.d_qk).transpose(1, 2)  # (B, E, T, k)
        k = self.k(x).view(b, t, kv, self.d_qk).transpose(1, 2)  # (B, KV, T, k)
        v = self.v(x).view(b, t, kv, self.d_v).transpose(1, 2)  # (B, KV, T, v)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # The default scale is 1/sqrt(k), the paper's; expand_qk relies on it. With
        # grouped-query attention each KV head serves e // kv consecutive query heads;
        # enable_gqa does that without materializing repeated K and V.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=kv != e,
        )  # (B, E, T, v)
        y = y.transpose(1, 2).reshape(b, t, e * self.d_v)  # (B, T, E*v)
        return self.o(y)  # (B, T, E*v) -> (B, T, h)


def activate(x: Tensor, activation: str) -> Tensor:
    """The MLP nonlinearity named by ``TransformerConfig.activation``."""
    if activation == "relu":
        return F.relu(x)
    if activation == "silu":
        return F.silu(x)
    return F.gelu(x, approximate="tanh" if activation == "gelu_tanh" else "none")


class MLP(nn.Module):
    """``act(x W1 + b1) W2 + b2``, or gated: ``(act(x W_gate + b_g) * (x W1 + b1)) W2 + b2``.

    ``fc`` is W1 (Llama's "up"), ``gate`` W_gate (only if ``mlp_gated``), ``proj`` W2
    ("down"). Biases only if ``mlp_bias``.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        h, p, bias = config.d_model, config.d_mlp, config.mlp_bias
        self.fc = nn.Linear(h, p, bias=bias)
        self.gate = nn.Linear(h, p, bias=bias) if config.mlp_gated else None
        self.proj = nn.Linear(p, h, bias=bias)
        self.activation = config.activation

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.fc(x)  # (B, T, h) -> (B, T, p)
        if self.gate is None:
            hidden = activate(hidden, self.activation)
        else:
            hidden = activate(self.gate(x), self.activation) * hidden  # (B, T, p)
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

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.norm_attn(x), rope))
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
        self.pos_emb: nn.Embedding | None = None
        if config.positions == "learned":
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
        x = self.tok_emb(tokens)  # (B, T, h)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(t, device=tokens.device))
        else:
            rope = rope_cos_sin(self.config, t, tokens.device)  # two (T, k)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope)
        return self.lm_head(self.norm_f(x))  # (B, T, h) -> (B, T, V)

    # The architecture travels with the state dict (as its "_extra_state" entry), so a
    # reader knows what it holds; loading never changes the architecture by itself. A
    # state dict of another config fails to load, as torch's does for other shapes
    # (naming both configs); rebuilding first is an explicit step: :meth:`rebuild` with
    # :func:`state_dict_config`, or progrow.training's checkpoint restore
    # (``load_architecture``), which runs before any optimizer holds the parameters.

    def get_extra_state(self) -> Tensor:
        # A tensor, not a dict: code that clones, compares or moves every state-dict
        # entry keeps working.
        return config_to_tensor(self.config)

    def set_extra_state(self, state: Any) -> None:
        # Nothing to set: _load_from_state_dict compares the config (where it can report
        # a mismatch together with torch's size mismatches).
        pass

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Load-state-dict pre-hooks run in here first (an explicit rebuild on restore).
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        key = prefix + _EXTRA_STATE_KEY
        if key not in state_dict:
            if key in missing_keys:
                missing_keys.remove(key)  # a state dict from before configs travelled with it
            return
        saved = config_from_tensor(state_dict[key])
        if saved != self.config:
            error_msgs.append(
                f"the state dict holds a Transformer of another config (this model -> the "
                f"state dict's: {config_diff(self.config, saved)}; sizes {self.config.sizes()}"
                f" -> {saved.sizes()}): rebuild the model first, with model.rebuild("
                "progrow.model.state_dict_config(state_dict)), before building its optimizer"
            )

    def rebuild(self, config: TransformerConfig) -> None:
        """Give this model the structure of ``config`` in place, values uninitialized.

        The explicit step before loading a state dict of another size (see
        :func:`state_dict_config`): an optimizer built over the old parameters does not
        hold the new ones, so build it after. Nothing happens if the model already has
        ``config``. The new submodules are built on the meta device (so no random number
        is drawn) and then allocated on the device and dtype of the current parameters;
        the caller loads their values.
        """
        if config == self.config:
            return
        ref = next(self.parameters())
        with torch.device("meta"):
            fresh = Transformer(config)
        fresh.to_empty(device=ref.device)
        fresh.to(dtype=ref.dtype)
        if config.tie_embeddings:
            fresh.lm_head.weight = fresh.tok_emb.weight
        for name in list(self._modules):
            delattr(self, name)
        for name, child in fresh.named_children():
            setattr(self, name, child)
        self.config = config
        self.train(self.training)

    def num_params(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())


def config_to_tensor(config: TransformerConfig) -> Tensor:
    """``config`` as a ``uint8`` tensor (its JSON), the form it takes in a state dict."""
    data = json.dumps(config.to_dict(), sort_keys=True).encode()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def config_from_tensor(data: Tensor) -> TransformerConfig:
    """Inverse of :func:`config_to_tensor`."""
    raw = json.loads(bytes(data.cpu().tolist()).decode())
    return TransformerConfig.from_dict(raw)


def state_dict_config(state_dict: Mapping[str, Any], prefix: str = "") -> TransformerConfig | None:
    """The config of the Transformer whose state dict ``state_dict`` holds under
    ``prefix`` (e.g. ``"model."`` in a LightningModule's); ``None`` for a state dict from
    before configs travelled with it.

    Example:
        >>> small = Transformer(TransformerConfig(vocab_size=16, d_model=8, n_layers=1))
        >>> big = Transformer(small.config.replace(n_layers=2))
        >>> small.rebuild(state_dict_config(big.state_dict()))
        >>> small.load_state_dict(big.state_dict())
        <All keys matched successfully>
    """
    data = state_dict.get(prefix + _EXTRA_STATE_KEY)
    return None if data is None else config_from_tensor(data)


def config_diff(old: TransformerConfig, new: TransformerConfig) -> str:
    """The fields in which two configs differ, as ``field old -> new``.

    Example:
        >>> a = TransformerConfig(vocab_size=16, d_model=8)
        >>> config_diff(a, a.replace(d_model=12, n_layers=3))
        'd_model 8 -> 12, n_layers 2 -> 3'
    """
    before, after = old.to_dict(), new.to_dict()
    return ", ".join(
        f"{k} {before.get(k)} -> {after.get(k)}"
        for k in [*before, *(k for k in after if k not in before)]
        if before.get(k) != after.get(k)
    )


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
