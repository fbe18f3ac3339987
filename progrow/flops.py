"""Training compute from the current architecture: FLOPs per token.

Two conventions, both ``2`` FLOPs per multiply-add and training = ``3 x`` forward:

* :func:`train_flops_per_token`, what progrow logs (``compute/flops``), sizes budgets by
  and reports: ``6 N + 6 L H (Q + V) (T + 1) / 2``, where ``N`` is
  :func:`matmul_params` (the weights in matrix multiplies, the output projection
  included, embedding lookups excluded), ``L`` layers, ``H`` query heads, ``Q``/``V``
  the query-key and value sizes per head and ``T`` the sequence length. A causal token
  attends to ``(T + 1) / 2`` positions on average, so this counts the attention a causal
  model needs: the right measure for comparing runs with each other.
* :func:`standard_train_flops_per_token`: ``6 N + 6 L H (Q + V) T``, which is the usual
  ``6N + 12 L H Q T`` (PaLM's appendix B) when ``Q = V``. It counts the full ``T x T``
  score matrix, as dense attention kernels compute it; use it to compare with published
  model FLOPs utilization (MFU) figures. For progrow's models it is the count that
  ``torch.utils.flop_counter.FlopCounterMode`` measures (tests/test_flops.py).

Norms, activations, softmax, biases and the optimizer step are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from progrow.config import GROWABLE_DIMS, TransformerConfig
from progrow.expand.targets import grown_config


def matmul_params(config: TransformerConfig) -> int:
    """Weights used in matrix multiplies (embedding lookups, norms and biases excluded).

    Grouped-query attention has ``kv_heads`` blocks in WK and WV; a gated MLP has a third
    matrix (the gate).
    """
    h, e, kv = config.d_model, config.n_heads, config.kv_heads
    attn = h * (e * config.d_qk + kv * config.d_qk + kv * config.d_v + e * config.d_v)
    mlp = (3 if config.mlp_gated else 2) * h * config.d_mlp  # W1 (, W_gate), W2
    return config.n_layers * (attn + mlp) + h * config.vocab_size  # + output projection


def forward_flops_per_token(config: TransformerConfig, seq_len: int) -> float:
    """Forward FLOPs per token at sequence length ``seq_len`` (multiply-add = 2 FLOPs).

    ``2 * matmul_params`` for the weights, plus the attention scores and the weighted sum
    of values: ``2 * n_heads * (d_qk + d_v)`` per attended position, and a causal token
    attends to ``(seq_len + 1) / 2`` positions on average.
    """
    ctx = (seq_len + 1) / 2
    attn = 2 * config.n_layers * config.n_heads * (config.d_qk + config.d_v) * ctx
    return 2 * matmul_params(config) + attn


def train_flops_per_token(config: TransformerConfig, seq_len: int) -> float:
    """Forward plus backward (twice the forward): ``3 x`` forward FLOPs (causal count)."""
    return 3 * forward_flops_per_token(config, seq_len)


def standard_train_flops_per_token(config: TransformerConfig, seq_len: int) -> float:
    """Training FLOPs per token in the usual MFU convention, ``6N + 12 L H Q T``.

    Like :func:`train_flops_per_token` but with the full ``seq_len x seq_len`` attention
    (``6 L H (Q + V) T``) instead of the causal average: compare these with other
    codebases' MFU; compare runs with each other with either.

    Example:
        >>> cfg = TransformerConfig(vocab_size=256, d_model=64, n_heads=4, d_qk=16, d_v=16)
        >>> n, (l, h, q, t) = matmul_params(cfg), (cfg.n_layers, 4, 16, 128)
        >>> standard_train_flops_per_token(cfg, t) == 6 * n + 12 * l * h * q * t
        True
    """
    attn = 6 * config.n_layers * config.n_heads * (config.d_qk + config.d_v) * seq_len
    return 6 * matmul_params(config) + attn


def steps_for_budget(
    start: TransformerConfig,
    stages: Sequence[Mapping[str, Any]],
    budget_flops: float,
    tokens_per_step: int,
    seq_len: int,
) -> int:
    """Optimizer steps a growing run may take to spend ``budget_flops`` of training compute.

    ``stages`` are growth stages whose ``step`` is a FRACTION of the run (in ``[0, 1)``), so
    each size is trained for a fixed share of the steps and the total compute is
    ``max_steps * sum(share_i * flops_per_step_i)``: solved for ``max_steps``. Used to give
    every growth schedule the FLOPs of a fixed-size baseline (its early steps are cheaper,
    so it takes more of them).

    Example:
        >>> cfg = TransformerConfig(vocab_size=256, d_model=64, n_layers=2)
        >>> budget = 100 * train_flops_per_token(cfg.replace(n_layers=4), 128) * 1024
        >>> steps_for_budget(cfg, [{"step": 0.5, "n_layers": 4}], budget, 1024, 128)
        130
    """
    shares: list[tuple[float, TransformerConfig]] = []
    config, start_fraction = start, 0.0
    for i, stage in enumerate(stages):
        fraction = float(stage["step"])
        if not 0.0 <= fraction < 1.0 or fraction < start_fraction:
            raise ValueError(
                f"growth stage {i}: step={stage['step']!r} must be a fraction in [0, 1), "
                "increasing, to size a run by its compute budget"
            )
        shares.append((fraction - start_fraction, config))
        sizes = {k: v for k, v in stage.items() if k in GROWABLE_DIMS and v is not None}
        # The config the expansions will produce (growing n_kv_heads adds query heads too).
        config, start_fraction = grown_config(config, sizes), fraction
    shares.append((1.0 - start_fraction, config))
    per_step = sum(
        share * train_flops_per_token(cfg, seq_len) * tokens_per_step for share, cfg in shares
    )
    return max(1, round(budget_flops / per_step))
