"""Hidden-size expansion: widen the residual stream of every layer at once."""

from __future__ import annotations

import math

import torch

from progrow.expand._editor import Editor, check_target
from progrow.model import Transformer
from progrow.record import ExpansionRecord


def expand_hidden(
    model: Transformer, d_model: int, *, generator: torch.Generator | None = None
) -> ExpansionRecord:
    """Grow the hidden size from ``h`` to ``d_model``, in place.

    The invariant is that the residual stream becomes ``[x, 0]`` at every layer:

    * token and position embeddings get zero new columns;
    * everything that writes into the stream gets zero new outputs: W_O and W2 new rows
      (of their ``(out, in)`` weights' out side), b2 new entries;
    * everything that reads from the stream gets fresh new inputs (WQ, WK, WV, W1, and the
      output projection unless it is tied to the embedding, in which case it follows the
      embedding's zeros): they multiply the zero coordinates, so their value is free;
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
    if not check_target(model, "d_model", d_model):
        return ExpansionRecord(model.config, model.config, expansions=("d_model",))
    cfg = model.config
    if cfg.norm != "rmsnorm":
        raise ValueError(
            f"d_model={d_model}: hidden expansion needs norm='rmsnorm', this model has "
            f"norm={cfg.norm!r}; LayerNorm subtracts the mean over all d_model coordinates, "
            "and zero-padding changes that mean, so the function would not be preserved"
        )
    h, new_h = cfg.d_model, d_model
    ratio = h / new_h
    gain = math.sqrt(ratio)
    new_cfg = cfg.replace(d_model=new_h, norm_eps=cfg.norm_eps * ratio)
    editor = Editor(model, new_cfg, "d_model", generator)

    def widen_norm(name: str) -> None:
        editor.expand(name, (new_h,), gain, factor=gain)

    editor.expand("tok_emb.weight", (cfg.vocab_size, new_h), "zero")
    editor.expand("pos_emb.weight", (cfg.max_seq_len, new_h), "zero")
    qk, v, p = cfg.n_heads * cfg.d_qk, cfg.n_heads * cfg.d_v, cfg.d_mlp
    for i in range(cfg.n_layers):
        pre = f"blocks.{i}."
        widen_norm(pre + "norm_attn.weight")
        editor.expand(pre + "attn.q.weight", (qk, new_h), "fresh")
        editor.expand(pre + "attn.k.weight", (qk, new_h), "fresh")
        editor.expand(pre + "attn.v.weight", (v, new_h), "fresh")
        editor.expand(pre + "attn.o.weight", (new_h, v), "zero")
        widen_norm(pre + "norm_mlp.weight")
        editor.expand(pre + "mlp.fc.weight", (p, new_h), "fresh")
        editor.expand(pre + "mlp.proj.weight", (new_h, p), "zero")
        editor.expand(pre + "mlp.proj.bias", (new_h,), "zero")
    if cfg.final_norm:
        widen_norm("norm_f.weight")
    if not cfg.tie_embeddings:
        editor.expand("lm_head.weight", (cfg.vocab_size, new_h), "fresh")
    return editor.commit()
