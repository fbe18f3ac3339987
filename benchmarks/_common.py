"""Shared pieces of the benchmarks: configs, data, timing statistics, RSS sampling, output.

Not a test helper: the benchmark scripts put this folder on ``sys.path`` (it is their own
folder) and import it as ``_common``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import statistics
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")
os.environ.setdefault("WANDB_MODE", "disabled")
for _name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)

RESULTS = Path(__file__).resolve().parent / "results"

SEQ_LEN = 128
BATCH = 8
VOCAB = 256
MAX_BYTES = 2_000_000

#: ~6.5M parameters (a step of batch 8 x 128 tokens takes ~1 s on one busy core).
BASE: dict[str, int] = dict(d_model=256, d_mlp=1024, n_heads=4, d_qk=64, d_v=64, n_layers=8)
#: What each expansion grows to from BASE (the all-six stage lands at ~13M parameters).
TARGETS: dict[str, int] = dict(d_mlp=1280, n_heads=6, d_v=80, d_qk=80, d_model=320, n_layers=10)

#: --quick: a tiny model, so the whole script is a smoke test of the code path.
QUICK_SEQ_LEN = 32
QUICK_BATCH = 4
QUICK_BASE: dict[str, int] = dict(d_model=32, d_mlp=64, n_heads=2, d_qk=8, d_v=8, n_layers=2)
QUICK_TARGETS: dict[str, int] = dict(d_mlp=96, n_heads=3, d_v=12, d_qk=12, d_model=48, n_layers=3)


def model_config(sizes: dict[str, int], seq_len: int) -> dict[str, Any]:
    return dict(vocab_size=VOCAB, max_seq_len=seq_len, **sizes)


def cache_dir() -> str:
    return os.environ.get("PROGROW_BENCH_CACHE", "/tmp/progrow-bench-cache")


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def spread(xs: list[float]) -> dict[str, float]:
    """Median, min, max and the interquartile range of ``xs``."""
    if not xs:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    ys = sorted(xs)
    q = statistics.quantiles(ys, n=4) if len(ys) >= 2 else [ys[0], ys[0], ys[0]]
    return {
        "median": float(statistics.median(ys)),
        "min": float(ys[0]),
        "max": float(ys[-1]),
        "q1": float(q[0]),
        "q3": float(q[2]),
        "n": len(ys),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def environment(threads: int) -> dict[str, Any]:
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "lightning": _lightning_version(),
        "python": platform.python_version(),
        "torch_threads": threads,
        "loadavg_start": loadavg(),
    }


def _lightning_version() -> str:
    try:
        import lightning

        return lightning.__version__
    except Exception:  # pragma: no cover - lightning is a dependency
        return "?"


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class RSSSampler:
    """Samples this process's resident set size from ``/proc/self/statm`` every ``period`` s.

    Torch's CPU allocator exposes no statistics, and ``ru_maxrss`` never resets, so the
    peaks of given time windows are read off these samples.
    """

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.rss()))
            time.sleep(self.period)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> int:
        window = [r for t, r in self.samples if start <= t <= end]
        return max(window) if window else 0

    def at(self, when: float) -> int:
        """The last sample taken at or before ``when``."""
        before = [r for t, r in self.samples if t <= when]
        return before[-1] if before else 0


def pass_miss(ok: bool) -> str:
    return "pass" if ok else "MISS"


def quiet_trainer(max_steps: int, callbacks: list[Any]) -> Any:
    """A CPU Trainer that only trains: no logger, checkpoints, bars or validation."""
    import lightning as L

    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
