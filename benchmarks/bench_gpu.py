"""Training throughput, MFU and the cost of growth, as one prepared command.

Usage::

    python benchmarks/bench_gpu.py                 # one GPU: fits in ~8 minutes on an H100
    python benchmarks/bench_gpu.py --device cpu    # the small CPU size, about a minute

Rows (in this order, so a time budget cuts the least important ones):

* throughput of a GPT-2-124M-shaped and a ~150M Llama-shaped progrow ``Transformer``,
  eager and ``torch.compile``d, against the same architecture in Hugging Face
  ``transformers`` (``GPT2LMHeadModel`` / ``LlamaForCausalLM`` built from a config with
  ``progrow.hf.to_hf``, so both start from the same weights: their step-0 losses agree);
* a Llama-shaped model grown with :func:`progrow.surgery.grow_with_optimizers` (the
  growth the callback runs, AdamW state carried) from a smaller one to the 150M size,
  against a fresh model of that size in interleaved trials; the cost of the growth event
  in steady steps, eager and compiled; peak memory at growth against steady training.

Every step is forward + backward + AdamW step on one fixed batch of random tokens under
bf16 autocast (fp32 parameters and optimizer state, as Lightning's ``bf16-mixed``);
warmup steps are excluded and on a GPU every timed span is bracketed by
``torch.cuda.synchronize()``. A failing row is reported in the tables (``failed: ...``)
and the others still run; ``--budget-s`` skips rows that would not fit.

Writes ``benchmarks/results/gpu.{json,md}`` (a GPU at the full size) or
``<device>_<size>.{json,md}`` (e.g. ``cpu_small``), or into ``--out``.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import math
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from progrow import Transformer, TransformerConfig
from progrow.flops import standard_train_flops_per_token
from progrow.optim import OptimConfig, build_adamw
from progrow.surgery import grow_with_optimizers
from progrow.training.compiled import fresh_compile, graphs_compiled

#: Dense bf16 peak FLOP/s by a substring of ``torch.cuda.get_device_name()`` (the H200
#: has the H100's tensor cores). Other devices: ``--peak-tflops`` or MFU n/a.
PEAK_BF16_FLOPS: dict[str, float] = {"H100": 989e12, "H200": 989e12}


def shape(
    vocab: int, d_model: int, d_mlp: int, heads: int, d_head: int, layers: int, kv: int = 0
) -> dict[str, Any]:
    """A model's sizes (``d_qk = d_v = d_head``; ``kv``: KV heads under GQA, 0 for none)."""
    sizes = dict(vocab_size=vocab, d_model=d_model, d_mlp=d_mlp, n_heads=heads)
    sizes.update(d_qk=d_head, d_v=d_head, n_layers=layers)
    return {**sizes, "n_kv_heads": kv} if kv else sizes


#: GPT-2 small: 124M parameters (tied embeddings).
GPT2_124M = shape(50257, 768, 3072, heads=12, d_head=64, layers=12)
#: Llama-shaped, 153M parameters: GQA with 3 query heads per KV head, SwiGLU, untied.
LLAMA_150M = shape(32000, 768, 3072, heads=12, d_head=64, layers=12, kv=4)
#: Where the grown model starts (56M): hidden size, MLP, query heads and depth grow.
LLAMA_START = shape(32000, 512, 2048, heads=8, d_head=64, layers=6, kv=4)
NORM_EPS = 1e-5


@dataclass(frozen=True)
class Preset:
    """Model sizes, batch and step counts of one benchmark size."""

    batch: int
    seq_len: int
    gpt2: dict[str, Any]
    llama: dict[str, Any]
    llama_start: dict[str, Any]
    warmup: int
    """Untimed steps before the trials (the first one compiles)."""
    steps: int
    """Steps per timed trial."""
    trials: int
    budget_s: float
    """Default ``--budget-s``."""
    compile_guess_s: float
    """Assumed seconds per compile until one is measured (for the budget)."""


