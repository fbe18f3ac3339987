"""The probe-loss jump at growth under bf16 autocast, for every expansion.

Every expansion is function-preserving in exact arithmetic, and in fp32 its loss delta
is rounding (~1e-6). Under bf16 autocast (Lightning's ``bf16-mixed``: fp32 parameters,
matmuls in bf16) the grown model rounds differently: rescaled weights round to other
bf16 values and wider matmuls sum in another order. This measures how far the probe loss
moves, against ``GrowthCallback``'s default ``loss_tolerance`` (1e-4) and against the gap
between the bf16 and the fp32 loss of the same model (the size of bf16's own rounding).

1. Outside Lightning: a small model (Llama-style: RMSNorm, SwiGLU, RoPE, grouped-query
   attention; and GPT-2-style: LayerNorm, tanh GELU, biases, tied, learned positions,
   every expansion but the hidden size) trained ``--steps`` AdamW steps under bf16
   autocast on the byte corpus, then each expansion applied alone to a copy with
   :func:`progrow.grow`, at the growth targets of tests/expansion_table.py (``d_mlp``
   2p+1, ``n_kv_heads`` +2, ``n_heads`` +2 per KV head, ``d_v`` +3, ``d_qk`` +2,
   ``d_model`` +6, ``n_layers`` +2 appended); the loss of fixed validation batches
   (eval mode, no gradients) before and after, in bf16 autocast and in fp32.
2. Inside ``trainer.fit`` with ``precision="bf16-mixed"``: ``LMModule`` + ``GrowthCallback``
   with one stage per expansion; the callback's own ``growth/loss_before``/``after``.

Usage: ``python benchmarks/bf16_growth.py [--steps 200] [--threads 1]``; writes
``benchmarks/results/bf16_growth.{md,json}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import torch
import torch.nn.functional as F
from torch import Tensor

from progrow import GrowthCallback, LMModule, Transformer, TransformerConfig, grow
from progrow.config import GROWABLE_DIMS
from progrow.data import load_stdlib
from progrow.expand.targets import grown_config
from progrow.optim import OptimConfig, build_adamw

SEQ_LEN = 128
BATCH = 16
PROBE_BATCHES = 4
#: GrowthCallback's default ``loss_tolerance``.
TOLERANCE = 1e-4

BASE: dict[str, Any] = dict(
    vocab_size=256, max_seq_len=SEQ_LEN, d_model=64, d_mlp=192, n_heads=4, d_qk=16, d_v=16,
    n_layers=2,
)  # fmt: skip
VARIANTS: dict[str, dict[str, Any]] = {
    "llama": dict(
        norm="rmsnorm", activation="silu", mlp_gated=True, mlp_bias=False, positions="rope",
        n_kv_heads=2,
    ),
    "gpt2": dict(
        norm="layernorm", activation="gelu_tanh", attn_bias=True, tie_embeddings=True,
        positions="learned",
    ),
}  # fmt: skip


def target(dim: str, c: TransformerConfig) -> int:
    """The grown size of ``dim`` from ``c``, as tests/expansion_table.py grows it."""
    return {
        "d_mlp": 2 * c.d_mlp + 1,
        "n_kv_heads": c.kv_heads + 2,
        # Under grouped-query attention every group gets two more query heads.
        "n_heads": c.n_heads + (2 if c.n_kv_heads is None else 2 * c.n_kv_heads),
        "d_v": c.d_v + 3,
        "d_qk": c.d_qk + 2,  # even, as RoPE needs
        "d_model": c.d_model + 6,
        "n_layers": c.n_layers + 2,
    }[dim]


def expansions(config: TransformerConfig) -> list[str]:
    """The dimensions that can grow on ``config`` (LayerNorm: not the hidden size)."""
    return [d for d in GROWABLE_DIMS if config.norm == "rmsnorm" or d != "d_model"]


def loss(model: Transformer, batch: Tensor, bf16: bool) -> Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())


def probe(model: Transformer, batches: list[Tensor], bf16: bool) -> float:
    """Mean loss over the probe batches, eval mode, no gradients (as the callback does)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = sum(float(loss(model, b, bf16)) for b in batches) / len(batches)
    model.train(was_training)
    return value


def trained(config: TransformerConfig, steps: int, data: Any) -> tuple[Transformer, float]:
    """A model trained ``steps`` AdamW steps under bf16 autocast; its last train loss."""
    torch.manual_seed(0)
    model = Transformer(config)
    opt = build_adamw(model, OptimConfig(lr=3e-3))
    last = float("nan")
    for i in range(steps):
        out = loss(model, data.batch_at(i, seq_len=SEQ_LEN, batch_size=BATCH), bf16=True)
        out.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = float(out)
    return model, last


def jumps(variant: str, steps: int, data: Any, batches: list[Tensor]) -> list[dict[str, Any]]:
    """Part 1: each expansion alone on a copy of the trained model."""
    config = TransformerConfig(**{**BASE, **VARIANTS[variant]})
    model, train_loss = trained(config, steps, data)
    fp32, bf16 = probe(model, batches, False), probe(model, batches, True)
    rows = []
    for dim in expansions(config):
        grown = copy.deepcopy(model)
        size = target(dim, config)
        sizes: dict[str, Any] = {dim: size}
        grow(grown, **sizes, generator=torch.Generator().manual_seed(1))
        d32, d16 = probe(grown, batches, False) - fp32, probe(grown, batches, True) - bf16
        rows.append({
            "variant": variant, "expansion": dim, "from": config.sizes()[dim], "to": size,
            "params": [model.num_params(), grown.num_params()], "train_loss": train_loss,
            "fp32_before": fp32, "fp32_delta": d32, "bf16_before": bf16, "bf16_delta": d16,
            "bf16_fp32_gap": bf16 - fp32,
        })  # fmt: skip
    return rows


