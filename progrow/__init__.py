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
from progrow.schedule import GrowthSchedule, GrowthStage

# Lightning-dependent names load on first use, so that the model and the expansions work
# (and import fast) without Lightning.
_LAZY = {
    "GrowthCallback": "progrow.training.callback",
    "LMModule": "progrow.training.module",
    "OptimConfig": "progrow.training.optim",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'progrow' has no attribute {name!r}")


__all__ = [
    "GROWABLE_DIMS",
    "ExpansionRecord",
    "GrowthCallback",
    "GrowthSchedule",
    "GrowthStage",
    "LMModule",
    "OptimConfig",
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
