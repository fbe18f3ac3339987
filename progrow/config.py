"""The transformer's configuration: every size is a field, validated when built."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Activation = Literal["relu", "gelu", "gelu_tanh", "silu"]
Norm = Literal["rmsnorm", "layernorm"]
Positions = Literal["learned", "rope"]

ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "gelu_tanh", "silu")
POSITIONS: tuple[str, ...] = ("learned", "rope")

#: The seven growable dimensions, in the order :func:`progrow.grow` applies them. KV heads
#: come before query heads: growing ``n_kv_heads`` adds whole groups (KV heads with their
#: query heads), then ``n_heads`` fills the groups up to its target.
GROWABLE_DIMS: tuple[str, ...] = (
    "d_mlp",
    "n_kv_heads",
    "n_heads",
    "d_v",
    "d_qk",
    "d_model",
    "n_layers",
)


_D = TypeVar("_D", bound="DataclassInstance")


def from_known_fields(cls: type[_D], data: Mapping[str, Any], what: str) -> _D:
    """``cls(**data)`` for a dataclass ``cls``; keys that are not its fields raise
    ``ValueError`` naming them (``what``: how the message names the record)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; known: {sorted(known)}")
    return cls(**data)


def check_positive_int(field: str, value: Any) -> int:
    """Return ``value`` if it is a positive int (not a bool), else raise naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    """An int or float that is not a bool (``True`` is not a dropout rate)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture of a :class:`progrow.Transformer`.

    Expansions replace ``model.config`` with the grown configuration, so the config always
    describes the model as it is now and ``Transformer(model.config)`` builds a model of
    exactly the same structure.
    """

    vocab_size: int = 256
    """Number of token ids."""
    max_seq_len: int = 128
    """Longest sequence the model reads (the length of the learned positional embedding)."""
    d_model: int = 64
    """Hidden size h: width of the residual stream."""
    d_mlp: int = 256
    """MLP size p: hidden units of each block's MLP."""
    n_heads: int = 4
    """Number of attention (query) heads E."""
    n_kv_heads: int | None = None
    """Number of key/value heads (grouped-query attention). ``None``: one per query head,
    and adding query heads adds KV heads too (plain multi-head attention). An integer
    must divide ``n_heads``; query head ``e`` reads KV head ``e // (n_heads // n_kv_heads)``
    (Hugging Face's ``repeat_kv`` grouping); 1 is multi-query attention."""
    d_qk: int = 16
    """Key/query size k per head (independent of ``d_v``)."""
    d_v: int = 16
    """Value size v per head."""
    n_layers: int = 2
    """Number of transformer blocks N."""
    norm_eps: float = 1e-5
    """Epsilon inside the norms. Hidden expansion h -> h' rescales it by h / h' (exactness)."""
    activation: Activation = "gelu"
    """MLP nonlinearity: "relu", "gelu" (exact erf GELU), "gelu_tanh" (GPT-2's tanh
    approximation) or "silu" (with ``mlp_gated``: SwiGLU)."""
    mlp_gated: bool = False
    """Gated MLP ``proj(act(gate(x)) * fc(x))`` (Llama's down(act(gate) * up)) instead of
    ``proj(act(fc(x)))``; adds the parameter ``mlp.gate``."""
    mlp_bias: bool = True
    """Biases on the MLP's ``fc``, ``gate`` and ``proj``."""
    attn_bias: bool = False
    """Biases on the attention's ``q``, ``k``, ``v`` and ``o``."""
    positions: Positions = "learned"
    """"learned" (a ``pos_emb`` table added to the token embedding) or "rope" (rotary
    embeddings on queries and keys, Hugging Face Llama's half-rotation layout, no
    position parameters)."""
    rope_theta: float = 10000.0
    """RoPE base: pair ``i`` of a head rotates with frequency ``rope_theta**(-2i/d_qk)``."""
    rope_inv_freq: tuple[float, ...] | None = None
    """RoPE frequencies, one per rotated pair (``d_qk / 2``). ``None``: Hugging Face's
    default table for ``d_qk`` and ``rope_theta``. Set by ``expand_qk`` when a key/query
    growth by a non-integer factor must keep every old pair's frequency (the default
    table of the new size would not contain them)."""
    norm: Norm = "rmsnorm"
    """"rmsnorm" (gain only) or "layernorm" (gain and bias; cannot grow ``d_model``)."""
    final_norm: bool = True
    """Apply a norm before the output projection (Llama style; the paper has none)."""
    tie_embeddings: bool = False
    """Share the token embedding with the output projection."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches (training only)."""
    init_std: float = 0.02
    """Standard deviation of fresh weights (GPT-2 style); residual projections get
    ``init_std / sqrt(2 * n_layers)``."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", *GROWABLE_DIMS):
            if name != "n_kv_heads":  # None allowed, see _check_kv_heads
                check_positive_int(name, getattr(self, name))
        self._check_kv_heads()
        if not _is_number(self.norm_eps):
            raise ValueError(f"norm_eps must be a number, got {self.norm_eps!r}")
        if not (self.norm_eps >= 0 and math.isfinite(self.norm_eps)):
            raise ValueError(f"norm_eps must be finite and >= 0, got {self.norm_eps!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"norm must be 'rmsnorm' or 'layernorm', got {self.norm!r}")
        for name in ("final_norm", "tie_embeddings", "mlp_gated", "mlp_bias", "attn_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not (_is_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (_is_number(self.init_std) and 0 < self.init_std < math.inf):
            raise ValueError(f"init_std must be finite and > 0, got {self.init_std!r}")
        self._check_rope()

    def _check_kv_heads(self) -> None:
        if self.n_kv_heads is None:
            return
        check_positive_int("n_kv_heads", self.n_kv_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                "(each KV head serves a whole group of query heads)"
            )

    def _check_rope(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        theta = self.rope_theta
        if not (_is_number(theta) and 0.0 < theta < math.inf):
            raise ValueError(f"rope_theta must be a finite number > 0, got {theta!r}")
        if self.positions == "rope" and self.d_qk % 2:
            raise ValueError(
                f"d_qk={self.d_qk} must be even with positions='rope' (dimensions rotate in pairs)"
            )
        table = self.rope_inv_freq
        if table is None:
            return
        if self.positions != "rope":
            raise ValueError(
                f"rope_inv_freq is set but positions={self.positions!r}: only 'rope' uses it"
            )
        if isinstance(table, (str, bytes)) or not isinstance(table, (tuple, list)):
            raise ValueError(f"rope_inv_freq must be a sequence of floats, got {table!r}")
        bad = [f for f in table if not (_is_number(f) and 0 < f < math.inf)]
        if bad or len(table) != self.d_qk // 2:
            raise ValueError(
                f"rope_inv_freq must hold d_qk/2={self.d_qk // 2} finite positive numbers, "
                f"got {len(table)} ({bad[:3]!r} invalid)"
            )
        # A list from YAML/JSON becomes a tuple, so the config stays hashable and comparable.
        object.__setattr__(self, "rope_inv_freq", tuple(float(f) for f in table))

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads actually used (``n_kv_heads`` or ``n_heads``)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def kv_group(self) -> int:
        """Query heads per KV head (1 without grouped-query attention)."""
        return self.n_heads // self.kv_heads

    def sizes(self) -> dict[str, int]:
        """The seven growable sizes as a dict (``n_kv_heads`` as used: :attr:`kv_heads`)."""
        sizes = {name: getattr(self, name) for name in GROWABLE_DIMS}
        sizes["n_kv_heads"] = self.kv_heads
        return sizes

    def replace(self, **changes: Any) -> TransformerConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for checkpoints and logged hyperparameters."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        return from_known_fields(cls, data, "TransformerConfig")

    def num_params(self) -> int:
        """Number of parameters of a model with this config (tied weights counted once)."""
        h, p, e, kv = self.d_model, self.d_mlp, self.n_heads, self.kv_heads
        k, v = self.d_qk, self.d_v
        norm = h if self.norm == "rmsnorm" else 2 * h
        attn = h * (e * k + kv * k + kv * v) + e * v * h  # q, k, v, o
        if self.attn_bias:
            attn += e * k + kv * k + kv * v + h
        n_in = 2 if self.mlp_gated else 1  # fc (and gate) read the stream
        mlp = n_in * h * p + p * h + (n_in * p + h if self.mlp_bias else 0)
        emb = self.vocab_size * h + (self.max_seq_len * h if self.positions == "learned" else 0)
        head = 0 if self.tie_embeddings else self.vocab_size * h
        return (
            emb + head + self.n_layers * (attn + mlp + 2 * norm) + (norm if self.final_norm else 0)
        )