def stages(config: TransformerConfig, first: int, every: int) -> list[dict[str, Any]]:
    """One growth stage per expansion, ``every`` steps apart from ``first``."""
    out = []
    for i, dim in enumerate(expansions(config)):
        size = target(dim, config)
        out.append({"step": first + i * every, dim: size})
        config = grown_config(config, {dim: size})
    return out


def in_fit(steps: int) -> list[dict[str, Any]]:
    """Part 2: the Llama-style model inside ``trainer.fit(precision="bf16-mixed")``."""
    from progrow.training import LMDataModule

    config = TransformerConfig(**{**BASE, **VARIANTS["llama"]})
    plan = stages(config, first=steps, every=5)
    max_steps = plan[-1]["step"] + 5
    torch.manual_seed(0)
    module = LMModule(config, OptimConfig(lr=3e-3, warmup_steps=20, max_steps=max_steps))
    data = LMDataModule(
        source="stdlib", seq_len=SEQ_LEN, batch_size=BATCH, val_batches=1, seed=0,
        cache_dir=C.cache_dir(), max_bytes=C.MAX_BYTES,
    )  # fmt: skip
    callback = GrowthCallback(plan, seed=0, loss_tolerance=TOLERANCE, on_loss_jump="ignore")
    bf16_trainer(max_steps, callback).fit(module, data)
    return [
        {
            "expansion": next(d for d in GROWABLE_DIMS if d in stage),
            "step": event.step,
            "loss_before": event.loss_before,
            "bf16_delta": event.loss_delta,
        }
        for stage, event in zip(plan, callback.events, strict=True)
    ]


def bf16_trainer(max_steps: int, callback: GrowthCallback) -> Any:
    """A CPU trainer under ``bf16-mixed`` that only trains (no logger, checkpoints, bars
    or validation)."""
    import lightning as L

    return L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, precision="bf16-mixed",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[callback],
    )  # fmt: skip


def fmt(x: float) -> str:
    return f"{x:+.2e}"


def tables(rows: list[dict[str, Any]], fit: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    part1 = C.table(
        ["variant", "expansion", "size", "params", "fp32 loss", "fp32 delta", "bf16 loss",
         "bf16 delta", "bf16 - fp32 loss (same model)", f"abs(bf16 delta) > {TOLERANCE:g}"],
        [[r["variant"], r["expansion"], f"{r['from']} -> {r['to']}",
          f"{r['params'][0]} -> {r['params'][1]}", f"{r['fp32_before']:.4f}",
          fmt(r["fp32_delta"]), f"{r['bf16_before']:.4f}", fmt(r["bf16_delta"]),
          fmt(r["bf16_fp32_gap"]), "yes" if abs(r["bf16_delta"]) > TOLERANCE else "no"]
         for r in rows],
    )  # fmt: skip
    part2 = C.table(
        ["expansion", "step", "probe loss before", "bf16 delta", f"abs(delta) > {TOLERANCE:g}"],
        [[r["expansion"], r["step"], f"{r['loss_before']:.4f}", fmt(r["bf16_delta"]),
          "yes" if abs(r["bf16_delta"]) > TOLERANCE else "no"] for r in fit],
    )  # fmt: skip
    return "\n".join([
        f"# Loss jump at growth under bf16 autocast ({meta['date']}, torch {meta['torch']}, "
        f"{meta['machine']}, {meta['seconds']:.0f} s)",
        "",
        f"`{meta['command']}`: {meta['steps']} AdamW steps (lr 3e-3, batch {BATCH} x {SEQ_LEN} "
        f"bytes) under bf16 autocast, then each expansion alone; probe: {PROBE_BATCHES} "
        f"validation batches of {BATCH} x {SEQ_LEN}, eval mode.",
        "",
        part1,
        "",
        "Inside `trainer.fit(precision=\"bf16-mixed\")` (Llama-style, one stage per "
        "expansion, 5 steps apart; GrowthCallback's own probe):",
        "",
        part2,
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps before growth")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=C.RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*bf16.*")
    started = time.perf_counter()
    data = load_stdlib(max_bytes=C.MAX_BYTES, cache_dir=C.cache_dir())
    val = data.val_batches(seq_len=SEQ_LEN, batch_size=BATCH, num_batches=PROBE_BATCHES)
    batches = [val[i] for i in range(len(val))]
    rows = [r for variant in VARIANTS for r in jumps(variant, args.steps, data, batches)]
    fit = in_fit(args.steps)
    meta = {
        **C.environment(args.threads),
        "command": " ".join(["python benchmarks/bf16_growth.py", *(argv or sys.argv[1:])]),
        "steps": args.steps,
        "seconds": time.perf_counter() - started,
    }
    payload = {"meta": meta, "tolerance": TOLERANCE, "outside_fit": rows, "in_fit": fit}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bf16_growth.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = tables(rows, fit, meta)
    (args.out / "bf16_growth.md").write_text(text)
    print(text)
    return payload


if __name__ == "__main__":
    main()
