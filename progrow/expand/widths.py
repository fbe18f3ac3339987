"""The four expansions inside a block: MLP size, heads, value size, key/query size.

Torch stores a linear map ``x @ W`` as ``weight = W^T`` of shape (out, in), so the
paper's "new columns of W1" are new rows of ``fc.weight`` and so on; the docstrings use
the paper's notation.
"""

from __future__ import annotations

import math

import torch

from progrow.expand._editor import Editor, blocked_index, check_target
from progrow.model import Transformer
from progrow.record import ExpansionRecord


def _noop(model: Transformer, expansion: str) -> ExpansionRecord:
    return ExpansionRecord(model.config, model.config, expansions=(expansion,))


def expand_mlp(
    model: Transformer, d_mlp: int, *, generator: torch.Generator | None = None
) -> ExpansionRecord:
    """Grow every block's MLP from ``p`` to ``d_mlp`` hidden units, in place.

    New columns of W1 are fresh draws and new entries of b1 are fresh (zero, like a fresh
    bias); the new rows of W2 are zero, so the new units add nothing to the output. W2's
    new rows get a gradient at once, and W1's new columns as soon as W2 has moved: only
    one side is zero, so no unit is dead.

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(d_model=8, d_mlp=16))
        >>> record = expand_mlp(model, 24)
        >>> model.config.d_mlp, record.changes["blocks.0.mlp.fc.weight"].new_shape
        (24, (24, 8))
    """
    if not check_target(model, "d_mlp", d_mlp):
        return _noop(model, "d_mlp")
    cfg = model.config
    editor = Editor(model, cfg.replace(d_mlp=d_mlp), "d_mlp", generator)
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}.mlp."
        editor.expand(pre + "fc.weight", (d_mlp, cfg.d_model), "fresh")
        editor.expand(pre + "fc.bias", (d_mlp,), "fresh")
        editor.expand(pre + "proj.weight", (cfg.d_model, d_mlp), "zero")
    return editor.commit()


def add_heads(
    model: Transformer, n_heads: int, *, generator: torch.Generator | None = None
) -> ExpansionRecord:
    """Add attention heads to every block until there are ``n_heads``, in place.

    Each new head's WQ, WK and WV are fresh draws; its rows of W_O are zero, so its output
    is discarded until W_O learns to read it. Existing heads are untouched.

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(d_model=8, n_heads=2, d_qk=4, d_v=4))
        >>> _ = add_heads(model, 3)
        >>> model.blocks[0].attn.q.weight.shape
        torch.Size([12, 8])
    """
    if not check_target(model, "n_heads", n_heads):
        return _noop(model, "n_heads")
    cfg = model.config
    h, k, v = cfg.d_model, cfg.d_qk, cfg.d_v
    editor = Editor(model, cfg.replace(n_heads=n_heads), "n_heads", generator)
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}.attn."
        editor.expand(pre + "q.weight", (n_heads * k, h), "fresh")
        editor.expand(pre + "k.weight", (n_heads * k, h), "fresh")
        editor.expand(pre + "v.weight", (n_heads * v, h), "fresh")
        editor.expand(pre + "o.weight", (h, n_heads * v), "zero")
    return editor.commit()


def expand_value(
    model: Transformer, d_v: int, *, generator: torch.Generator | None = None
) -> ExpansionRecord:
    """Grow every head's value size from ``v`` to ``d_v``, in place.

    Each head's WV gets fresh new columns; W_O gets zero rows in every head's block (heads
    are stored contiguously, so old rows of head e move to ``e * d_v + [0, v)``).

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(d_model=8, n_heads=2, d_v=3))
        >>> _ = expand_value(model, 5)
        >>> model.blocks[0].attn.o.weight.shape
        torch.Size([8, 10])
    """
    if not check_target(model, "d_v", d_v):
        return _noop(model, "d_v")
    cfg = model.config
    h, e = cfg.d_model, cfg.n_heads
    heads = blocked_index(e, cfg.d_v, d_v)
    rows_h = torch.arange(h)
    editor = Editor(model, cfg.replace(d_v=d_v), "d_v", generator)
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}.attn."
        editor.expand(pre + "v.weight", (e * d_v, h), "fresh", index=(heads, rows_h))
        editor.expand(pre + "o.weight", (h, e * d_v), "zero", index=(rows_h, heads))
    return editor.commit()


def expand_qk(
    model: Transformer, d_qk: int, *, generator: torch.Generator | None = None
) -> ExpansionRecord:
    """Grow every head's key/query size from ``k`` to ``d_qk``, in place.

    WQ gets fresh new columns, WK zero new columns, and the old WK is multiplied by
    ``sqrt(d_qk / k)``: the attention scale is ``1/sqrt(d_qk)`` afterwards, and the
    rescale keeps ``Q K^T / sqrt(d_qk)`` equal to the old ``Q K^T / sqrt(k)``. (Keys rather
    than queries carry the factor; either works.) The record carries the factor so that
    optimizer surgery can rescale WK's moments.

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(d_model=8, n_heads=2, d_qk=4))
        >>> record = expand_qk(model, 9)
        >>> record.changes["blocks.0.attn.k.weight"].factor
        1.5
    """
    if not check_target(model, "d_qk", d_qk):
        return _noop(model, "d_qk")
    cfg = model.config
    h, e = cfg.d_model, cfg.n_heads
    heads = blocked_index(e, cfg.d_qk, d_qk)
    cols = torch.arange(h)
    factor = math.sqrt(d_qk / cfg.d_qk)
    editor = Editor(model, cfg.replace(d_qk=d_qk), "d_qk", generator)
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}.attn."
        editor.expand(pre + "q.weight", (e * d_qk, h), "fresh", index=(heads, cols))
        editor.expand(pre + "k.weight", (e * d_qk, h), "zero", index=(heads, cols), factor=factor)
    return editor.commit()