PRESETS: dict[str, Preset] = {
    "full": Preset(
        batch=16, seq_len=1024, gpt2=GPT2_124M, llama=LLAMA_150M, llama_start=LLAMA_START,
        warmup=5, steps=10, trials=5, budget_s=420.0, compile_guess_s=60.0,
    ),
    "small": Preset(
        batch=4, seq_len=128, gpt2=shape(4096, 128, 512, heads=4, d_head=32, layers=2),
        llama=shape(4096, 128, 384, heads=4, d_head=32, layers=2, kv=2),
        llama_start=shape(4096, 64, 256, heads=2, d_head=32, layers=1, kv=2),
        warmup=3, steps=3, trials=5, budget_s=150.0, compile_guess_s=5.0,
    ),
    # For tests: about ten seconds in all with --compile-backend eager.
    "tiny": Preset(
        batch=2, seq_len=16, gpt2=shape(64, 16, 32, heads=2, d_head=8, layers=1),
        llama=shape(64, 16, 24, heads=2, d_head=8, layers=2, kv=1),
        llama_start=shape(64, 8, 16, heads=1, d_head=8, layers=1, kv=1),
        warmup=2, steps=2, trials=2, budget_s=60.0, compile_guess_s=1.0,
    ),
}  # fmt: skip


def gpt2_config(sizes: dict[str, Any], seq_len: int) -> TransformerConfig:
    """GPT-2's blocks as progrow configures them (``progrow.hf.gpt2``): LayerNorm, tanh
    GELU, biases everywhere, learned positions, tied embeddings."""
    return TransformerConfig(
        **sizes, max_seq_len=seq_len, norm="layernorm", activation="gelu_tanh",
        attn_bias=True, mlp_bias=True, tie_embeddings=True, positions="learned",
        norm_eps=NORM_EPS,
    )  # fmt: skip


def llama_config(sizes: dict[str, Any], seq_len: int, final_d_model: int) -> TransformerConfig:
    """Llama's blocks (RMSNorm, SwiGLU, RoPE, GQA, no biases, untied). ``norm_eps`` is set
    so that after growing the hidden size to ``final_d_model`` (which rescales it by
    h / h') it is the fresh model's."""
    return TransformerConfig(
        **sizes, max_seq_len=seq_len, norm="rmsnorm", activation="silu", mlp_gated=True,
        mlp_bias=False, attn_bias=False, positions="rope", tie_embeddings=False,
        norm_eps=NORM_EPS * final_d_model / sizes["d_model"],
    )  # fmt: skip


@dataclass(frozen=True)
class RowSpec:
    """One row: an architecture, an implementation and eager or compiled."""

    arch: str
    """"gpt2" or "llama"."""
    impl: str
    """"progrow", "hf" (Hugging Face) or "grown" (progrow, grown to this size)."""
    compiled: bool

    @property
    def name(self) -> str:
        return f"{self.arch}/{self.impl}/{'compiled' if self.compiled else 'eager'}"

    @property
    def compiles(self) -> int:
        """Compiles the row runs (grown: the start size, the grown size, the fresh model)."""
        return 0 if not self.compiled else 3 if self.impl == "grown" else 1


ROWS: tuple[RowSpec, ...] = (
    RowSpec("gpt2", "progrow", False),
    RowSpec("gpt2", "hf", False),
    RowSpec("llama", "progrow", False),
    RowSpec("llama", "hf", False),
    RowSpec("llama", "grown", False),
    # Before any other compile of the 150M Llama, so that the growth's recompile is not
    # served from caches filled by another row.
    RowSpec("llama", "grown", True),
    RowSpec("gpt2", "progrow", True),
    RowSpec("llama", "progrow", True),
    RowSpec("gpt2", "hf", True),
    RowSpec("llama", "hf", True),
)


