"""Training throughput: a grown model against a fresh one, and Lightning against a plain loop.

Targets (issue 5, part 3):

2. A grown model (AdamW that had taken steps, surgery applied) trains at >= 0.98 of the
   tokens/s of a freshly built model of the same config: no leftovers from growth. The
   fresh model gets the grown model's weights and optimizer state through
   ``load_state_dict``, so both do exactly the same arithmetic and only the tensors'
   provenance differs; trials are interleaved (A, B, B, A, ...) to cancel drift.
3. ``Trainer.fit`` with ``LMModule`` reaches >= 0.90 of the tokens/s of a minimal
   hand-written PyTorch loop on the same model, data, AdamW groups and LambdaLR.
   A tiny-model run measures Lightning's fixed per-step overhead with little noise.

Usage: ``python benchmarks/bench_throughput.py [--quick] [--threads 1] [--profile]``
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import lightning as L
import torch

from progrow import LMModule, Transformer, TransformerConfig
from progrow.data import load_stdlib
from progrow.expand import grow
from progrow.loss import lm_loss
from progrow.optim import OptimConfig, build_adamw, warmup_cosine
from progrow.optimizer_layout import param_names
from progrow.surgery import update_optimizer
from progrow.training import LMDataModule

#: Model A before growth (grown to C = _common.BASE with every expansion, layers interleaved).
SMALL = dict(d_model=192, d_mlp=512, n_heads=3, d_qk=48, d_v=48, n_layers=6)
QUICK_SMALL = dict(d_model=16, d_mlp=32, n_heads=1, d_qk=4, d_v=4, n_layers=1)
TINY = dict(d_model=32, d_mlp=64, n_heads=2, d_qk=8, d_v=8, n_layers=1)


def corpus() -> Any:
    return load_stdlib(max_bytes=C.MAX_BYTES, cache_dir=C.cache_dir())


def train_steps(
    model: Transformer, opt: torch.optim.Optimizer, batches: list[torch.Tensor]
) -> float:
    t0 = time.perf_counter()
    for batch in batches:
        loss = lm_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


# -- 2. grown vs fresh -------------------------------------------------------------------


def structure_report(
    a: Transformer, opt_a: torch.optim.Optimizer, b: Transformer, opt_b: torch.optim.Optimizer
) -> dict[str, Any]:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    bad: list[str] = []
    if list(pa) != list(pb):
        bad.append("parameter names/order differ")
    for name, p in pa.items():
        q = pb[name]
        if p.shape != q.shape or p.stride() != q.stride() or p.dtype != q.dtype:
            bad.append(f"{name}: shape/stride/dtype {tuple(p.shape)} {p.stride()} vs {q.stride()}")
        if not p.is_contiguous() or p.storage_offset() != 0:
            bad.append(f"{name}: not contiguous or offset {p.storage_offset()}")
        if p.untyped_storage().nbytes() != p.numel() * p.element_size():
            bad.append(f"{name}: storage {p.untyped_storage().nbytes()} B for {p.numel()} elements")
    ids_a = {id(p) for p in pa.values()}
    names_a = {id(p): n for n, p in pa.items()}
    if set(map(id, opt_a.state)) != ids_a:
        bad.append("optimizer state keys are not exactly the model's parameters")
    for ga, gb in zip(opt_a.param_groups, opt_b.param_groups, strict=True):
        if [names_a.get(id(p)) for p in ga["params"]] != [
            n for p in gb["params"] for n, q in pb.items() if q is p
        ]:
            bad.append("param group order differs")
    state_b = {n: opt_b.state[q] for n, q in pb.items()}
    for param, st in opt_a.state.items():
        name = names_a[id(param)]
        for key, v in st.items():
            if not torch.is_tensor(v) or v.ndim == 0:
                continue
            w = state_b[name][key]
            if not v.is_contiguous() or v.stride() != w.stride() or v.shape != param.shape:
                bad.append(f"state {name}.{key}: stride {v.stride()} vs fresh {w.stride()}")
            if v.untyped_storage().nbytes() != v.numel() * v.element_size():
                bad.append(f"state {name}.{key}: storage larger than tensor")
    return {"ok": not bad, "problems": bad[:20], "n_params": len(pa), "n_state": len(opt_a.state)}


def grown_vs_fresh(
    small: dict[str, int], big: dict[str, int], *, seq_len: int, batch: int, steps: int, trials: int
) -> dict[str, Any]:
    data = corpus()
    batches = [
        data.batch_at(i, seq_len=seq_len, batch_size=batch, seed=0) for i in range(steps + 4)
    ]
    cfg = OptimConfig(lr=1e-3)
    torch.manual_seed(0)
    a = Transformer(TransformerConfig(**C.model_config(small, seq_len)))
    opt_a = build_adamw(a, cfg)
    train_steps(a, opt_a, batches[:3])  # optimizer state exists and step > 0
    names = param_names(a)
    record = grow(
        a,
        **big,
        layer_positions="interleave",
        hidden_factor_at="readers",  # the defaults, named: **big's ints would type-clash
        qk_factor_at="keys",
        init="zero",
        generator=torch.Generator().manual_seed(1),
    )
    update_optimizer(opt_a, record, names, a)
    del record, names

    # a.config, not a config built from the sizes: hidden growth also rescales norm_eps.
    b = Transformer(a.config)
    b.load_state_dict(a.state_dict())
    opt_b = build_adamw(b, cfg)
    # Deep copy: Optimizer.load_state_dict keeps same-dtype/device tensors as they are,
    # so without it both optimizers would share (and double-update) one state.
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    structure = structure_report(a, opt_a, b, opt_b)

    # Warm both (first steps at these shapes), then interleave A, B / B, A trials.
    train_steps(a, opt_a, batches[:1])
    train_steps(b, opt_b, batches[:1])
    tokens = steps * batch * seq_len
    tps: dict[str, list[float]] = {"grown": [], "fresh": []}
    ratios: list[float] = []
    for t in range(trials):
        run = batches[1 : 1 + steps]
        order = [("grown", a, opt_a), ("fresh", b, opt_b)]
        if t % 2:
            order.reverse()
        got = {}
        for label, model, opt in order:
            got[label] = tokens / train_steps(model, opt, run)
            tps[label].append(got[label])
        ratios.append(got["grown"] / got["fresh"])
        print(
            f"  trial {t}: grown {got['grown']:.0f} tok/s, fresh {got['fresh']:.0f} tok/s, "
            f"ratio {ratios[-1]:.3f} (load {C.loadavg()[0]})",
            flush=True,
        )
    same = all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    return {
        "small": small,
        "big": big,
        "params": a.num_params(),
        "steps_per_trial": steps,
        "trials": trials,
        "tokens_per_s": {k: C.spread(v) for k, v in tps.items()},
        "ratio": C.spread(ratios),
        "structure": structure,
        "weights_bitwise_equal_after_training": same,
    }


# -- 3. Lightning vs plain loop ----------------------------------------------------------


class TopOfStep(L.Callback):
    """Time at each training batch start (``t[i]``); span t[W] -> t[W + N] is N full steps."""

    def __init__(self) -> None:
        self.t: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.t.append(time.perf_counter())


def lightning_run(
    model_cfg: dict[str, Any],
    *,
    seq_len: int,
    batch: int,
    warmup: int,
    steps: int,
    profile: cProfile.Profile | None = None,
) -> float:
    total = warmup + steps + 1
    torch.manual_seed(0)
    module = LMModule(model_cfg, OptimConfig(lr=1e-3, warmup_steps=5, max_steps=total))
    data = LMDataModule(
        source="stdlib",
        seq_len=seq_len,
        batch_size=batch,
        val_batches=1,
        max_bytes=C.MAX_BYTES,
        cache_dir=C.cache_dir(),
    )
    timer = TopOfStep()
    trainer = C.quiet_trainer(total, [timer])
    if profile is not None:
        profile.enable()
    trainer.fit(module, datamodule=data)
    if profile is not None:
        profile.disable()
    return steps * batch * seq_len / (timer.t[warmup + steps] - timer.t[warmup])


def plain_run(
    model_cfg: dict[str, Any], *, seq_len: int, batch: int, warmup: int, steps: int, data: Any
) -> float:
    total = warmup + steps + 1
    cfg = OptimConfig(lr=1e-3, warmup_steps=5, max_steps=total)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**model_cfg))
    model.train()
    opt = build_adamw(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg))
    t: list[float] = []
    for i in range(total):
        t.append(time.perf_counter())
        b = data.batch_at(i, seq_len=seq_len, batch_size=batch, seed=0)
        loss = lm_loss(model, b)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch * seq_len / (t[warmup + steps] - t[warmup])


def lightning_vs_plain(
    model_cfg: dict[str, Any],
    *,
    seq_len: int,
    batch: int,
    warmup: int,
    steps: int,
    trials: int,
    label: str,
) -> dict[str, Any]:
    data = corpus()
    tps: dict[str, list[float]] = {"lightning": [], "plain": []}
    ratios = []
    for t in range(trials):
        order = ["lightning", "plain"] if t % 2 == 0 else ["plain", "lightning"]
        got = {}
        for kind in order:
            if kind == "lightning":
                got[kind] = lightning_run(
                    model_cfg, seq_len=seq_len, batch=batch, warmup=warmup, steps=steps
                )
            else:
                got[kind] = plain_run(
                    model_cfg, seq_len=seq_len, batch=batch, warmup=warmup, steps=steps, data=data
                )
            tps[kind].append(got[kind])
        ratios.append(got["lightning"] / got["plain"])
        print(
            f"  {label} trial {t}: lightning {got['lightning']:.0f} tok/s, plain "
            f"{got['plain']:.0f} tok/s, ratio {ratios[-1]:.3f} (load {C.loadavg()[0]})",
            flush=True,
        )
    per_step_ms = {k: 1e3 * batch * seq_len / C.median(v) for k, v in tps.items()}
    return {
        "model": model_cfg,
        "seq_len": seq_len,
        "batch_size": batch,
        "warmup_steps": warmup,
        "steps_per_trial": steps,
        "trials": trials,
        "tokens_per_s": {k: C.spread(v) for k, v in tps.items()},
        "ratio": C.spread(ratios),
        "ratio_of_medians": C.median(tps["lightning"]) / C.median(tps["plain"]),
        "ms_per_step_median": per_step_ms,
        "overhead_ms_per_step": per_step_ms["lightning"] - per_step_ms["plain"],
    }


def profile_lightning(model_cfg: dict[str, Any], *, seq_len: int, batch: int, steps: int) -> str:
    prof = cProfile.Profile()
    lightning_run(model_cfg, seq_len=seq_len, batch=batch, warmup=0, steps=steps, profile=prof)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, smoke test (< 1 min)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--profile", action="store_true", help="cProfile a tiny Lightning run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = C.environment(args.threads)
    if args.quick:
        small, big, seq_len, batch = QUICK_SMALL, C.QUICK_BASE, C.QUICK_SEQ_LEN, C.QUICK_BATCH
        gv = dict(steps=5, trials=4)
        lv = dict(warmup=3, steps=10, trials=2)
        tiny = dict(warmup=10, steps=50, trials=2)
    else:
        small, big, seq_len, batch = SMALL, C.BASE, C.SEQ_LEN, C.BATCH
        gv = dict(steps=4, trials=8)
        lv = dict(warmup=3, steps=8, trials=4)
        tiny = dict(warmup=30, steps=300, trials=4)
    print(
        f"# bench_throughput ({'quick' if args.quick else 'full'}), load "
        f"{env['loadavg_start']}, threads={args.threads}",
        flush=True,
    )

    print("\n2. grown vs fresh", flush=True)
    g = grown_vs_fresh(small, big, seq_len=seq_len, batch=batch, **gv)
    print("\n3. Lightning vs plain loop", flush=True)
    model_cfg = C.model_config(big, seq_len)
    lp = lightning_vs_plain(model_cfg, seq_len=seq_len, batch=batch, label="model", **lv)
    tiny_cfg = C.model_config(TINY, C.QUICK_SEQ_LEN)
    lt = lightning_vs_plain(
        tiny_cfg, seq_len=C.QUICK_SEQ_LEN, batch=C.QUICK_BATCH, label="tiny", **tiny
    )
    # Lightning's fixed per-step overhead (from the tiny model) against the model's step.
    plain_step_ms = lp["ms_per_step_median"]["plain"]
    predicted = plain_step_ms / (plain_step_ms + lt["overhead_ms_per_step"])
    profile_text = (
        profile_lightning(tiny_cfg, seq_len=C.QUICK_SEQ_LEN, batch=C.QUICK_BATCH, steps=200)
        if args.profile
        else None
    )
    env["loadavg_end"] = C.loadavg()

    print("\n## 2. Grown model vs fresh model of the same config (target: >= 0.98)\n")
    r = g["ratio"]
    print(
        C.table(
            [
                "config",
                "params",
                "grown tok/s (median)",
                "fresh tok/s (median)",
                "ratio median [min, max]",
                "structure identical",
                "target",
            ],
            [
                [
                    f"{small} -> {big}",
                    f"{g['params'] / 1e6:.2f}M",
                    g["tokens_per_s"]["grown"]["median"],
                    g["tokens_per_s"]["fresh"]["median"],
                    f"{r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}] (n={r['n']})",
                    str(g["structure"]["ok"]),
                    C.pass_miss(r["median"] >= 0.98),
                ]
            ],
        )
    )
    if not g["structure"]["ok"]:
        print("structure problems:", *g["structure"]["problems"], sep="\n  ")
    same = g["weights_bitwise_equal_after_training"]
    print(f"\nweights bitwise equal after the timed steps: {same}")

    print("\n## 3. Lightning Trainer.fit + LMModule vs plain loop (target: >= 0.90)\n")
    rows = []
    for name, res in (("~6.5M model", lp), ("tiny model (overhead probe)", lt)):
        rr = res["ratio"]
        rows.append(
            [
                name,
                res["tokens_per_s"]["lightning"]["median"],
                res["tokens_per_s"]["plain"]["median"],
                f"{rr['median']:.3f} [{rr['min']:.3f}, {rr['max']:.3f}] (n={rr['n']})",
                res["ms_per_step_median"]["lightning"],
                res["ms_per_step_median"]["plain"],
                res["overhead_ms_per_step"],
                C.pass_miss(rr["median"] >= 0.90) if res is lp else "-",
            ]
        )
    print(
        C.table(
            [
                "model",
                "Lightning tok/s",
                "plain tok/s",
                "ratio median [min, max]",
                "Lightning ms/step",
                "plain ms/step",
                "overhead ms/step",
                "target",
            ],
            rows,
        )
    )
    print(
        f"\nratio predicted from the tiny model's fixed overhead "
        f"({lt['overhead_ms_per_step']:.2f} ms/step) at the model's plain step "
        f"({plain_step_ms:.0f} ms): {predicted:.4f}"
    )
    if profile_text:
        print("\n### cProfile of a tiny Lightning run (200 steps), by own time\n")
        print(profile_text)

    payload = {
        "benchmark": "bench_throughput",
        "mode": "quick" if args.quick else "full",
        "environment": env,
        "target_2": {"min_ratio": 0.98, **g},
        "target_3": {
            "min_ratio": 0.90,
            "model": lp,
            "tiny": lt,
            "predicted_ratio_from_tiny_overhead": predicted,
        },
    }
    path = C.write_json("bench_throughput_quick" if args.quick else "bench_throughput", payload)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
