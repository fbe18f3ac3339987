"""Cost of one growth event, and peak memory at growth against steady training.

Targets (issue 5, part 3):

1. One growth event (probe, expansion, optimizer surgery, probe) costs at most 3 median
   training steps, for a model of about 10M parameters on CPU. Measured inside a real
   ``trainer.fit`` (``LMModule`` + ``GrowthCallback``) for each of the six expansions alone
   and for all six in one stage, then broken down outside Lightning.
4. Peak RSS during the growth event against the peak RSS of steady training steps, with
   the analytical extra memory of growth.

Usage: ``python benchmarks/bench_growth.py [--quick] [--threads 1]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import lightning as L
import torch

import progrow.surgery as surgery_module
from progrow import GrowthCallback, LMModule, Transformer, TransformerConfig
from progrow.expand import grow, grow_step
from progrow.loss import lm_loss
from progrow.optim import OptimConfig, build_adamw
from progrow.optimizer_layout import param_names
from progrow.surgery import update_optimizer
from progrow.training import LMDataModule

KINDS = ("d_mlp", "n_heads", "d_v", "d_qk", "d_model", "n_layers", "all six")


class StepTimer(L.Callback):
    """Wall time of every training step (batch start -> batch end), keyed by global step.

    Put it FIRST in the callback list: its batch start then precedes the growth callback's,
    so the growth step's duration includes the growth (and is excluded from the medians).
    """

    def __init__(self) -> None:
        self.start: dict[int, float] = {}
        self.end: dict[int, float] = {}
        self._t0 = 0.0
        self._step = 0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._step = trainer.global_step
        self._t0 = time.perf_counter()
        self.start[self._step] = self._t0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.end[self._step] = time.perf_counter()

    def durations(self) -> dict[int, float]:
        return {s: self.end[s] - self.start[s] for s in self.end}


def timed_growth(cb: GrowthCallback) -> tuple[list[tuple[float, float]], dict[str, list[float]]]:
    """Wrap ``cb._grow`` to record (start, end) of each whole growth call, and time its
    pieces: the probe forwards, ``grow`` and ``update_optimizer`` as the callback calls them
    (progrow.surgery's globals, which the callback's growth calls, are patched; restore with
    :func:`untime_pieces`)."""
    spans: list[tuple[float, float]] = []
    pieces: dict[str, list[float]] = {"probe": [], "grow": [], "update_optimizer": []}
    original = cb._grow

    def timed(name: str, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            pieces[name].append(time.perf_counter() - t0)
            return out

        return run

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        model = original(*args, **kwargs)  # the grown model: the callback goes on with it
        spans.append((t0, time.perf_counter()))
        return model

    cb._grow = wrapped  # type: ignore[method-assign]
    cb._probe_loss = timed("probe", cb._probe_loss)  # type: ignore[method-assign]
    surgery_module.grow_step = timed("grow", grow_step)
    surgery_module.update_optimizer = timed("update_optimizer", update_optimizer)
    return spans, pieces


def untime_pieces() -> None:
    surgery_module.grow_step = grow_step
    surgery_module.update_optimizer = update_optimizer


def stage_sizes(kind: str, targets: dict[str, int]) -> dict[str, Any]:
    return dict(targets) if kind == "all six" else {kind: targets[kind]}


def fit_with_growth(
    kind: str,
    base: dict[str, int],
    targets: dict[str, int],
    *,
    seq_len: int,
    batch: int,
    grow_step: int,
    post_steps: int,
    rss: C.RSSSampler | None = None,
) -> dict[str, Any]:
    torch.manual_seed(0)
    steps = grow_step + post_steps
    module = LMModule(
        C.model_config(base, seq_len),
        OptimConfig(lr=1e-3, warmup_steps=2, max_steps=steps),
    )
    data = LMDataModule(
        source="stdlib",
        seq_len=seq_len,
        batch_size=batch,
        val_batches=1,
        max_bytes=C.MAX_BYTES,
        cache_dir=C.cache_dir(),
    )
    growth = GrowthCallback(
        [{"step": grow_step, **stage_sizes(kind, targets)}],
        seed=0,
        loss_tolerance=1e-3,
        on_loss_jump="warn",
    )
    spans, pieces = timed_growth(growth)
    timer = StepTimer()
    trainer = C.quiet_trainer(steps, [timer, growth])
    params_before = module.model.num_params()
    try:
        trainer.fit(module, datamodule=data)
    finally:
        untime_pieces()
    assert len(spans) == 1 and len(growth.events) == 1, (spans, growth.events)
    event = growth.events[0]
    d = timer.durations()
    # Step 0 is warm-up (first allocations); the growth step includes the growth.
    pre = [d[s] for s in range(1, grow_step)]
    post_first = d[grow_step + 1] if grow_step + 1 in d else float("nan")
    post = [d[s] for s in range(grow_step + 2, steps)]
    total = spans[0][1] - spans[0][0]
    out: dict[str, Any] = {
        "kind": kind,
        "sizes": stage_sizes(kind, targets),
        "params_before": params_before,
        "params_after": event.params,
        "step_pre": C.spread(pre),
        "step_post": C.spread(post),
        "first_step_after_growth_s": post_first,
        "growth_step_s": d[grow_step],
        "grow_total_s": total,
        # growth/seconds as the callback logs it (it includes the first probe forward).
        "event_seconds_logged": event.seconds,
        "probes_s": sum(pieces["probe"]),
        "grow_s": sum(pieces["grow"]),
        "update_optimizer_s": sum(pieces["update_optimizer"]),
        "other_s": total - sum(sum(v) for v in pieces.values()),
        "loss_delta": event.loss_delta,
        "cost_in_pre_steps": total / C.median(pre),
        "cost_in_post_steps": total / C.median(post) if post else float("nan"),
    }
    if rss is not None:
        g0, g1 = spans[0]
        pre_windows = [(timer.start[s], timer.end[s]) for s in range(1, grow_step)]
        post_windows = [(timer.start[s], timer.end[s]) for s in range(grow_step + 1, steps)]
        # The growth step's own training part: from the end of _grow to the batch end.
        out["rss"] = {
            "steady_pre_peak": max(rss.peak(a, b) for a, b in pre_windows),
            "at_growth_start": rss.at(g0),
            "growth_peak": rss.peak(g0, g1),
            "growth_step_train_peak": rss.peak(g1, timer.end[grow_step]),
            "steady_post_peak": max(rss.peak(a, b) for a, b in post_windows),
            "samples": len(rss.samples),
        }
    return out


# -- breakdown outside Lightning ----------------------------------------------------------


def _stepped_adamw(model: Transformer) -> torch.optim.AdamW:
    """AdamW with state for every parameter (one step on random gradients: cheap)."""
    opt = build_adamw(model, OptimConfig(lr=1e-3))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def breakdown(
    kind: str,
    base: dict[str, int],
    targets: dict[str, int],
    *,
    seq_len: int,
    batch: int,
    repeats: int,
) -> dict[str, Any]:
    probe = torch.randint(
        0, C.VOCAB, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0)
    )
    times: dict[str, list[float]] = {"probe_forward": [], "grow": [], "update_optimizer": []}
    for r in range(repeats):
        torch.manual_seed(r)
        model = Transformer(TransformerConfig(**C.model_config(base, seq_len)))
        opt = _stepped_adamw(model)
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            float(lm_loss(model, probe))
        t1 = time.perf_counter()
        names = param_names(model)
        record = grow(
            model, **stage_sizes(kind, targets), generator=torch.Generator().manual_seed(r)
        )
        t2 = time.perf_counter()
        update_optimizer(opt, record, names, model)
        t3 = time.perf_counter()
        times["probe_forward"].append(t1 - t0)
        times["grow"].append(t2 - t1)
        times["update_optimizer"].append(t3 - t2)
        del model, opt, record
    return {"kind": kind, **{k: C.spread(v) for k, v in times.items()}}


def analytic_growth_bytes(
    base: dict[str, int], targets: dict[str, int], seq_len: int
) -> dict[str, int]:
    p0 = TransformerConfig(**C.model_config(base, seq_len)).num_params()
    p1 = TransformerConfig(**C.model_config(targets, seq_len)).num_params()
    f32 = 4
    return {
        "params_before": p0,
        "params_after": p1,
        # Steady state before growth: params + grads + AdamW exp_avg + exp_avg_sq.
        "steady_model_bytes_before": 4 * p0 * f32,
        # During growth the old params, their grads (Lightning zeroes grads after the next
        # forward) and the old AdamW state are alive until update_optimizer commits, while
        # the new params and new AdamW state are built: extra = new params + 2 new moments.
        "growth_extra_bytes": 3 * p1 * f32,
        "growth_model_bytes_peak": (4 * p0 + 3 * p1) * f32,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, smoke test (< 1 min)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        base, targets, seq_len, batch = (
            C.QUICK_BASE,
            C.QUICK_TARGETS,
            C.QUICK_SEQ_LEN,
            C.QUICK_BATCH,
        )
        grow_step, post_steps, repeats = 4, 3, 2
    else:
        base, targets, seq_len, batch = C.BASE, C.TARGETS, C.SEQ_LEN, C.BATCH
        grow_step, post_steps, repeats = 6, 5, 5
    env = C.environment(args.threads)
    print(
        f"# bench_growth ({'quick' if args.quick else 'full'}), load {env['loadavg_start']}, "
        f"threads={args.threads}",
        flush=True,
    )

    runs = []
    for kind in args.kinds:
        r = fit_with_growth(
            kind,
            base,
            targets,
            seq_len=seq_len,
            batch=batch,
            grow_step=grow_step,
            post_steps=post_steps,
        )
        r["loadavg"] = C.loadavg()
        print(
            f"  fit {kind}: grow {r['grow_total_s']:.3f}s, pre step "
            f"{r['step_pre']['median']:.3f}s -> {r['cost_in_pre_steps']:.2f} steps",
            flush=True,
        )
        runs.append(r)

    parts = []
    for kind in args.kinds:
        parts.append(breakdown(kind, base, targets, seq_len=seq_len, batch=batch, repeats=repeats))

    with C.RSSSampler() as rss:
        mem = fit_with_growth(
            "all six",
            base,
            targets,
            seq_len=seq_len,
            batch=batch,
            grow_step=grow_step,
            post_steps=post_steps,
            rss=rss,
        )
    analytic = analytic_growth_bytes(base, targets, seq_len)
    env["loadavg_end"] = C.loadavg()

    # -- report --------------------------------------------------------------------------
    print("\n## 1. Growth event cost inside trainer.fit (target: <= 3 median steps)\n")
    rows = []
    for r in runs:
        rows.append(
            [
                r["kind"],
                f"{r['params_before'] / 1e6:.2f}M -> {r['params_after'] / 1e6:.2f}M",
                r["step_pre"]["median"],
                r["step_post"]["median"],
                r["grow_total_s"],
                r["probes_s"],
                r["grow_s"],
                r["update_optimizer_s"],
                r["other_s"],
                r["event_seconds_logged"],
                f"{r['cost_in_pre_steps']:.2f}",
                f"{r['cost_in_post_steps']:.2f}",
                r["first_step_after_growth_s"],
                f"{r['loss_delta']:+.1e}",
                C.pass_miss(r["cost_in_pre_steps"] <= 3.0),
            ]
        )
    print(
        C.table(
            [
                "expansion",
                "params",
                "median step before (s)",
                "median step after (s)",
                "growth total (s)",
                "2 probes (s)",
                "grow (s)",
                "surgery (s)",
                "other (s)",
                "logged growth/seconds",
                "cost / step before",
                "cost / step after",
                "1st step after (s)",
                "probe loss delta",
                "<= 3 steps",
            ],
            rows,
        )
    )

    print("\n## 1b. Breakdown outside Lightning (median of repeats, seconds)\n")
    rows = [
        [
            p["kind"],
            p["probe_forward"]["median"],
            p["grow"]["median"],
            p["update_optimizer"]["median"],
            2 * p["probe_forward"]["median"]
            + p["grow"]["median"]
            + p["update_optimizer"]["median"],
        ]
        for p in parts
    ]
    print(
        C.table(
            [
                "expansion",
                "probe forward",
                "grow()",
                "update_optimizer()",
                "2 probes + grow + surgery",
            ],
            rows,
        )
    )

    m = mem["rss"]
    mib = 2**20
    ratio = m["growth_peak"] / m["steady_pre_peak"]
    predicted = m["at_growth_start"] + analytic["growth_extra_bytes"]
    print("\n## 4. Peak RSS: growth event (all six) vs steady training\n")
    print(
        C.table(
            ["quantity", "MiB"],
            [
                ["steady training peak, before growth", m["steady_pre_peak"] / mib],
                ["RSS when growth starts", m["at_growth_start"] / mib],
                ["peak during growth (probe+grow+surgery+probe)", m["growth_peak"] / mib],
                ["predicted growth peak (start + 3 x new params x 4 B)", predicted / mib],
                ["peak of the growth step's training part", m["growth_step_train_peak"] / mib],
                ["steady training peak, after growth", m["steady_post_peak"] / mib],
                [
                    "analytic extra of growth (new params + 2 AdamW moments)",
                    analytic["growth_extra_bytes"] / mib,
                ],
            ],
        )
    )
    print(
        f"\ngrowth peak / steady peak before = {ratio:.3f}; "
        f"growth peak / steady peak after = {m['growth_peak'] / m['steady_post_peak']:.3f}"
    )

    payload = {
        "benchmark": "bench_growth",
        "mode": "quick" if args.quick else "full",
        "environment": env,
        "setup": {
            "base": base,
            "targets": targets,
            "seq_len": seq_len,
            "batch_size": batch,
            "grow_step": grow_step,
            "post_steps": post_steps,
            "breakdown_repeats": repeats,
        },
        "target_1": {"max_cost_in_steps": 3.0, "runs": runs, "breakdown": parts},
        "target_4": {
            "run": mem,
            "analytic": analytic,
            "growth_peak_over_steady_pre": ratio,
            "growth_peak_over_steady_post": m["growth_peak"] / m["steady_post_peak"],
            "predicted_growth_peak": predicted,
        },
    }
    path = C.write_json("bench_growth_quick" if args.quick else "bench_growth", payload)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
