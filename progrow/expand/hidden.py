"""Hidden-size expansion: widen the residual stream of every layer at once."""

from __future__ import annotations

import math

import torch

from progrow.expand._editor import Editor, Fill, check_target
from progrow.model import Transformer
from progrow.record import ExpansionRecord


def expand_hidden(
    model: Transformer, d_model: int, *, generator: torch.Generator | None = None
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
      over ``h``; every norm gain (final norm included) is multiplied by
      ``sqrt(h / d_model)``, its new entries set to that same value, and ``norm_eps`` is
      multiplied by ``h / d_model``, which makes preservation exact for ``eps > 0``. The new
      ``norm_eps`` is in ``model.config``.

    LayerNorm models are refused: LayerNorm subtracts the mean over all coordinates, and
    the mean of ``[x, 0]`` differs from the mean of ``x``.

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(d_model=8, norm_eps=1e-3))
        >>> _ = expand_hidden(model, 12)
        >>> model.config.d_model, round(model.config.norm_eps, 6)
        (12, 0.000667)
    """
    new_cfg = check_target(model, "d_model", d_model)
    if new_cfg is None:
        return ExpansionRecord(model.config, model.config, expansions=("d_model",))
    cfg = model.config
    h, new_h = cfg.d_model, d_model
    gain = math.sqrt(h / new_h)
    editor = Editor(model, new_cfg, "d_model", generator)

    def widen(name: str, fill: Fill, h_axis: int) -> None:
        # h is the columns (axis 1) of embeddings and of readers, the rows (axis 0) of
        # writers and their biases. Optional parameters (biases, gate) may be absent.
        if not editor.has(name):
            return
        shape = list(editor.params[name].shape)
        shape[h_axis] = new_h
        editor.expand(name, tuple(shape), fill)

    def widen_norm(name: str) -> None:
        editor.expand(name, (new_h,), gain, factor=gain)

    widen("tok_emb.weight", "zero", h_axis=1)
    widen("pos_emb.weight", "zero", h_axis=1)  # learned positions only
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}."
        widen_norm(pre + "norm_attn.weight")
        for name in ("attn.q", "attn.k", "attn.v"):
            widen(pre + name + ".weight", "fresh", h_axis=1)
        widen(pre + "attn.o.weight", "zero", h_axis=0)
        widen(pre + "attn.o.bias", "zero", h_axis=0)
        widen_norm(pre + "norm_mlp.weight")
        widen(pre + "mlp.fc.weight", "fresh", h_axis=1)
        widen(pre + "mlp.gate.weight", "fresh", h_axis=1)
        widen(pre + "mlp.proj.weight", "zero", h_axis=0)
        widen(pre + "mlp.proj.bias", "zero", h_axis=0)
    if cfg.final_norm:
        widen_norm("norm_f.weight")
    if not cfg.tie_embeddings:
        widen("lm_head.weight", "fresh", h_axis=1)
    return editor.commit()
