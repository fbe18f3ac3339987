"""progrow: grow a transformer while it trains, keeping what it has learned."""

from progrow.config import GROWABLE_DIMS, TransformerConfig
from progrow.expand import (
    add_heads,
    add_layers,
    expand_hidden,
    expand_mlp,
    expand_qk,
    expand_value,
    grow,
)
from progrow.model import Transformer
from progrow.record import ExpansionRecord, ParamChange

__all__ = [
    "GROWABLE_DIMS",
    "ExpansionRecord",
    "ParamChange",
    "Transformer",
    "TransformerConfig",
    "add_heads",
    "add_layers",
    "expand_hidden",
    "expand_mlp",
    "expand_qk",
    "expand_value",
    "grow",
]

__version__ = "0.1.0"
