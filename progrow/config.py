"""The transformer's configuration: every size is a field, validated when built."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

Activation = Literal["relu", "gelu"]
Norm = Literal["rmsnorm", "layernorm"]

#: The six growable dimensions, in the order :func:`progrow.grow` applies them.
GROWABLE_DIMS: tuple[str, ...] = ("d_mlp", "n_heads", "d_v", "d_qk", "d_model", "n_layers")


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
    """Length of the learned positional embedding (longest sequence the model reads)."""
    d_model: int = 64
    """Hidden size h: width of the residual stream."""
    d_mlp: int = 256
    """MLP size p: hidden units of each block's MLP."""
    n_heads: int = 4
    """Number of attention heads E."""
    d_qk: int = 16
    """Key/query size k per head (independent of ``d_v``)."""
    d_v: int = 16
    """Value size v per head."""
    n_layers: int = 2
    """Number of transformer blocks N."""
    norm_eps: float = 1e-5
    """Epsilon inside the norms. Hidden expansion h -> h' rescales it by h / h' (exactness)."""
    activation: Activation = "gelu"
    """MLP nonlinearity: "relu" or "gelu" (exact erf GELU)."""
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
            check_positive_int(name, getattr(self, name))
        if not _is_number(self.norm_eps):
            raise ValueError(f"norm_eps must be a number, got {self.norm_eps!r}")
        if not (self.norm_eps >= 0 and math.isfinite(self.norm_eps)):
            raise ValueError(f"norm_eps must be finite and >= 0, got {self.norm_eps!r}")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {self.activation!r}")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"norm must be 'rmsnorm' or 'layernorm', got {self.norm!r}")
        for name in ("final_norm", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not (_is_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (_is_number(self.init_std) and 0 < self.init_std < math.inf):
            raise ValueError(f"init_std must be finite and > 0, got {self.init_std!r}")

    def sizes(self) -> dict[str, int]:
        """The six growable sizes as a dict."""
        return {name: getattr(self, name) for name in GROWABLE_DIMS}

    def replace(self, **changes: Any) -> TransformerConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for checkpoints and logged hyperparameters."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown TransformerConfig field(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**data)

    def num_params(self) -> int:
        """Number of parameters of a model with this config (tied weights counted once)."""
        h, p, e, k, v, n = (
            self.d_model,
            self.d_mlp,
            self.n_heads,
            self.d_qk,
            self.d_v,
            self.n_layers,
        )
        norm = h if self.norm == "rmsnorm" else 2 * h
        attn = h * e * k * 2 + h * e * v + e * v * h
        mlp = h * p + p + p * h + h
        emb = self.vocab_size * h + self.max_seq_len * h
        head = 0 if self.tie_embeddings else self.vocab_size * h
        return emb + head + n * (attn + mlp + 2 * norm) + (norm if self.final_norm else 0)
