"""The six function-preserving expansions of Gesmundo & Maile (2023), the KV-head
expansion of grouped-query attention, and ``grow``.

Each expansion grows a :class:`progrow.Transformer` in place, keeps its function exactly,
and returns an :class:`progrow.ExpansionRecord` saying what happened to every parameter.
"""

from progrow.expand.grow import GROW_ORDER, grow, grow_step
from progrow.expand.hidden import FACTOR_PLACEMENTS, FactorAt, expand_hidden
from progrow.expand.layers import add_layers, new_layer_positions
from progrow.expand.step import GrowthStep
from progrow.expand.targets import INITS, Init, expanded_config, grown_config
from progrow.expand.widths import (
    QK_FACTOR_PLACEMENTS,
    QkFactorAt,
    add_heads,
    expand_kv_heads,
    expand_mlp,
    expand_qk,
    expand_value,
)

__all__ = [
    "FACTOR_PLACEMENTS",
    "GROW_ORDER",
    "INITS",
    "QK_FACTOR_PLACEMENTS",
    "FactorAt",
    "GrowthStep",
    "Init",
    "QkFactorAt",
    "add_heads",
    "add_layers",
    "expand_hidden",
    "expand_kv_heads",
    "expand_mlp",
    "expand_qk",
    "expand_value",
    "expanded_config",
    "grow",
    "grow_step",
    "grown_config",
    "new_layer_positions",
]
