"""Hidden-size expansion: widen the residual stream of every layer at once."""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

from progrow.expand._editor import Editor, Fill, check_target
from progrow.expand.split import split_hidden
from progrow.expand.targets import Init
from progrow.model import Transformer
from progrow.record import ExpansionRecord

#: Where the hidden expansion puts its ``sqrt(h / h')`` factor (see :func:`expand_hidden`).
FactorAt = Literal["gains", "readers"]
FACTOR_PLACEMENTS: tuple[str, ...] = get_args(FactorAt)
#: The default placement: on the readers, which trains nearly like a fresh model (a grown
#: model with the factor on the gains trains measurably worse; see docs/expansions.md).
DEFAULT_FACTOR_AT: FactorAt = "readers"

#: The weights of a block that read a normalized stream, by parameter-name suffix.
_READERS = ("attn.q.weight", "attn.k.weight", "attn.v.weight", "mlp.fc.weight", "mlp.gate.weight")


def check_factor_at(value: object, field: str = "factor_at") -> FactorAt:
    """``value`` if it is a valid placement of the hidden expansion's factor.

    Raises:
        ValueError: naming ``field`` and the value, for anything but "gains" or "readers".

    Example:
        >>> check_factor_at("readers")
        'readers'
    """
    if not isinstance(value, str) or value not in FACTOR_PLACEMENTS:
        raise ValueError(f"{field}={value!r}: use one of {list(FACTOR_PLACEMENTS)}")
    return value  # type: ignore[return-value]  # checked against FactorAt's values