@dataclass
class Bench:
    """What every row shares: device, sizes, precision, compile options, budget."""

    device: torch.device
    preset: Preset
    bf16: bool
    compile_options: dict[str, Any]
    peak_flops: float | None
    seed: int
    budget_s: float
    started: float
    compile_guess_s: float

    def config(self, arch: str) -> TransformerConfig:
        p = self.preset
        if arch == "gpt2":
            return gpt2_config(p.gpt2, p.seq_len)
        return llama_config(p.llama, p.seq_len, p.llama["d_model"])

    def start_config(self) -> TransformerConfig:
        p = self.preset
        return llama_config(p.llama_start, p.seq_len, p.llama["d_model"])

    def batch(self, vocab_size: int) -> Tensor:
        """One fixed ``(B, T + 1)`` batch of random tokens (the same for every row of a
        vocabulary), so progrow and Hugging Face see the same data."""
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.preset.batch, self.preset.seq_len + 1)
        return torch.randint(0, vocab_size, shape, generator=gen).to(self.device)

    @property
    def tokens_per_step(self) -> int:
        return self.preset.batch * self.preset.seq_len

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)


# --- one training step and its timing -------------------------------------------------

Forward = Callable[[Tensor], Tensor]
Step = Callable[[], Tensor]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(forward: Forward, opt: torch.optim.Optimizer, batch: Tensor, bench: Bench) -> Step:
    """Forward + loss under bf16 autocast (as Lightning's ``bf16-mixed`` runs
    ``training_step``), backward, AdamW step, gradients set to None."""
    inputs, targets = batch[:, :-1], batch[:, 1:].reshape(-1)

    def step() -> Tensor:
        with torch.autocast(bench.device.type, dtype=torch.bfloat16, enabled=bench.bf16):
            logits = forward(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def timed(step: Callable[[], object], n: int, device: torch.device) -> float:
    """Wall seconds of ``n`` steps, synchronized at both ends."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return time.perf_counter() - t0


def warm_up(step: Step, bench: Bench) -> dict[str, Any]:
    """The untimed warmup steps; the first one's wall time (compile included), loss and
    the graphs dynamo compiled during it."""
    graphs = graphs_compiled()
    sync(bench.device)
    t0 = time.perf_counter()
    loss = float(step())  # synchronizes
    first = {"first_step_s": time.perf_counter() - t0, "loss_step0": loss}
    first["graphs"] = graphs_compiled() - graphs
    for _ in range(bench.preset.warmup - 1):
        step()
    return first


def trial_step_s(step: Step, bench: Bench) -> float:
    """Seconds per step over one trial of ``preset.steps`` steps."""
    return timed(step, bench.preset.steps, bench.device) / bench.preset.steps


def throughput(step_s: list[float], config: TransformerConfig, bench: Bench) -> dict[str, Any]:
    """Tokens/s and MFU (``6N + 12 L H Q T`` FLOPs per token) from the median step time."""
    median = C.median(step_s)
    tokens_per_s = bench.tokens_per_step / median
    flops = standard_train_flops_per_token(config, bench.preset.seq_len)
    mfu = tokens_per_s * flops / bench.peak_flops if bench.peak_flops else None
    return {
        "step_ms": 1e3 * median,
        "step_ms_trials": [1e3 * s for s in step_s],
        "tokens_per_s": tokens_per_s,
        "train_flops_per_token": flops,
        "mfu": mfu,
    }


# --- models ---------------------------------------------------------------------------


def progrow_model(config: TransformerConfig, bench: Bench) -> Transformer:
    torch.manual_seed(bench.seed)
    with torch.device(bench.device):
        return Transformer(config)


def optimizer(module: nn.Module, bench: Bench) -> torch.optim.AdamW:
    """progrow's AdamW (decay / no-decay groups), fused on a GPU, for every model."""
    fused = True if bench.device.type == "cuda" else None
    return build_adamw(module, OptimConfig(lr=3e-4, fused=fused))


def hf_model(config: TransformerConfig, bench: Bench) -> nn.Module:
    """The Hugging Face model of ``config``'s family, with the weights progrow draws for
    it (built from a config, nothing downloaded), in training mode."""
    from progrow.hf import to_hf

    return to_hf(progrow_model(config, bench)).train()


def hf_forward(model: nn.Module) -> Forward:
    return lambda tokens: model(input_ids=tokens, use_cache=False).logits


def maybe_compile(model: nn.Module, spec: RowSpec, bench: Bench) -> None:
    """Compile in place (``nn.Module.compile``, as ``LMModule`` does), after dropping the
    graphs of earlier rows."""
    if spec.compiled:
        fresh_compile()
        model.compile(**bench.compile_options)


def release() -> None:
    """Free what the last row left (called after its models went out of scope)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- peak memory ----------------------------------------------------------------------


class PeakMemory:
    """Peak memory of named time windows.

    GPU: ``torch.cuda.max_memory_allocated`` (reset at each window's start), MiB held by
    tensors. CPU: the process's RSS sampled every 2 ms (``/proc/self/statm``; torch's CPU
    allocator keeps no statistics), MiB above the RSS when the row started.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.kind = (
            "torch.cuda.max_memory_allocated (MiB)"
            if self.cuda
            else "peak RSS above the row's start, sampled every 2 ms (MiB)"
        )
        self.peaks: dict[str, float] = {}
        self._sampler = None if self.cuda else C.RSSSampler(period=0.002)
        self._base = 0

    def __enter__(self) -> PeakMemory:
        if self._sampler is not None:
            self._sampler.__enter__()
            self._base = self._sampler.rss()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._sampler is not None:
            self._sampler.__exit__(*exc)

    @contextmanager
    def window(self, name: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
            self.peaks[name] = torch.cuda.max_memory_allocated() / 2**20
        else:
            assert self._sampler is not None
            time.sleep(0.005)  # let the sampler see the window's end
            peak = self._sampler.peak(t0, time.perf_counter())
            self.peaks[name] = (peak - self._base) / 2**20


# --- rows -----------------------------------------------------------------------------


def run_throughput(spec: RowSpec, bench: Bench) -> dict[str, Any]:
    """One model, eager or compiled: warmup, then the timed trials."""
    config = bench.config(spec.arch)
    if spec.impl == "hf":
        model = hf_model(config, bench)
        forward = hf_forward(model)
    else:
        model = progrow_model(config, bench)
        forward = model
    opt = optimizer(model, bench)
    maybe_compile(model, spec, bench)
    step = make_step(forward, opt, bench.batch(config.vocab_size), bench)
    row = {"params": sum(p.numel() for p in model.parameters()), **warm_up(step, bench)}
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_s = [trial_step_s(step, bench) for _ in range(bench.preset.trials)]
    row.update(throughput(step_s, config, bench))
    if bench.device.type == "cuda":  # on the CPU: no allocator statistics to read
        row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    row["loss_end"] = float(step())
    return row


def grow_to(model: Transformer, opt: torch.optim.Optimizer, final: TransformerConfig) -> None:
    """Grow ``model`` to ``final``'s sizes and carry its AdamW (what ``GrowthCallback``
    does, without the probe forwards); a compiled model then compiles afresh, once."""
    start = model.config.sizes()
    sizes = {k: v for k, v in final.sizes().items() if v != start[k]}
    grow_with_optimizers(model, model, [opt], sizes)
    if getattr(model, "_compiled_call_impl", None) is not None:
        fresh_compile()


def paired_trials(a: Step, b: Step, bench: Bench) -> tuple[list[float], list[float]]:
    """Seconds per step of ``a`` and ``b`` over interleaved trials (a, b, then b, a, ...),
    so that machine noise hits both alike."""
    sa: list[float] = []
    sb: list[float] = []
    for i in range(bench.preset.trials):
        order = ((a, sa), (b, sb)) if i % 2 == 0 else ((b, sb), (a, sa))
        for step, out in order:
            out.append(trial_step_s(step, bench))
    return sa, sb


def run_growth(spec: RowSpec, bench: Bench) -> dict[str, Any]:
    """Train the start model, grow it to the 150M size (timing the growth and the next
    step, recompile included), then time it against a fresh model of that size."""
    final = bench.config("llama")
    batch = bench.batch(final.vocab_size)
    memory = PeakMemory(bench.device)
    with memory:
        model = progrow_model(bench.start_config(), bench)
        opt = optimizer(model, bench)
        maybe_compile(model, spec, bench)
        step = make_step(model, opt, batch, bench)
        row: dict[str, Any] = {"params_start": model.num_params(), **warm_up(step, bench)}
        with memory.window("steady_before"):
            before = [trial_step_s(step, bench) for _ in range(bench.preset.trials)]
        with memory.window("growth"):
            row["growth_s"] = timed(lambda: grow_to(model, opt, final), 1, bench.device)
        graphs = graphs_compiled()
        with memory.window("first_step_after"):
            row["first_step_after_s"] = timed(step, 1, bench.device)
        row["graphs_after"] = graphs_compiled() - graphs
        with memory.window("steady_after"):
            for _ in range(bench.preset.warmup - 1):
                step()
            trial_step_s(step, bench)
    row.update(compare_fresh(step, model, final, batch, spec, bench))
    row.update(growth_summary(row, before, memory))
    return row


def compare_fresh(
    grown_step: Step,
    grown: Transformer,
    final: TransformerConfig,
    batch: Tensor,
    spec: RowSpec,
    bench: Bench,
) -> dict[str, Any]:
    """The grown model against a fresh one of its size, in interleaved trials."""
    fresh = progrow_model(final, bench)
    opt = optimizer(fresh, bench)
    if spec.compiled:
        fresh.compile(**bench.compile_options)  # beside the grown model's graphs
    fresh_step = make_step(fresh, opt, batch, bench)
    warm_up(fresh_step, bench)
    grown_s, fresh_s = paired_trials(grown_step, fresh_step, bench)
    ratios = [f / g for g, f in zip(grown_s, fresh_s, strict=True)]  # grown tok/s / fresh
    return {
        "params": grown.num_params(),
        "same_sizes_as_fresh": grown.config.sizes() == fresh.config.sizes()
        and grown.num_params() == fresh.num_params(),
        **throughput(grown_s, final, bench),
        "fresh": throughput(fresh_s, final, bench),
        "grown_over_fresh": C.spread(ratios),
        "loss_end": float(grown_step()),
    }


def growth_summary(row: dict[str, Any], before: list[float], memory: PeakMemory) -> dict[str, Any]:
    """The growth event in steady steps of the grown model, and the memory peaks."""
    steady_s = row["step_ms"] / 1e3
    return {
        "steady_step_before_ms": 1e3 * C.median(before),
        "cost_steps": (row["growth_s"] + row["first_step_after_s"]) / steady_s,
        "memory_kind": memory.kind,
        "memory_mib": dict(memory.peaks),
        "growth_over_steady_before": _ratio(memory.peaks["growth"], memory.peaks["steady_before"]),
    }


def _ratio(a: float, b: float) -> float | None:
    """``a / b``, or ``None`` where ``b`` is not positive: on CPU a window's peak is RSS
    above the row's start, which stays 0 when the allocator reuses memory the process
    already holds (a benchmark run inside a longer process, such as the test suite)."""
    return a / b if b > 0 else None


def run_row(spec: RowSpec, bench: Bench) -> dict[str, Any]:
    """A row's result; a failure or a skip is recorded in it, never raised."""
    row: dict[str, Any] = {"name": spec.name, **asdict(spec)}
    need = 5.0 + spec.compiles * bench.compile_guess_s
    if bench.left_s() < need:
        row["status"] = f"skipped: time budget ({bench.left_s():.0f} s left, needs ~{need:.0f} s)"
        return row
    t0 = time.perf_counter()
    try:
        fn = run_growth if spec.impl == "grown" else run_throughput
        row.update(fn(spec, bench))
        row["status"] = "ok"
    except Exception as err:
        first_line = (str(err).splitlines() or [""])[0][:200]
        row["status"] = f"failed: {type(err).__name__}: {first_line}"
        row["traceback"] = traceback.format_exc()
    finally:
        release()
    row["row_s"] = time.perf_counter() - t0
    if spec.compiled and "first_step_s" in row:  # what a compile costs here, for the budget
        bench.compile_guess_s = max(bench.compile_guess_s, row["first_step_s"])
    print(f"{spec.name}: {row['status']} ({row['row_s']:.1f} s)", flush=True)
    return row


# --- output ---------------------------------------------------------------------------


def fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.0f}" if abs(value) >= 1000 else format(value, spec)
    return str(value)


def millions(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.3g}M"


def throughput_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "model", "implementation", "mode", "params", "tokens/s", "MFU", "step (ms)",
        "1st step (s)", "graphs", "peak memory (MiB)", "loss at step 0", "status",
    ]  # fmt: skip
    lines = []
    for r in rows:
        if r["impl"] == "grown":
            continue
        mfu = "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        lines.append([
            r["arch"], "progrow" if r["impl"] == "progrow" else "HF transformers",
            "compiled" if r["compiled"] else "eager", millions(r.get("params")),
            fmt(r.get("tokens_per_s")), mfu if "tokens_per_s" in r else "", fmt(r.get("step_ms")),
            fmt(r.get("first_step_s")), fmt(r.get("graphs")) if r["compiled"] else "",
            fmt(r.get("peak_mib"), ".0f"),
            fmt(r.get("loss_step0"), ".5f"), r["status"],
        ])  # fmt: skip
    return C.table(headers, lines)


