"""What each Hugging Face family module provides, and the helpers they share."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from progrow.config import TransformerConfig
from progrow.model import rope_inv_freq

#: HF ``hidden_act`` / ``activation_function`` names progrow computes exactly.
ACTIVATIONS_FROM_HF: dict[str, str] = {
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}


@dataclass(frozen=True)
class Family:
    """The conversions of one HF model class, as plain functions."""

    name: str
    """Short name (``to_hf(family=...)``)."""
    hf_class: str
    """The ``transformers`` class it imports from and exports to."""
    config_from_hf: Callable[[Any], TransformerConfig]
    """HF config -> progrow config; ``ValueError`` naming an unsupported field."""
    params_from_hf: Callable[[dict[str, Tensor], TransformerConfig], dict[str, Tensor]]
    """HF parameters by name -> progrow parameters by name."""
    problems: Callable[[TransformerConfig], list[str]]
    """Why the family cannot represent a progrow config (empty: it can)."""
    hf_config: Callable[[TransformerConfig, dict[str, Any], Any], Any]
    """progrow config, base HF config dict, ``transformers`` module -> HF config."""
    params_to_hf: Callable[[dict[str, Tensor], TransformerConfig], dict[str, Tensor]]
    """progrow parameters by name -> HF parameters by name."""


def activation_from_hf(field: str, name: Any) -> str:
    """The progrow activation of an HF activation name; ``ValueError`` naming ``field``."""
    if name not in ACTIVATIONS_FROM_HF:
        raise ValueError(
            f"from_hf: {field}={name!r} is not supported; supported: {sorted(ACTIVATIONS_FROM_HF)}"
        )
    return ACTIVATIONS_FROM_HF[name]


def rename(
    params: dict[str, Tensor], table: list[tuple[str, str]], caller: str = "from_hf"
) -> dict[str, Tensor]:
    """Rename ``params`` by a table of ``(source, target)`` patterns with ``{i}`` a layer.

    A name no pattern matches raises ``ValueError`` (an unsupported variant of the model,
    e.g. an extra bias), so nothing is dropped silently.
    """
    compiled = [
        (re.compile(re.escape(src).replace(r"\{i\}", r"(\d+)") + "$"), dst) for src, dst in table
    ]
    out: dict[str, Tensor] = {}
    for name, value in params.items():
        for pattern, dst in compiled:
            match = pattern.match(name)
            if match:
                out[dst.replace("{i}", match.group(1)) if match.groups() else dst] = value
                break
        else:
            raise ValueError(f"{caller}: parameter {name} has no counterpart")
    return out


def rope_table_problem(config: TransformerConfig) -> str | None:
    """Why the RoPE frequencies are not HF's default table for ``d_qk``, or ``None``."""
    if config.rope_inv_freq is None:
        return None
    custom = rope_inv_freq(config)
    default = rope_inv_freq(config.replace(rope_inv_freq=None))
    if torch.equal(custom, default):
        return None
    return (
        f"rope_inv_freq: d_qk={config.d_qk} carries a custom RoPE frequency table (kept "
        "when d_qk grew by a non-integer factor), but Hugging Face derives the frequencies "
        "from head_dim and rope_theta alone; grow d_qk by an integer factor to export"
    )
