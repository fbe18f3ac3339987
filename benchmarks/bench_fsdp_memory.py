"""Peak per-rank memory and time of a growth event under FSDP2 against DDP (CPU, 2 ranks).

The same ~19M-parameter model grows to ~34M (``d_mlp`` 2048 -> 3072 and 6 -> 8 layers)
inside ``trainer.fit`` on 2 gloo processes, once with ``GrowableModelParallelStrategy``
(FSDP2: each block and the model sharded) and once with DDP. Each rank samples its RSS
every millisecond; reported per rank, above the RSS before the model was built:

* steady: the peak over training steps 1..G-1 (step 0 is warm-up),
* growth: the peak during the growth event (gather, grow, re-shard / re-wrap, probes),
* after: the peak over the steps after the growth step (the grown model's steady state).

Large allocations are mmap'ed (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the RSS
at once and the samples follow live memory. Goal: growth peak <= 1.5x steady.

    python benchmarks/bench_fsdp_memory.py            # ~5 min on 2 busy cores
    python benchmarks/bench_fsdp_memory.py --quick    # tiny model, a smoke test (~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import _common as C
import lightning as L
import torch

GROW_STEP = 4
MAX_STEPS = GROW_STEP + 3
BASE = dict(d_model=512, d_mlp=2048, n_heads=8, d_qk=64, d_v=64, n_layers=6)
STAGE = {"step": GROW_STEP, "d_mlp": 3072, "n_layers": 8}
QUICK_BASE = dict(d_model=32, d_mlp=64, n_heads=2, d_qk=8, d_v=8, n_layers=2)
QUICK_STAGE = {"step": GROW_STEP, "d_mlp": 96, "n_layers": 3}
BATCH, SEQ_LEN = 4, 128
TIMEOUT_S = 900


class Marks(L.Callback):
    """Timestamps of every step; placed before and after GrowthCallback, so the pair
    brackets the growth event."""

    def __init__(self, times: dict[str, float], role: str) -> None:
        self.times, self.role = times, role

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        key = "growth_start" if self.role == "before" else "growth_end"
        if trainer.global_step == GROW_STEP and key not in self.times:
            self.times[key] = time.perf_counter()
        if self.role == "after":
            self.times[f"start{trainer.global_step}"] = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.role == "after":
            self.times[f"end{trainer.global_step - 1}"] = time.perf_counter()


def worker(strategy_name: str, out: Path, quick: bool) -> None:
    from progrow import GrowthCallback, LMModule
    from progrow.training import GrowableModelParallelStrategy, LMDataModule

    torch.set_num_threads(1)
    seq_len = 32 if quick else SEQ_LEN
    data = LMDataModule(source="stdlib", seq_len=seq_len, batch_size=BATCH,
                        max_bytes=C.MAX_BYTES, cache_dir=C.cache_dir())  # fmt: skip
    data.prepare_data()
    strategy: Any
    if strategy_name == "fsdp":
        strategy = GrowableModelParallelStrategy(
            data_parallel_size=2, tensor_parallel_size=1, timeout=timedelta(seconds=300)
        )
    else:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=300))
    times: dict[str, float] = {}
    stage = QUICK_STAGE if quick else STAGE
    growth = GrowthCallback([stage], seed=0, on_loss_jump="warn")
    trainer = L.Trainer(max_steps=MAX_STEPS, accelerator="cpu", devices=2, strategy=strategy,
                        callbacks=[Marks(times, "before"), growth, Marks(times, "after")],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)  # fmt: skip
    with C.RSSSampler() as rss:
        base_rss = rss.rss()
        torch.manual_seed(0)
        sizes = QUICK_BASE if quick else BASE
        module = LMModule(C.model_config(sizes, seq_len), {"max_steps": MAX_STEPS})
        params_start = module.model.num_params()
        trainer.fit(module, datamodule=data)
    steady = [rss.peak(times[f"start{s}"], times[f"end{s}"]) for s in range(1, GROW_STEP)]
    after = [
        rss.peak(times[f"start{s}"], times[f"end{s}"]) for s in range(GROW_STEP + 1, MAX_STEPS)
    ]
    result = {
        "strategy": strategy_name,
        "rank": trainer.global_rank,
        "params_start": params_start,
        "params_grown": module.model.num_params(),
        "base_rss": base_rss,
        "steady_peak": max(steady) - base_rss,
        "growth_peak": rss.peak(times["growth_start"], times["growth_end"]) - base_rss,
        "after_peak": max(after) - base_rss,
        "growth_event_s": growth.events[0].seconds,
        "growth_with_probes_s": times["growth_end"] - times["growth_start"],
        "step_s": C.median([times[f"end{s}"] - times[f"start{s}"] for s in range(1, GROW_STEP)]),
        "loss_delta": growth.events[0].loss_delta,
    }
    (out / f"{strategy_name}_rank{trainer.global_rank}.json").write_text(json.dumps(result))


def launch(strategy: str, out: Path, quick: bool) -> None:
    """Run the worker on 2 processes; a hang kills the whole process group."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "MALLOC_MMAP_THRESHOLD_": "65536"}  # fmt: skip
    argv = [sys.executable, __file__, "--worker", strategy, "--out", str(out)]
    proc = subprocess.Popen([*argv, *(["--quick"] if quick else [])], env=env,
                            start_new_session=True)  # fmt: skip
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise SystemExit(f"{strategy} run did not finish in {TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise SystemExit(f"{strategy} run failed with exit code {proc.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=("fsdp", "ddp"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.out, args.quick)
        return
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"progrow-bench-fsdp-{os.getpid()}"
    out.mkdir(parents=True)
    env = C.environment(1)
    for strategy in ("fsdp", "ddp"):
        launch(strategy, out, args.quick)
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*_rank*.json"))]
    mib = 2**20
    rows = [[r["strategy"], r["rank"], r["steady_peak"] / mib, r["growth_peak"] / mib,
             r["growth_peak"] / r["steady_peak"], r["after_peak"] / mib, r["growth_event_s"],
             r["step_s"], C.pass_miss(r["growth_peak"] <= 1.5 * r["steady_peak"])]
            for r in runs]  # fmt: skip
    seq_len = 32 if args.quick else SEQ_LEN
    print(f"\nparams {runs[0]['params_start']:,} -> {runs[0]['params_grown']:,}, 2 ranks, "
          f"batch {BATCH} x {seq_len} per rank; MiB above pre-model RSS\n")  # fmt: skip
    print(C.table(["strategy", "rank", "steady peak", "growth peak", "growth/steady",
                   "after-growth peak", "growth event s", "step s", "<= 1.5x"], rows))  # fmt: skip
    env["loadavg_end"] = C.loadavg()
    path = C.write_json("bench_fsdp_memory" + ("_quick" if args.quick else ""),
                        {"environment": env, "runs": runs})  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