def growth_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "mode", "params", "tokens/s grown", "tokens/s fresh", "grown / fresh median [min, max]",
        "growth (s)", "1st step after (s)", "cost (steady steps)", "step before -> after (ms)",
        "peak memory steady / growth / 1st step after / steady after", "status",
    ]  # fmt: skip
    lines = []
    for r in rows:
        if r["impl"] != "grown":
            continue
        if r["status"] != "ok":
            lines.append(["compiled" if r["compiled"] else "eager", *[""] * 9, r["status"]])
            continue
        ratio, mem = r["grown_over_fresh"], r["memory_mib"]
        lines.append([
            "compiled" if r["compiled"] else "eager",
            f"{millions(r['params_start'])} -> {millions(r['params'])}",
            fmt(r["tokens_per_s"]), fmt(r["fresh"]["tokens_per_s"]),
            f"{ratio['median']:.3f} [{ratio['min']:.3f}, {ratio['max']:.3f}]",
            fmt(r["growth_s"]), fmt(r["first_step_after_s"]), fmt(r["cost_steps"]),
            f"{fmt(r['steady_step_before_ms'])} -> {fmt(r['step_ms'])}",
            " / ".join(f"{mem[k]:.0f}" for k in ("steady_before", "growth", "first_step_after",
                                                  "steady_after")),
            r["status"],
        ])  # fmt: skip
    return C.table(headers, lines)


