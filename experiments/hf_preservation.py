"""Hugging Face models through progrow: how exactly are logits kept? And what is refused?

Uses the test suite's registries and tiny perturbed models (``tests/hf_utils.py``), so the
numbers measure exactly what the tests assert. Prints markdown:

1. Import/export parity per family variant: max |logits diff| between the HF model and
   ``from_hf`` of it, and between the progrow model and ``to_hf`` of it.
2. Per family and expansion (and compositions): max |logits diff| of progrow before vs
   after growth, and of HF before growth vs HF after growth and export, in float32 and
   float64. Float64 Llama is shown twice: with Hugging Face's ``LlamaRMSNorm`` as shipped
   (it normalizes in float32 whatever the dtype) and with that norm in float64.
3. Every refusal with its message: growth results a family cannot hold (``to_hf``),
   progrow layouts (``to_hf(family=...)``) and HF models (``from_hf``).

Run: ``HF_HUB_OFFLINE=1 python experiments/hf_preservation.py``
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hf_utils import (
    CASES,
    EXPORTABLE,
    LAYOUT_REFUSALS,
    REFUSED,
    build,
    exact_llama_norm,
    grow_id,
    hf_logits,
    hf_refusals,
    max_diff,
    our_logits,
    tokens_for,
)

from progrow import Transformer, TransformerConfig, grow
from progrow.hf import check_exportable, from_hf, to_hf

DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


def parity_rows() -> list[str]:
    rows = [
        "| family | variant | dtype | HF vs from_hf | progrow vs to_hf |",
        "|---|---|---|---|---|",
    ]
    for family, variant in CASES:
        for name, dtype in DTYPES.items():
            with exact_llama_norm():
                hf = build(family, variant, dtype)
                tokens = tokens_for(hf)
                model = from_hf(hf)
                ours = our_logits(model, tokens)
                imported = max_diff(ours, hf_logits(hf, tokens))
                exported = max_diff(hf_logits(to_hf(model), tokens), ours)
            rows.append(f"| {family} | {variant} | {name} | {imported:.1e} | {exported:.1e} |")
    return rows


def growth_diffs(
    case: tuple[str, str, dict[str, Any]], dtype: torch.dtype, exact: bool
) -> tuple[float, float]:
    """(progrow before vs after growth, HF before vs HF after growth and export)."""
    family, variant, sizes = case
    with exact_llama_norm(enabled=exact):
        hf = build(family, variant, dtype)
        tokens = tokens_for(hf)
        hf_before = hf_logits(hf, tokens)
        model = from_hf(hf)
        before = our_logits(model, tokens)
        grow(model, **sizes, generator=torch.Generator().manual_seed(0))
        after = our_logits(model, tokens)
        hf_after = hf_logits(to_hf(model, base_config=hf.config), tokens)
    return max_diff(after, before), max_diff(hf_after, hf_before)


def growth_rows() -> list[str]:
    rows = [
        "| family-variant-growth | progrow fp32 | HF fp32 | progrow fp64 | HF fp64 "
        "| HF fp64, stock float32 RMSNorm |",
        "|---|---|---|---|---|---|",
    ]
    for case in EXPORTABLE:
        ours32, hf32 = growth_diffs(case, torch.float32, exact=False)
        ours64, hf64 = growth_diffs(case, torch.float64, exact=True)
        stock = growth_diffs(case, torch.float64, exact=False)[1] if case[0] == "llama" else hf64
        rows.append(
            f"| {grow_id(case)} | {ours32:.1e} | {hf32:.1e} | {ours64:.1e} | {hf64:.1e} "
            f"| {stock:.1e} |"
        )
    return rows


def refusal_lines() -> list[str]:
    lines = ["Growth results a family cannot hold (to_hf after grow):", ""]
    for family, variant, sizes, _ in REFUSED:
        model = from_hf(build(family, variant))
        grow(model, **sizes, generator=torch.Generator().manual_seed(0))
        lines.append(
            f"- {grow_id((family, variant, sizes))}: {_error(check_exportable, model.config)}"
        )
    lines += ["", "progrow layouts (to_hf(model, family=...)):", ""]
    for family, fields, _ in LAYOUT_REFUSALS:
        model = Transformer(TransformerConfig(**fields))
        lines.append(f"- {family}: {_error(to_hf, model, family=family)}")
    lines += ["", "Hugging Face models (from_hf):", ""]
    for name, make, _ in hf_refusals():
        lines.append(f"- {name}: {_error(from_hf, make())}")
    return lines


def _error(fn: Any, *args: Any, **kwargs: Any) -> str:
    try:
        fn(*args, **kwargs)
    except ValueError as err:
        return str(err)
    raise AssertionError(f"{fn.__name__} accepted {args} {kwargs}")


def main() -> None:
    torch.set_num_threads(1)
    print("## Import/export parity (max |logits diff|)\n")
    print("\n".join(parity_rows()))
    print("\n## Growth, then export (max |logits diff| before vs after)\n")
    print("\n".join(growth_rows()))
    print("\n## Refusals\n")
    print("\n".join(refusal_lines()))


if __name__ == "__main__":
    main()
