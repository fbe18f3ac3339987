"""The expansions inside a block: MLP size, KV heads, query heads, value size, key/query size.

Torch stores a linear map ``x @ W`` as ``weight = W^T`` of shape (out, in), so the
paper's "new columns of W1" are new rows of ``fc.weight`` and so on; the docstrings use
the paper's notation. Biases (``attn_bias``, ``mlp_bias``) follow their weight's output
rows: a bias entry of a new output unit is fresh (zero, as a fresh bias is), the bias of
a weight whose old outputs are rescaled is rescaled with them.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from progrow.config import TransformerConfig
from progrow.expand._editor import Editor, Fill, blocked_index, check_target
from progrow.expand.split import split_heads, split_mlp, split_qk, split_value
from progrow.expand.targets import Init, rope_layout, spread_sources
from progrow.model import Transformer
from progrow.record import ExpansionRecord

#: Where the key/query expansion puts its factor (see :func:`expand_qk`).
QkFactorAt = Literal["keys", "queries", "shared"]
QK_FACTOR_PLACEMENTS: tuple[str, ...] = get_args(QkFactorAt)
#: The default placement of the key/query factor (the three measured alike; see
#: docs/expansions.md).
DEFAULT_QK_FACTOR_AT: QkFactorAt = "keys"


def check_qk_factor_at(value: object, field: str = "factor_at") -> QkFactorAt:
    """``value`` if it is a valid placement of the key/query expansion's factor.

    Raises:
        ValueError: naming ``field`` and the value, for anything but "keys", "queries"
            or "shared".

    Example:
        >>> check_qk_factor_at("shared")
        'shared'
    """
    if not isinstance(value, str) or value not in QK_FACTOR_PLACEMENTS:
        raise ValueError(f"{field}={value!r}: use one of {list(QK_FACTOR_PLACEMENTS)}")
    return value  # type: ignore[return-value]  # checked against QkFactorAt's values


def qk_factors(k: int, d_qk: int, factor_at: QkFactorAt) -> tuple[float, float]:
    """The factors of the old (query, key) rows when ``k`` grows to ``d_qk``: their
    product is ``sqrt(d_qk / k)``, which keeps ``Q K^T / sqrt(d_qk)`` equal to the old
    ``Q K^T / sqrt(k)``.

    Example:
        >>> qk_factors(4, 16, "keys"), qk_factors(4, 16, "shared")
        ((1.0, 2.0), (1.4142135623730951, 1.4142135623730951))
    """
    ratio = d_qk / k
    if factor_at == "shared":
        return ratio**0.25, ratio**0.25
    whole = math.sqrt(ratio)
    return (1.0, whole) if factor_at == "keys" else (whole, 1.0)


def _noop(model: Transformer, expansion: str) -> ExpansionRecord:
    return ExpansionRecord(model.config, model.config, expansions=(expansion,))


def _rows(
    editor: Editor,
    name: str,
    new_rows: int,
    fill: Fill,
    rows: Tensor | None = None,
    factor: float = 1.0,
) -> None:
    """Stage a linear layer grown in its output rows (weight and, if any, bias)."""
    weight = editor.params[f"{name}.weight"]
    cols = torch.arange(weight.shape[1])
    index = None if rows is None else (rows, cols)
    editor.expand(f"{name}.weight", (new_rows, weight.shape[1]), fill, index, factor)
    if editor.has(f"{name}.bias"):
        bias_fill: Fill = "fresh" if fill == "fresh" else "zero"
        bias_index = None if rows is None else (rows,)
        editor.expand(f"{name}.bias", (new_rows,), bias_fill, bias_index, factor)


def _cols(editor: Editor, name: str, new_cols: int, cols: Tensor | None = None) -> None:
    """Stage a linear layer grown in its input columns, the new ones zero (its bias, an
    output, is unchanged)."""
    weight = editor.params[f"{name}.weight"]
    index = None if cols is None else (torch.arange(weight.shape[0]), cols)
    editor.expand(f"{name}.weight", (weight.shape[0], new_cols), "zero", index)


def expand_mlp(
    model: Transformer,
    d_mlp: int,
    *,
    init: Init = "zero",
    generator: torch.Generator | None = None,
) -> ExpansionRecord:
    """Grow every block's MLP from ``p`` to ``d_mlp`` hidden units, in place.

    New columns of W1 are fresh draws and new entries of b1 are fresh (zero, like a fresh
    bias); the new rows of W2 are zero, so the new units add nothing to the output. W2's
    new rows get a gradient at once, and W1's new columns as soon as W2 has moved: only
    one side is zero, so no unit is dead.

    Gated MLP (SwiGLU): a unit computes ``act(gate_u x) * (up_u x)`` and writes it through
    column ``u`` of W2 ("down"). New units get fresh rows in ``gate`` and in ``fc`` ("up")
    and zero columns in W2 only. Zeroing the up (or, as ``act(0) = 0``, the gate) rows
    instead would also keep the function, but never two of the three: the gradient of
    each of gate, up and down is proportional to the other two, so a unit with two zero
    sides never moves. With only W2 zero, W2 gets a gradient at once (``act(g) * u`` is
    nonzero) and gate and up as soon as W2 has moved.

    ``init="split"``: every new unit copies an old one (its W1 row, bias and gate row;
    sources spread evenly) and W2's columns of a unit and its copies are multiplied by
    random positive weights summing to one (near 1/2 each for one copy): the same
    function, no zero block, and the twins differ from the first step.

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(d_model=8, d_mlp=16))
        >>> record = expand_mlp(model, 24)
        >>> model.config.d_mlp, record.changes["blocks.0.mlp.fc.weight"].new_shape
        (24, (24, 8))
    """
    new_cfg = check_target(model, "d_mlp", d_mlp, init)
    if new_cfg is None:
        return _noop(model, "d_mlp")
    editor = Editor(model, new_cfg, "d_mlp", generator)
    if init == "split":
        split_mlp(editor, model.config, d_mlp)
        return editor.commit()
    for i in range(model.config.n_layers):
        pre = f"blocks.{i}.mlp."
        _rows(editor, pre + "fc", d_mlp, "fresh")
        if new_cfg.mlp_gated:
            _rows(editor, pre + "gate", d_mlp, "fresh")
        _cols(editor, pre + "proj", d_mlp)
    return editor.commit()


def _append_heads(editor: Editor, cfg: TransformerConfig, n_heads: int, n_kv: int) -> None:
    """New query heads and KV heads at the end of every block: WQ, WK, WV fresh, W_O's
    new columns zero. Query head e reads KV head ``e // group``, so appended query heads
    read appended KV heads when the group size is kept."""
    k, v = cfg.d_qk, cfg.d_v
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}.attn."
        _rows(editor, pre + "q", n_heads * k, "fresh")
        if n_kv != cfg.kv_heads:
            _rows(editor, pre + "k", n_kv * k, "fresh")
            _rows(editor, pre + "v", n_kv * v, "fresh")
        _cols(editor, pre + "o", n_heads * v)


def expand_kv_heads(
    model: Transformer,
    n_kv_heads: int,
    *,
    init: Init = "zero",
    generator: torch.Generator | None = None,
) -> ExpansionRecord:
    """Add key/value heads, each with its own group of query heads, in place.

    The group size ``n_heads // n_kv_heads`` is kept, so ``n_heads`` becomes
    ``n_kv_heads * group``. New KV heads and their query heads are appended: their WQ, WK
    and WV are fresh, and the new query heads' rows of W_O are zero, so their output is
    discarded until W_O learns to read it. Old query heads still read their old KV heads
    (query head e reads KV head ``e // group`` before and after). A model with
    ``n_kv_heads=None`` (one KV head per query head) keeps it so: this is then the same as
    :func:`add_heads`.

    ``init="split"``: each new KV head copies an old one (sources spread evenly) with its
    whole group of query heads, and W_O's columns of every copied query head and its
    copy are split by random positive weights summing to one.

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> cfg = TransformerConfig(d_model=8, n_heads=4, n_kv_heads=2, d_qk=4, d_v=4)
        >>> model = Transformer(cfg)
        >>> _ = expand_kv_heads(model, 3)
        >>> model.config.n_heads, model.config.n_kv_heads
        (6, 3)
    """
    new_cfg = check_target(model, "n_kv_heads", n_kv_heads, init)
    if new_cfg is None:
        return _noop(model, "n_kv_heads")
    cfg = model.config
    editor = Editor(model, new_cfg, "n_kv_heads", generator)
    if init == "split" and cfg.n_kv_heads is None:
        heads = spread_sources(cfg.n_heads, new_cfg.n_heads)
        split_heads(editor, cfg, heads, torch.arange(cfg.n_heads), heads)
    elif init == "split":
        kv_heads = spread_sources(cfg.kv_heads, new_cfg.kv_heads)
        new = torch.arange(new_cfg.n_heads)  # query head -> its KV head's copy of a group
        heads = kv_heads[new // cfg.kv_group] * cfg.kv_group + new % cfg.kv_group
        split_heads(editor, cfg, heads, torch.arange(cfg.n_heads), kv_heads)
    else:
        _append_heads(editor, cfg, new_cfg.n_heads, new_cfg.kv_heads)
    return editor.commit()


def add_heads(
    model: Transformer,
    n_heads: int,
    *,
    init: Init = "zero",
    generator: torch.Generator | None = None,
) -> ExpansionRecord:
    """Add query heads to every block until there are ``n_heads``, in place.

    Each new head's WQ is a fresh draw and its rows of W_O are zero, so its output is
    discarded until W_O learns to read it. Existing heads keep their weights.

    * ``n_kv_heads=None`` (a KV head per query head): each new head also gets fresh WK and
      WV of its own; the new heads are appended.
    * Grouped-query attention: the KV heads stay, ``n_heads`` must be a multiple of
      ``n_kv_heads``, and each group grows from ``g`` to ``g' = n_heads / n_kv_heads``
      query heads. Query head e reads KV head ``e // g``, so old head ``e`` moves to
      ``(e // g) * g' + e % g`` and the new heads of group ``j`` take its last ``g' - g``
      places; the record's index says where every old query row and W_O column went.

    ``init="split"``: each new head copies an old one (under grouped-query attention one
    of its own group, so it reads the same KV head; otherwise with its WK and WV), and
    W_O's columns of a head and its copies are split by random positive weights summing
    to one.

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(d_model=8, n_heads=2, d_qk=4, d_v=4))
        >>> _ = add_heads(model, 3)
        >>> model.blocks[0].attn.q.weight.shape
        torch.Size([12, 8])
    """
    new_cfg = check_target(model, "n_heads", n_heads, init)
    if new_cfg is None:
        return _noop(model, "n_heads")
    cfg = model.config
    editor = Editor(model, new_cfg, "n_heads", generator)
    if cfg.n_kv_heads is None:
        if init == "split":
            heads = spread_sources(cfg.n_heads, n_heads)
            split_heads(editor, cfg, heads, torch.arange(cfg.n_heads), heads)
        else:
            _append_heads(editor, cfg, n_heads, n_heads)
        return editor.commit()
    g, new_g = cfg.kv_group, n_heads // cfg.n_kv_heads
    old = torch.arange(cfg.n_heads)
    at = (old // g) * new_g + old % g  # old query head -> its place in the grown group
    if init == "split":  # new heads of a group copy heads of the same group
        new = torch.arange(n_heads)
        heads = (new // new_g) * g + spread_sources(g, new_g)[new % new_g]
        split_heads(editor, cfg, heads, at, None)
        return editor.commit()
    q_rows = blocked_index(cfg.n_heads, cfg.d_qk, cfg.d_qk, block_at=at)
    o_cols = blocked_index(cfg.n_heads, cfg.d_v, cfg.d_v, block_at=at)
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}.attn."
        _rows(editor, pre + "q", n_heads * cfg.d_qk, "fresh", q_rows)
        _cols(editor, pre + "o", n_heads * cfg.d_v, o_cols)
    return editor.commit()


def expand_value(
    model: Transformer,
    d_v: int,
    *,
    init: Init = "zero",
    generator: torch.Generator | None = None,
) -> ExpansionRecord:
    """Grow every head's value size from ``v`` to ``d_v``, in place.

    Each KV head's WV gets fresh new columns; W_O gets zero rows in every query head's
    block (heads are stored contiguously, so old rows of head e move to
    ``e * d_v + [0, v)``). Under grouped-query attention WV has ``n_kv_heads`` blocks and
    W_O ``n_heads``; a query head's new value entries come from its KV head's new columns
    and meet zero rows of W_O.

    ``init="split"``: each KV head's new value entries copy old ones of its own (WV rows
    and bias), and W_O's rows of an entry and its copies are split by random positive
    weights summing to one, drawn for each query head.

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(d_model=8, n_heads=2, d_v=3))
        >>> _ = expand_value(model, 5)
        >>> model.blocks[0].attn.o.weight.shape
        torch.Size([8, 10])
    """
    new_cfg = check_target(model, "d_v", d_v, init)
    if new_cfg is None:
        return _noop(model, "d_v")
    cfg = model.config
    e, kv = cfg.n_heads, cfg.kv_heads
    editor = Editor(model, new_cfg, "d_v", generator)
    if init == "split":
        split_value(editor, cfg, d_v)
        return editor.commit()
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}.attn."
        _rows(editor, pre + "v", kv * d_v, "fresh", blocked_index(kv, cfg.d_v, d_v))
        _cols(editor, pre + "o", e * d_v, blocked_index(e, cfg.d_v, d_v))
    return editor.commit()


def expand_qk(
    model: Transformer,
    d_qk: int,
    *,
    init: Init = "zero",
    factor_at: QkFactorAt = DEFAULT_QK_FACTOR_AT,
    generator: torch.Generator | None = None,
) -> ExpansionRecord:
    """Grow every head's key/query size from ``k`` to ``d_qk``, in place.

    WQ gets fresh new columns, WK zero new columns: the new coordinates add
    ``q_new * 0`` to every score. The attention scale is ``1/sqrt(d_qk)`` afterwards, so
    the old scores need a factor ``sqrt(d_qk / k)``, which keeps ``Q K^T / sqrt(d_qk)``
    equal to the old ``Q K^T / sqrt(k)``. ``factor_at`` says where it goes:

    * ``"keys"`` (the default): the old WK is multiplied by ``sqrt(d_qk / k)``;
    * ``"queries"``: the old WQ is;
    * ``"shared"``: the old WQ and WK are each multiplied by ``(d_qk / k) ** 0.25``.

    With ``attn_bias`` a rescaled weight's bias is rescaled with it; the key bias's new
    entries are zero, the query bias's fresh. The record carries the factor on every
    rescaled tensor, so that optimizer surgery rescales their moments.

    RoPE: each old key/query pair must keep its rotation frequency (a rebuilt default
    table for ``d_qk`` would change them all). For ``d_qk = m * k`` with the default table,
    old pair ``i`` (entries ``i`` and ``i + k/2``) moves to new pair ``m * i`` (entries
    ``m*i`` and ``m*i + d_qk/2``), whose default frequency is the old one, and the model
    stays Hugging Face's layout. For other factors old pairs keep their indices and the
    config stores the frequency table (``rope_inv_freq``): see
    :func:`progrow.expand.targets.rope_layout`. New pairs have zero keys, so they add nothing
    to any score whatever their frequency; rotations are linear, so scaling queries or
    keys scales the rotated ones alike.

    ``init="split"``: each head's new entries copy old ones, and an entry's query and key
    and those of its copies are multiplied by ``sqrt(w)`` with random positive ``w``
    summing to one (and by the factors ``factor_at`` places), so the products
    ``q_j k_j`` sum to the old one. Under RoPE whole pairs are copied, each new pair with
    its source's frequency; the config then stores the table (``rope_inv_freq``; see
    :func:`progrow.expand.targets.rope_split_layout`), which Hugging Face's Llama cannot
    express.

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(d_model=8, n_heads=2, d_qk=4))
        >>> record = expand_qk(model, 9)
        >>> record.changes["blocks.0.attn.k.weight"].factor
        1.5
        >>> record = expand_qk(model, 16, factor_at="queries")
        >>> record.changes["blocks.0.attn.q.weight"].factor
        1.3333333333333333
    """
    check_qk_factor_at(factor_at)
    new_cfg = check_target(model, "d_qk", d_qk, init)
    if new_cfg is None:
        return _noop(model, "d_qk")
    cfg = model.config
    k = cfg.d_qk
    within = rope_layout(cfg, d_qk)[0] if cfg.positions == "rope" else None
    q_rows = blocked_index(cfg.n_heads, k, d_qk, within=within)
    k_rows = blocked_index(cfg.kv_heads, k, d_qk, within=within)
    q_factor, k_factor = qk_factors(k, d_qk, factor_at)
    editor = Editor(model, new_cfg, "d_qk", generator)
    if init == "split":
        split_qk(editor, cfg, d_qk, (q_factor, k_factor))
        return editor.commit()
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}.attn."
        _rows(editor, pre + "q", cfg.n_heads * d_qk, "fresh", q_rows, q_factor)
        _rows(editor, pre + "k", cfg.kv_heads * d_qk, "zero", k_rows, k_factor)
    return editor.commit()