def markdown(payload: dict[str, Any]) -> str:
    env, s = payload["environment"], payload["settings"]
    memory = next((r["memory_kind"] for r in payload["rows"] if "memory_kind" in r), "n/a")
    return "\n".join([
        f"# bench_gpu: {env['device_name']}, size {s['size']}",
        "",
        f"`{payload['command']}` ({env['date']}, torch {env['torch']}, transformers "
        f"{env['transformers']}; batch {s['batch']} x {s['seq_len']} tokens, "
        f"{'bf16 autocast' if s['bf16'] else 'fp32'}, compile {s['compile_options']}, "
        f"{s['warmup']} warmup steps, {s['trials']} trials of {s['steps']} steps; "
        f"{peak_text(s['peak_flops'])}; load average {env['loadavg_start']})",
        "",
        "## Throughput",
        "",
        throughput_table(payload["rows"]),
        "",
        "## Growth (Llama-shaped, grown to the size above vs a fresh model, interleaved)",
        "",
        f"Peak memory: {memory}.",
        "",
        growth_table(payload["rows"]),
        "",
    ])  # fmt: skip


def peak_text(peak: float | None) -> str:
    if peak is None:
        return "MFU n/a (no bf16 peak known for this device)"
    return f"MFU against a bf16 dense peak of {peak / 1e12:.0f} TFLOP/s"


