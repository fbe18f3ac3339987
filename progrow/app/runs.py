"""Reading the run folders ``python -m progrow.train`` writes: what ``progrow-report``
compares (:class:`RunSummary`, one per run). Local files only: ``.hydra/config.yaml``,
the CSV metrics (``csv/version_*/metrics.csv``; later versions, the attempts of a resumed
run, win where they overlap) and ``summary.json``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from progrow.events import GrowthEvent, events_from_dicts

BASELINE_SCHEDULE = "none"


@dataclass
class RunSummary:
    """What the report knows about one run."""

    name: str
    """Short label: the run folder relative to the common parent of all runs."""
    path: str
    """The run folder."""
    growth: str
    """Growth schedule name (``none``: fixed-size baseline)."""
    seed: int | None
    final_val_loss: float | None
    """Last validation loss logged."""
    flops: float | None
    """Training FLOPs at the end of the run."""
    tokens: float | None
    wall_s: float | None
    """Wall time of the training (all resumed attempts that finished), from summary.json."""
    curve: list[tuple[float, float]] = field(default_factory=list)
    """``(flops, val_loss)`` at each validation."""
    events: list[GrowthEvent] = field(default_factory=list)
    """Growth events (from summary.json; from the CSV log, only stage, step, flops,
    loss_delta and params)."""
    baseline: str | None = None
    """Path of the baseline run compared against."""
    flops_to_baseline: float | None = None
    """FLOPs at which this run first reached the baseline's final validation loss."""
    saving_pct: float | None = None
    """``100 * (1 - flops_to_baseline / baseline flops)``; positive: cheaper."""
    time_curve: list[tuple[float, float]] = field(default_factory=list)
    """``(training seconds, val_loss)`` at each validation (``time/train_s``)."""
    time_to_baseline: float | None = None
    """Training seconds at which this run first reached the baseline's final loss."""
    time_saving_pct: float | None = None
    """``100 * (1 - time_to_baseline / baseline training seconds)``; positive: faster."""
    sizes: dict[str, int] | None = None
    """Model sizes at the end of the run (``None``: unknown)."""
    lr_schedule: str | None = None
    """The run's ``optim.schedule`` (cosine, wsd; ``None``: unknown)."""
    iso_flops: float | None = None
    """FLOPs a fixed-size run (same final sizes, seed, LR schedule) needs to end at this
    run's final loss, interpolated between baselines at several budgets."""
    iso_saving_pct: float | None = None
    """``100 * (1 - flops / iso_flops)``; positive: cheaper than the fixed-size run."""
    iso_note: str | None = None
    """Why there is no ``iso_flops`` (outside the baselines' range, or too few budgets)."""

    @property
    def is_baseline(self) -> bool:
        return self.growth == BASELINE_SCHEDULE and not self.events

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- finding and reading runs -------------------------------------------------------------


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders under ``paths``: folders holding ``.hydra/config.yaml`` and a CSV log."""
    found: list[Path] = []
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such run folder: {root}")
        candidates = [root] if (root / ".hydra" / "config.yaml").is_file() else []
        candidates += sorted(p.parent.parent for p in root.rglob(".hydra/config.yaml"))
        for run in candidates:
            if run not in found and _metric_files(run):
                found.append(run)
    return found


def _version(path: Path) -> int:
    match = re.search(r"version_(\d+)", str(path.parent.name))
    return int(match.group(1)) if match else 0


def _metric_files(run: Path) -> list[Path]:
    return sorted(run.rglob("metrics.csv"), key=lambda p: (str(p.parent.parent), _version(p)))


def read_metrics(run: Path) -> list[dict[str, float]]:
    """All CSV metric rows of a run, attempts merged: a later attempt (resume) replaces the
    rows of earlier ones from its first step on."""
    merged: list[dict[str, float]] = []
    for path in _metric_files(run):
        with path.open() as f:
            rows = [_numbers(row) for row in csv.DictReader(f)]
        steps = [r["step"] for r in rows if "step" in r]
        if steps:
            first = min(steps)
            merged = [r for r in merged if r.get("step", -1) < first]
        merged.extend(rows)
    return merged


def _numbers(row: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in row.items():
        if value not in ("", None):
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def _hparams_growth(run: Path) -> dict[str, Any]:
    """The ``growth`` entry of the run's latest ``hparams.yaml`` (name, final sizes)."""
    files = sorted(run.rglob("hparams.yaml"), key=lambda p: _version(p / "x"))
    growth = _load_yaml(files[-1]).get("growth") if files else None
    return growth if isinstance(growth, dict) else {}


def _column_pairs(rows: list[dict[str, float]], x: str, y: str) -> list[tuple[float, float]]:
    """``(row[x], row[y])`` for every row that has both."""
    return [(r[x], r[y]) for r in rows if x in r and y in r]


def _column_max(rows: list[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return max(values) if values else None


def _logged_events(rows: list[dict[str, float]]) -> list[GrowthEvent]:
    """Growth events rebuilt from the CSV rows (runs without ``summary.json``)."""
    return [
        GrowthEvent(
            stage=int(r["growth/stage"]),
            step=int(r.get("step", -1)),
            flops=r.get("compute/flops"),
            loss_delta=r.get("growth/loss_delta"),
            params=None if r.get("growth/params") is None else int(r["growth/params"]),
        )
        for r in rows
        if "growth/stage" in r
    ]


def _first(*values: Any) -> Any:
    """The first value that is not ``None``."""
    return next((v for v in values if v is not None), None)


def load_run(run: Path, name: str | None = None) -> RunSummary:
    """Read one run folder.

    The schedule's name and the final sizes come from ``summary.json``, else from the
    logged hyperparameters, else (name only) from ``.hydra/config.yaml``: the config's
    ``growth.name`` is the preset's even when ``growth.stages`` was overridden.
    """
    config = _load_yaml(run / ".hydra" / "config.yaml")
    logged = _hparams_growth(run)
    summary_file = run / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    sizes = summary.get("sizes") or logged.get("final_sizes")
    rows = read_metrics(run)
    curve = _column_pairs(rows, "compute/flops", "val/loss")
    seed = config.get("seed")
    optim = config.get("optim") or {}
    growth_name = summary.get("growth") or logged.get("name")
    return RunSummary(
        name=name or run.name,
        path=str(run),
        growth=str(growth_name or (config.get("growth") or {}).get("name", "?")),
        seed=int(seed) if isinstance(seed, int) else None,
        final_val_loss=curve[-1][1] if curve else summary.get("val_loss"),
        flops=_first(_column_max(rows, "compute/flops"), summary.get("flops")),
        tokens=_first(_column_max(rows, "compute/tokens"), summary.get("tokens")),
        wall_s=summary.get("wall_s_total", summary.get("wall_s")),
        curve=curve,
        events=events_from_dicts(summary.get("events")) or _logged_events(rows),
        time_curve=_column_pairs(rows, "time/train_s", "val/loss"),
        sizes={str(k): int(v) for k, v in sizes.items()} if isinstance(sizes, dict) else None,
        lr_schedule=str(optim.get("schedule", "cosine")) if optim else None,
    )
