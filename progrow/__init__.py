"""progrow: grow a transformer while it trains, keeping what it has learned."""

from typing import TYPE_CHECKING, Any

from progrow import _versions  # noqa: F401  (first: refuses a torch older than the floor)
from progrow.config import GROWABLE_DIMS, TransformerConfig
from progrow.expand import (
    GrowthStep,
    add_heads,
    add_layers,
    expand_hidden,
    expand_kv_heads,
    expand_mlp,
    expand_qk,
    expand_value,
    grow,
)
from progrow.model import Transformer
from progrow.optim import OptimConfig
from progrow.record import ExpansionRecord, ParamChange
from progrow.schedule import GrowthSchedule, GrowthStage

if TYPE_CHECKING:  # what the lazy names below are, for type checkers
    from progrow.training.callback import GrowthCallback
    from progrow.training.datamodule import LMDataModule
    from progrow.training.module import LMModule

# The Lightning integration loads on first use, so that the pure core (model, expansions,
# surgery, schedules, FLOPs, data) imports without Lightning.
_LAZY = {
    "GrowthCallback": "progrow.training.callback",
    "LMDataModule": "progrow.training.datamodule",
    "LMModule": "progrow.training.module",
}


def __getattr__(name: str) -> Any:
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
    "GrowthStep",
    "LMDataModule",
    "LMModule",
    "OptimConfig",
    "ParamChange",
    "Transformer",
    "TransformerConfig",
    "add_heads",
    "add_layers",
    "expand_hidden",
    "expand_kv_heads",
    "expand_mlp",
    "expand_qk",
    "expand_value",
    "grow",
]

__version__ = "0.1.0"
