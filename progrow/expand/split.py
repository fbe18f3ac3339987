"""Exact growth by copies (``init="split"``): no zero block, every new entry learns at once.

A new unit (MLP unit, head, value or key/query entry, residual coordinate) is a copy of
an old one, and whatever reads the copies is split so that their sum is the old value:

* a copied unit's outgoing weights are multiplied by positive weights ``w`` that sum to
  one over the unit and its copies (random, near ``1/(copies+1)`` each), so the twins
  are told apart from the first step;
* a key/query entry is split in its product: the query and the key of each copy are
  multiplied by ``sqrt(w)`` (keys also by ``sqrt(k'/k)``, the attention scale's change);
* a residual coordinate split into ``m`` is written as ``x/sqrt(m)`` by every writer
  (the sum of squares is kept, so RMSNorm is exact with the usual eps rescale), and
  each reader's columns are the old column times ``sqrt(m) * w`` (random per entry).

Sources are spread evenly over the old units (:func:`progrow.expand.targets.spread_sources`);
split weights come from the generator, drawn on the CPU in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from progrow.config import TransformerConfig
from progrow.expand._editor import Editor, blocked_index
from progrow.expand.targets import rope_split_layout, spread_sources


def split_weights(
    source: Tensor, generator: torch.Generator | None, rows: int | None = None
) -> Tensor:
    """Positive weights summing to one over each old unit and its copies (float64).

    ``source[p]`` is the old unit that new unit ``p`` holds. Each member of a group draws
    ``U(0.3, 0.7)`` and the group is normalized (two members: ``r`` and ``1 - r`` with
    ``r`` in about ``(0.3, 0.7)``); a unit without copies gets exactly 1. With ``rows``,
    one independent draw per row: shape ``(rows, n)``.

    Example:
        >>> w = split_weights(torch.tensor([0, 1, 0]), torch.Generator().manual_seed(0))
        >>> round(float(w[0] + w[2]), 12), float(w[1])
        (1.0, 1.0)
    """
    n_rows = 1 if rows is None else rows
    draw = torch.rand((n_rows, source.numel()), generator=generator, dtype=torch.float64)
    draw = 0.3 + 0.4 * draw
    n_old = int(source.max()) + 1
    totals = torch.zeros((n_rows, n_old), dtype=torch.float64).index_add_(1, source, draw)
    weights = draw / totals[:, source]
    weights[:, torch.bincount(source, minlength=n_old)[source] == 1] = 1.0
    return weights if rows is not None else weights[0]


def block_source(heads: Tensor, old_block: int, within: Tensor | None = None) -> Tensor:
    """Old positions held by a grown tensor of head blocks: block ``b`` holds old block
    ``heads[b]``, its entry ``i`` the old entry ``within[i]`` of that block."""
    inner = torch.arange(old_block) if within is None else within
    return (heads[:, None] * old_block + inner[None, :]).reshape(-1)


def _copy_rows(editor: Editor, name: str, index: Tensor, source: Tensor, factor: Tensor) -> None:
    """Stage a linear layer grown in its output rows by copies (weight and bias), each
    row times ``factor`` (one per new row)."""
    weight = editor.params[f"{name}.weight"]
    cols = torch.arange(weight.shape[1])
    editor.split(f"{name}.weight", (index, cols), (source, cols), factor[:, None])
    if editor.has(f"{name}.bias"):
        editor.split(f"{name}.bias", (index,), (source,), factor)


def _copy_cols(editor: Editor, name: str, index: Tensor, source: Tensor, factor: Tensor) -> None:
    """Stage a linear layer grown in its input columns by copies, each column times
    ``factor`` (one per new column, or a full ``(out, in)`` tensor); its bias is kept."""
    weight = editor.params[f"{name}.weight"]
    rows = torch.arange(weight.shape[0])
    per_entry = factor if factor.dim() == 2 else factor[None, :]
    editor.split(f"{name}.weight", (rows, index), (rows, source), per_entry)


def _ones(n: int) -> Tensor:
    return torch.ones(n, dtype=torch.float64)


def split_mlp(editor: Editor, cfg: TransformerConfig, d_mlp: int) -> None:
    """New MLP units copy old ones (W1, b1 and the gate rows); W2's columns of a unit and
    its copies are split."""
    source, index = spread_sources(cfg.d_mlp, d_mlp), torch.arange(cfg.d_mlp)
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}.mlp."
        _copy_rows(editor, pre + "fc", index, source, _ones(d_mlp))
        if editor.has(pre + "gate.weight"):
            _copy_rows(editor, pre + "gate", index, source, _ones(d_mlp))
        _copy_cols(editor, pre + "proj", index, source, split_weights(source, editor.generator))


def split_heads(
    editor: Editor, cfg: TransformerConfig, heads: Tensor, at: Tensor, kv_heads: Tensor | None
) -> None:
    """Query head ``e`` of the grown model copies old head ``heads[e]`` (old head ``j`` at
    ``at[j]``); KV head ``f`` copies old KV head ``kv_heads[f]`` (None: KV heads kept).
    W_O's columns of a head and its copies are split."""
    k, v = cfg.d_qk, cfg.d_v
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}.attn."
        q_index = blocked_index(cfg.n_heads, k, k, block_at=at)
        q_source = block_source(heads, k)
        _copy_rows(editor, pre + "q", q_index, q_source, _ones(q_source.numel()))
        if kv_heads is not None:
            for name, size in (("k", k), ("v", v)):
                src = block_source(kv_heads, size)
                _copy_rows(
                    editor, pre + name, torch.arange(cfg.kv_heads * size), src, _ones(src.numel())
                )
        w = split_weights(heads, editor.generator).repeat_interleave(v)
        o_index = blocked_index(cfg.n_heads, v, v, block_at=at)
        _copy_cols(editor, pre + "o", o_index, block_source(heads, v), w)