def expand_hidden(
    model: Transformer,
    d_model: int,
    *,
    factor_at: FactorAt = DEFAULT_FACTOR_AT,
    init: Init = "zero",
    generator: torch.Generator | None = None,
) -> ExpansionRecord:
    """Grow the hidden size from ``h`` to ``d_model``, in place.

    The invariant is that the residual stream becomes ``[x, 0]`` at every layer:

    * token and (learned) position embeddings get zero new columns;
    * everything that writes into the stream gets zero new outputs: W_O and W2 new rows
      (of their ``(out, in)`` weights' out side), and the new entries of their biases
      (``attn.o.bias``, ``mlp.proj.bias``);
    * everything that reads from the stream gets fresh new inputs (WQ, WK, WV, W1, the
      gate of a gated MLP, and the output projection unless it is tied to the embedding,
      in which case it follows the embedding's zeros): they multiply the zero
      coordinates, so their value is free; their biases do not change shape;
    * RMS over ``d_model`` coordinates of ``[x, 0]`` is ``sqrt(h / d_model)`` times the RMS
      over ``h``, so each norm's output on the old coordinates grows by ``sqrt(d_model / h)``
      and something downstream must multiply it by ``a = sqrt(h / d_model)``. Where
      ``factor_at`` puts ``a``:

      - ``"readers"`` (the default): gains keep their values (new entries 1) and the old
        input columns of every weight that reads a normalized stream are multiplied by
        ``a``: WQ, WK, WV, W1 and the gate in every block, and the output projection
        when a final norm feeds it (without one it reads the raw stream ``[x, 0]`` and
        needs no factor).
        With tied embeddings the output projection *is* the token embedding, which
        writes the stream and must keep its values, so the final norm's gain carries
        the factor there instead;
      - ``"gains"`` (the paper's placement): every norm gain (final norm included) is
        multiplied by ``a`` and its new entries set to ``a``.

      Either way ``norm_eps`` is multiplied by ``h / d_model``, which makes preservation
      exact for ``eps > 0``. The new ``norm_eps`` is in ``model.config``.

    Both placements compute the same function, but they train differently. Adam's step
    on an entry is about the learning rate whatever the entry's gradient scale, so a
    factor changes how far, relative to its value, the entry that carries it moves. On the
    gains, every gain of the grown model (new entries included) starts at ``a`` instead of
    a fresh model's 1 and takes steps sized for gains at 1; the normalized stream, whose
    scale only the gains set, is then off by ``a`` for the fresh new reader columns too. On
    the readers, the gains stay at a fresh model's value and ``a`` (close to 1 for a
    modest growth) only shrinks weights of size ``init_std``, by less than their own
    spread, which is why it is the default: grown at step 0 (d_model 32 -> 64, 1000
    steps) it ends 0.014 above a fresh model, the gains placement 0.063 above. The record
    holds ``a`` on every rescaled tensor, so optimizer surgery divides the moments of
    those entries by ``a`` (first) and ``a**2`` (second), as if the optimizer had trained
    in the new parametrization.

    ``init="split"``: no zero block. ``d_model - h`` coordinates (spread evenly) are each
    split in ``m`` copies of ``x/sqrt(m)`` (two for a growth below 2x): every writer
    (embeddings, W_O and W2 rows and their biases) writes ``1/sqrt(m)`` of the old value
    into each copy, which keeps the sum of squares and so RMSNorm with the same eps rule;
    norm gains are copied to the twins; each reader's columns of the copies are the old
    column times ``sqrt(m) * w`` with random positive ``w`` summing to one per row (per
    entry noise around ``1/m``), and times ``sqrt(h / d_model)`` with ``factor_at=
    "readers"``. Coordinates not split carry the factor exactly as above. A tied
    embedding reads its own ``x/sqrt(m)`` columns exactly and needs no split.

    LayerNorm models are refused: LayerNorm subtracts the mean over all coordinates, and
    the mean of ``[x, 0]`` differs from the mean of ``x``.

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(d_model=8, norm_eps=1e-3))
        >>> record = expand_hidden(model, 12)
        >>> model.config.d_model, round(model.config.norm_eps, 6)
        (12, 0.000667)
        >>> round(record.changes["blocks.0.attn.q.weight"].factor, 4)
        0.8165
        >>> record = expand_hidden(model, 16, factor_at="gains")
        >>> round(record.changes["blocks.0.norm_attn.weight"].factor, 4)
        0.866
    """
    check_factor_at(factor_at)
    new_cfg = check_target(model, "d_model", d_model, init)
    if new_cfg is None:
        return ExpansionRecord(model.config, model.config, expansions=("d_model",))
    cfg = model.config
    h, new_h = cfg.d_model, d_model
    a = math.sqrt(h / new_h)
    on_gains = factor_at == "gains"
    editor = Editor(model, new_cfg, "d_model", generator)
    if init == "split":
        split_hidden(editor, cfg, new_h, on_gains)
        return editor.commit()

    def widen(name: str, fill: Fill, h_axis: int, factor: float = 1.0) -> None:
        # h is the columns (axis 1) of embeddings and of readers, the rows (axis 0) of
        # writers and their biases. Optional parameters (biases, gate) may be absent.
        if not editor.has(name):
            return
        shape = list(editor.params[name].shape)
        shape[h_axis] = new_h
        editor.expand(name, tuple(shape), fill, factor=factor)

    def widen_norm(name: str, scaled: bool) -> None:
        editor.expand(name, (new_h,), a if scaled else "fresh", factor=a if scaled else 1.0)

    widen("tok_emb.weight", "zero", h_axis=1)
    widen("pos_emb.weight", "zero", h_axis=1)  # learned positions only
    reader_factor = 1.0 if on_gains else a
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}."
        widen_norm(pre + "norm_attn.weight", on_gains)
        widen_norm(pre + "norm_mlp.weight", on_gains)
        for name in _READERS:
            widen(pre + name, "fresh", h_axis=1, factor=reader_factor)
        for name in ("attn.o.weight", "attn.o.bias", "mlp.proj.weight", "mlp.proj.bias"):
            widen(pre + name, "zero", h_axis=0)
    if cfg.final_norm:
        widen_norm("norm_f.weight", on_gains or cfg.tie_embeddings)
    if not cfg.tie_embeddings:
        head_factor = a if cfg.final_norm and not on_gains else 1.0
        widen("lm_head.weight", "fresh", h_axis=1, factor=head_factor)
    return editor.commit()
