"""How exactly does each expansion preserve the function? A markdown table.

Uses the test suite's own registry (``tests/expansion_table.py``) and tiny odd-sized
config and perturbation (``tests/conftest.py``), so the table measures exactly what the
tests assert: each expansion, interleaved layer insertion, and all six through ``grow``,
on a model with ``norm_eps=1e-2`` whose parameters were moved off their init; the max abs
logits difference before/after, worst over tied and untied embeddings and two seeds.

Run: ``python experiments/preservation_table.py``
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import perturb_, tiny_config
from expansion_table import COMPOSITIONS, EXPANSIONS, LAYERS_INTERLEAVE

from progrow import ExpansionRecord, Transformer

Expand = Callable[[Transformer, torch.Generator], ExpansionRecord]
DTYPES = (torch.float64, torch.float32, torch.bfloat16)


def _rows() -> dict[str, Expand]:
    cfg = tiny_config()
    rows: dict[str, Expand] = {}
    for case in (*EXPANSIONS[:-1], LAYERS_INTERLEAVE):
        old, new = getattr(cfg, case.dim), case.target(cfg)
        mode = f", {case.kwargs['positions']}" if case.kwargs else ""
        rows[f"{case.fn.__name__} ({case.dim} {old} -> {new}{mode})"] = case.apply
    rows["grow (all six)"] = COMPOSITIONS["grow-all-interleave"]
    return rows


def max_diff(expand: Expand, dtype: torch.dtype, tied: bool, seed: int) -> tuple[float, float]:
    """(max abs logits difference, max abs logit) for one expansion."""
    torch.manual_seed(seed)
    model = perturb_(Transformer(tiny_config(tie_embeddings=tied)).to(dtype).eval(), seed)
    tokens = torch.randint(11, (8, 9), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        before = model(tokens).double()
        expand(model, torch.Generator().manual_seed(seed + 1))
        after = model(tokens).double()
    return (after - before).abs().max().item(), before.abs().max().item()


def main() -> None:
    names = [str(d).removeprefix("torch.") for d in DTYPES]
    print("| expansion | " + " | ".join(names) + " | max abs logit |")
    print("|---|" + "---:|" * (len(DTYPES) + 1))
    for label, expand in _rows().items():
        cells, scale = [], 0.0
        for dtype in DTYPES:
            results = [
                max_diff(expand, dtype, tied, seed) for tied in (False, True) for seed in (0, 1)
            ]
            cells.append(f"{max(r[0] for r in results):.2e}")
            if dtype == torch.float64:
                scale = max(r[1] for r in results)
        print(f"| {label} | " + " | ".join(cells) + f" | {scale:.2f} |")


if __name__ == "__main__":
    main()