def split_value(editor: Editor, cfg: TransformerConfig, d_v: int) -> None:
    """Every head's new value entries copy old ones of the same KV head; W_O's rows of an
    entry and its copies are split, independently for each query head."""
    e, kv, v = cfg.n_heads, cfg.kv_heads, cfg.d_v
    within = spread_sources(v, d_v)
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}.attn."
        v_source = block_source(torch.arange(kv), v, within)
        _copy_rows(editor, pre + "v", blocked_index(kv, v, d_v), v_source, _ones(kv * d_v))
        w = split_weights(within, editor.generator, rows=e).reshape(-1)
        o_source = block_source(torch.arange(e), v, within)
        _copy_cols(editor, pre + "o", blocked_index(e, v, d_v), o_source, w)


def split_qk(
    editor: Editor, cfg: TransformerConfig, d_qk: int, factors: tuple[float, float]
) -> None:
    """Every head's new key/query entries copy old ones (under RoPE whole rotation pairs,
    with their frequency); the query and key of an entry and its copies are multiplied by
    ``sqrt(w)``, and by ``factors`` (query, key; their product ``sqrt(d_qk / k)``, placed
    as :func:`progrow.expand.widths.qk_factors` says), so their products sum to the old
    one."""
    k, kv, group = cfg.d_qk, cfg.kv_heads, cfg.kv_group
    rope = cfg.positions == "rope"
    if rope:
        within = rope_split_layout(cfg, d_qk)[0]
        half, new_half = k // 2, d_qk // 2
        old_at = torch.cat([torch.arange(half), torch.arange(half) + new_half])
        units = within[:new_half]  # the old pair each new pair copies
    else:
        within = spread_sources(k, d_qk)
        old_at, units = torch.arange(k), within
    q_scale, k_scale = factors
    q_index = blocked_index(cfg.n_heads, k, d_qk, within=old_at)
    q_source = block_source(torch.arange(cfg.n_heads), k, within)
    k_index = blocked_index(kv, k, d_qk, within=old_at)
    k_source = block_source(torch.arange(kv), k, within)
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}.attn."
        w = split_weights(units, editor.generator, rows=kv)  # (kv, units)
        if rope:
            w = torch.cat([w, w], dim=1)  # both entries of a pair share its weight
        # Query heads of a group pair with their KV head's entries: the same weights.
        q_w = w.repeat_interleave(group, dim=0).reshape(-1).sqrt() * q_scale
        _copy_rows(editor, pre + "q", q_index, q_source, q_w)
        _copy_rows(editor, pre + "k", k_index, k_source, w.reshape(-1).sqrt() * k_scale)


#: The weights of a block that read a normalized stream, by parameter-name suffix.
_READERS = ("attn.q", "attn.k", "attn.v", "mlp.fc", "mlp.gate")
_WRITERS = ("attn.o", "mlp.proj")


def split_hidden(editor: Editor, cfg: TransformerConfig, d_model: int, on_gains: bool) -> None:
    """Residual coordinates split in ``m`` copies of ``x/sqrt(m)`` (see the module
    docstring); ``sqrt(h / d_model)`` on the gains or on the readers as ``on_gains`` says,
    exactly as :func:`progrow.expand_hidden` places it."""
    a = math.sqrt(cfg.d_model / d_model)
    source, index = spread_sources(cfg.d_model, d_model), torch.arange(cfg.d_model)
    copies = torch.bincount(source)[source].double()  # m of each coordinate's group
    write = copies.rsqrt()

    def read(name: str, factor: float) -> None:
        if editor.has(f"{name}.weight"):
            rows = editor.params[f"{name}.weight"].shape[0]
            w = split_weights(source, editor.generator, rows=rows) * copies.sqrt() * factor
            _copy_cols(editor, name, index, source, w)

    def gain(name: str, scaled: bool) -> None:
        editor.split(
            name,
            (index,),
            (source,),
            torch.full((d_model,), a if scaled else 1.0, dtype=torch.float64),
        )

    for name in ("tok_emb", "pos_emb"):  # pos_emb: learned positions only
        if editor.has(f"{name}.weight"):
            _copy_cols(editor, name, index, source, write)
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}."
        gain(pre + "norm_attn.weight", on_gains)
        gain(pre + "norm_mlp.weight", on_gains)
        for name in _READERS:
            read(pre + name, 1.0 if on_gains else a)
        for name in _WRITERS:
            _copy_rows(editor, pre + name, index, source, write)
    if cfg.final_norm:
        gain("norm_f.weight", on_gains or cfg.tie_embeddings)
    if not cfg.tie_embeddings:  # tied: the embedding's x/sqrt(m) columns read exactly
        read("lm_head", a if cfg.final_norm and not on_gains else 1.0)
