"""How exactly does each expansion preserve the function? A markdown table.

For each of the six expansions, and for all six at once through ``grow``, grow a tiny
model with odd sizes (d_model 7 -> 13, d_mlp 5 -> 11, heads 3 -> 5, d_qk 3 -> 5,
d_v 2 -> 5, 2 -> 4 layers interleaved, vocab 11) and a large ``norm_eps=1e-2`` whose
parameters have been moved off their init, and report the max abs difference of the
logits before and after, worst case over tied and untied embeddings.

Run: ``python experiments/preservation_table.py``
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from progrow import (
    ExpansionRecord,
    Transformer,
    TransformerConfig,
    add_heads,
    add_layers,
    expand_hidden,
    expand_mlp,
    expand_qk,
    expand_value,
    grow,
)

Expand = Callable[[Transformer, torch.Generator], ExpansionRecord]

EXPANSIONS: dict[str, Expand] = {
    "expand_mlp (d_mlp 5 -> 11)": lambda m, g: expand_mlp(m, 11, generator=g),
    "add_heads (n_heads 3 -> 5)": lambda m, g: add_heads(m, 5, generator=g),
    "expand_value (d_v 2 -> 5)": lambda m, g: expand_value(m, 5, generator=g),
    "expand_qk (d_qk 3 -> 5)": lambda m, g: expand_qk(m, 5, generator=g),
    "expand_hidden (d_model 7 -> 13)": lambda m, g: expand_hidden(m, 13, generator=g),
    "add_layers (2 -> 4, interleave)": lambda m, g: add_layers(
        m, 4, positions="interleave", generator=g
    ),
    "grow (all six)": lambda m, g: grow(
        m,
        d_mlp=11,
        n_heads=5,
        d_v=5,
        d_qk=5,
        d_model=13,
        n_layers=4,
        layer_positions="interleave",
        generator=g,
    ),
}
DTYPES = (torch.float64, torch.float32, torch.bfloat16)


def perturbed_model(config: TransformerConfig, dtype: torch.dtype, seed: int) -> Transformer:
    """A model whose gains and biases are off their init values (as after training)."""
    torch.manual_seed(seed)
    model = Transformer(config).to(dtype).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if name.endswith("bias") or ".norm" in f".{name}" else 0.1
            p.add_(torch.randn(p.shape, generator=gen).to(dtype) * scale)
    return model


def max_diff(expand: Expand, dtype: torch.dtype, tied: bool, seed: int = 0) -> tuple[float, float]:
    """(max abs logits difference, max abs logit) for one expansion."""
    config = TransformerConfig(
        vocab_size=11,
        max_seq_len=9,
        d_model=7,
        d_mlp=5,
        n_heads=3,
        d_qk=3,
        d_v=2,
        n_layers=2,
        norm_eps=1e-2,
        init_std=0.1,
        tie_embeddings=tied,
    )
    model = perturbed_model(config, dtype, seed)
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
    for label, expand in EXPANSIONS.items():
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
