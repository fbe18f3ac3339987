"""``torch.compile`` across growth.

The Transformer is compiled in place with ``nn.Module.compile`` (its parameter names and
state-dict keys stay those of the eager model, so checkpoints, optimizer surgery and
offline growth see no ``_orig_mod.`` prefix). A growth changes parameter shapes and may
add layers: dynamo's guards would fail and it would recompile, marking the grown
dimensions dynamic and, after a few growths, hitting its recompile limit and silently
running eagerly. So after each growth :func:`fresh_compile` drops every compiled graph
(``torch.compiler.reset()``): the next step compiles the grown model once, with static
shapes, as a fresh model of that size would be compiled.

:func:`graphs_compiled` reads dynamo's own counter of compiled graphs (``counters``
in ``torch._dynamo.utils``, not a public API): tests/test_compile.py fails loudly on a
torch release that moves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

#: The ``torch.compile`` options the app and ``LMModule`` accept.
COMPILE_OPTIONS = ("backend", "mode", "fullgraph", "dynamic")


def compile_options(value: bool | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments from ``True``/``False``/``None`` or a mapping of
    :data:`COMPILE_OPTIONS`; ``None`` means eager.

    Raises:
        ValueError: an option ``torch.compile`` does not take here.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    unknown = sorted(set(value) - set(COMPILE_OPTIONS))
    if unknown:
        raise ValueError(f"compile options {unknown}: expected some of {list(COMPILE_OPTIONS)}")
    return {k: v for k, v in value.items() if v is not None}


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module.compile()`` was called on it (its calls go through dynamo)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_in_place(module: nn.Module, options: Mapping[str, Any]) -> None:
    """``module.compile(**options)`` unless already compiled (idempotent)."""
    if not is_compiled(module):
        module.compile(**options)


def fresh_compile() -> None:
    """Drop every compiled graph and guard, so the next call compiles the grown model
    once, with static shapes (see the module docstring)."""
    torch.compiler.reset()


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process (its own counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