def output_name(device: torch.device, size: str) -> str:
    if device.type == "cuda":
        return "gpu" if size == "full" else f"gpu_{size}"
    return f"{device.type}_{size}"


def write(payload: dict[str, Any], out: Path, name: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"{name}.json", out / f"{name}.md"
    js.write_text(json.dumps(payload, indent=2) + "\n")
    md.write_text(markdown(payload))
    return js, md


# --- command line ---------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument(
        "--size", choices=list(PRESETS), help="default: full on a GPU, small on the CPU"
    )
    parser.add_argument("--small", action="store_true", help="same as --size small")
    parser.add_argument("--budget-s", type=float, help="skip rows past this total time")
    parser.add_argument("--rows", nargs="*", help="only rows matching these globs")
    parser.add_argument("--compile-backend", help="default: inductor (GPU), aot_eager (CPU)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--peak-tflops", type=float, help="bf16 peak for MFU on other GPUs")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs only)")
    parser.add_argument("--out", type=Path, default=C.RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep-compile-cache",
        action="store_true",
        help="use the usual inductor/triton caches (default: a fresh one, cold compiles)",
    )
    return parser.parse_args(argv)


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def peak_flops(device: torch.device, tflops: float | None) -> float | None:
    if tflops is not None:
        return tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    import transformers

    env = C.environment(threads)
    env["transformers"] = transformers.__version__
    env["device_name"] = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else env["machine"]
    )
    return env


