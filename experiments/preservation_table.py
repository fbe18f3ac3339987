"""How exactly does each expansion preserve the function? Markdown tables.

Uses the test suite's own registry (``tests/expansion_table.py``: expansions, decoder-block
families, compositions) and tiny odd-sized config and perturbation (``tests/conftest.py``),
so the tables measure exactly what the tests assert: each expansion, the integer-factor
key/query growth, interleaved layer insertion, and all seven through ``grow``, on models
with ``norm_eps=1e-2`` whose parameters were moved off their init; the max abs logits
difference before/after, worst over two seeds.

1. The default (GPT-2 style with RMSNorm) blocks, worst over tied and untied embeddings,
   in float64, float32 and bfloat16.
2. Per decoder-block family (Llama, multi-query, GPT-2, everything on) and expansion, in
   float64 and in float32. GPT-2 proper (LayerNorm) refuses the hidden-size expansion.

Run: ``python experiments/preservation_table.py``
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import perturb_, tiny_config
from expansion_table import (
    BLOCK_VARIANTS,
    COMPOSITIONS,
    EXPANSIONS,
    GPT2_LAYERNORM,
    LAYERS_INTERLEAVE,
    QK_DOUBLE,
    ExpansionCase,
)

from progrow import ExpansionRecord, Transformer, TransformerConfig

Expand = Callable[[Transformer, torch.Generator], ExpansionRecord]
DTYPES = (torch.float64, torch.float32, torch.bfloat16)
FAMILIES: dict[str, dict[str, Any]] = {
    "default": {},
    **BLOCK_VARIANTS,
    "gpt2 (LayerNorm)": GPT2_LAYERNORM,
}
CASES: tuple[ExpansionCase, ...] = (*EXPANSIONS[:-1], QK_DOUBLE, LAYERS_INTERLEAVE)
ALL_SEVEN = "grow (all seven)"


def _label(case: ExpansionCase, cfg: TransformerConfig) -> str:
    old, new = cfg.sizes()[case.dim], case.target(cfg)
    mode = f", {case.kwargs['positions']}" if case.kwargs else ""
    return f"{case.fn.__name__} ({case.dim} {old} -> {new}{mode})"


def max_diff(
    expand: Expand, config: TransformerConfig, dtype: torch.dtype, seed: int
) -> tuple[float, float]:
    """(max abs logits difference, max abs logit) for one expansion."""
    torch.manual_seed(seed)
    model = perturb_(Transformer(config).to(dtype).eval(), seed)
    tokens = torch.randint(config.vocab_size, (8, 9), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        before = model(tokens).double()
        expand(model, torch.Generator().manual_seed(seed + 1))
        after = model(tokens).double()
    return (after - before).abs().max().item(), before.abs().max().item()


def worst(expand: Expand, configs: list[TransformerConfig], dtype: torch.dtype) -> float:
    return max(max_diff(expand, cfg, dtype, seed)[0] for cfg in configs for seed in (0, 1))


def default_table() -> None:
    configs = [tiny_config(), tiny_config(tie_embeddings=True)]
    rows: dict[str, Expand] = {_label(c, configs[0]): c.apply for c in CASES}
    rows[ALL_SEVEN] = COMPOSITIONS["grow-all-interleave"]
    names = [str(d).removeprefix("torch.") for d in DTYPES]
    print("| expansion | " + " | ".join(names) + " | max abs logit |")
    print("|---|" + "---:|" * (len(DTYPES) + 1))
    for label, expand in rows.items():
        cells = [f"{worst(expand, configs, dtype):.2e}" for dtype in DTYPES]
        scale = max(max_diff(expand, cfg, torch.float64, 0)[1] for cfg in configs)
        print(f"| {label} | " + " | ".join(cells) + f" | {scale:.2f} |")


def _pick(case: ExpansionCase | None, config: TransformerConfig) -> Expand | None:
    """The expansion to measure on ``config`` (None: all seven), or None where refused."""
    if case is None:
        return COMPOSITIONS["grow-all-interleave"] if config.norm == "rmsnorm" else None
    return case.apply if case.applies_to(config) else None


def family_table(dtype: torch.dtype) -> None:
    print(f"\n{str(dtype).removeprefix('torch.')}: max |logits diff| per block family\n")
    configs = {name: tiny_config(**overrides) for name, overrides in FAMILIES.items()}
    print("| expansion | " + " | ".join(FAMILIES) + " |")
    print("|---|" + "---:|" * len(FAMILIES))
    rows: list[tuple[str, ExpansionCase | None]] = [
        (f"{c.fn.__name__} ({c.name})", c) for c in CASES
    ]
    for label, case in [*rows, (ALL_SEVEN, None)]:
        cells = []
        for cfg in configs.values():
            expand = _pick(case, cfg)
            cells.append("refused" if expand is None else f"{worst(expand, [cfg], dtype):.2e}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    scales = [max_diff(lambda m, g: ExpansionRecord(m.config, m.config), cfg, dtype, 0)[1]
              for cfg in configs.values()]  # fmt: skip
    print("| max abs logit | " + " | ".join(f"{s:.2f}" for s in scales) + " |")


def main() -> None:
    default_table()
    for dtype in (torch.float64, torch.float32):
        family_table(dtype)
    print("\nfamilies (overrides of tests/conftest.py's tiny_config):")
    for name, overrides in FAMILIES.items():
        print(f"- {name}: {overrides or 'the defaults'}")


if __name__ == "__main__":
    main()