def bench_from_args(args: argparse.Namespace, device: torch.device, size: str) -> Bench:
    preset = PRESETS[size]
    backend = args.compile_backend or ("inductor" if device.type == "cuda" else "aot_eager")
    return Bench(
        device=device,
        preset=preset,
        bf16=args.precision == "bf16",
        compile_options={"backend": backend},
        peak_flops=peak_flops(device, args.peak_tflops),
        seed=args.seed,
        budget_s=args.budget_s if args.budget_s is not None else preset.budget_s,
        started=time.perf_counter(),
        compile_guess_s=preset.compile_guess_s,
    )


def selected(patterns: list[str] | None) -> list[RowSpec]:
    if not patterns:
        return list(ROWS)
    return [r for r in ROWS if any(fnmatch.fnmatch(r.name, p) for p in patterns)]


@contextmanager
def cold_compile_cache(enabled: bool) -> Iterator[None]:
    """Cold compiles, as on a first run: inductor's and triton's caches in a new folder,
    removed afterwards (and the environment put back)."""
    if not enabled:
        yield
        return
    names = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
    saved = {name: os.environ.get(name) for name in names}
    with tempfile.TemporaryDirectory(prefix="progrow-bench-inductor-") as folder:
        os.environ[names[0]] = folder
        os.environ[names[1]] = os.path.join(folder, "triton")
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the rows and write the JSON and markdown; returns the JSON's content."""
    args = parse_args(argv)
    device = pick_device(args.device)
    size = "small" if args.small else args.size or ("full" if device.type == "cuda" else "small")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    bench = bench_from_args(args, device, size)
    argv_text = sys.argv[1:] if argv is None else argv
    payload: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/bench_gpu.py", *argv_text]),
        "environment": environment(device, torch.get_num_threads()),
        "settings": {
            "size": size,
            **asdict(bench.preset),
            "bf16": bench.bf16,
            "compile_options": bench.compile_options,
            "peak_flops": bench.peak_flops,
            "device": str(device),
        },
        "rows": [],
    }
    with cold_compile_cache(not args.keep_compile_cache):
        for spec in selected(args.rows):
            payload["rows"].append(run_row(spec, bench))
    payload["total_s"] = time.perf_counter() - bench.started
    js, md = write(payload, args.out, output_name(device, size))
    print(markdown(payload))
    print(f"wrote {js} and {md}")
    return payload


if __name__ == "__main__":
    result = main()
    sys.exit(1 if any(r["status"].startswith("failed") for r in result["rows"]) else 0)
