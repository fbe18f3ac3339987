"""Reading the run folders ``python -m progrow.train`` writes: what ``progrow-report``
compares (:class:`RunSummary`, one per run). Local files only: ``.hydra/config.yaml``,
the CSV metrics (``csv/version_*/metrics.csv``; later versions, the attempts of a resumed
run, win where they overlap) and ``summary.json``
(:class:`~progrow.app.run_summary.RunRecord`, refused unless of this progrow's schema).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import yaml

from progrow.app.run_summary import SUMMARY_FILE, RunRecord
from progrow.events import GrowthEvent

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


class _Known(TypedDict):
    """What a run folder tells besides its curves: from ``summary.json`` when it has one."""

    growth: str
    seed: int | None
    final_val_loss: float | None
    flops: float | None
    tokens: float | None
    wall_s: float | None
    events: list[GrowthEvent]
    sizes: dict[str, int] | None


def load_run(run: Path, name: str | None = None) -> RunSummary:
    """Read one run folder: a finished run from its ``summary.json``, one without (still
    running, or killed) from its logs (:func:`_logged`); the curves and the LR schedule
    from the CSV metrics and ``.hydra/config.yaml`` either way.

    Raises:
        progrow.app.run_summary.SummaryError: ``summary.json`` is not of the schema this
            progrow reads (the message says how to regenerate it).
    """
    config = _load_yaml(run / ".hydra" / "config.yaml")
    rows = read_metrics(run)
    curve = _column_pairs(rows, "compute/flops", "val/loss")
    summary_file = run / SUMMARY_FILE
    if summary_file.is_file():
        known = _recorded(RunRecord.read(summary_file))
    else:
        known = _logged(run, config, rows, curve)
    optim = config.get("optim") or {}
    return RunSummary(
        name=name or run.name,
        path=str(run),
        curve=curve,
        time_curve=_column_pairs(rows, "time/train_s", "val/loss"),
        lr_schedule=str(optim.get("schedule", "cosine")) if optim else None,
        **known,
    )


def _recorded(record: RunRecord) -> _Known:
    """A finished run's facts, as its summary records them."""
    return _Known(
        growth=record.growth,
        seed=record.seed,
        final_val_loss=record.val_loss,
        flops=record.flops,
        tokens=record.tokens,
        wall_s=record.wall_s_total,
        events=record.events,
        sizes=record.sizes,
    )


def _logged(
    run: Path,
    config: dict[str, Any],
    rows: list[dict[str, float]],
    curve: list[tuple[float, float]],
) -> _Known:
    """What the logs of a run without a summary tell: the CSV metrics, the latest logged
    hyperparameters (schedule name, final sizes) and ``.hydra/config.yaml`` for the name
    when nothing was logged yet (the config's ``growth.name`` is the preset's even when
    ``growth.stages`` was overridden, hence last)."""
    logged = _hparams_growth(run)
    sizes = logged.get("final_sizes")
    seed = config.get("seed")
    return _Known(
        growth=str(logged.get("name") or (config.get("growth") or {}).get("name", "?")),
        seed=int(seed) if isinstance(seed, int) else None,
        final_val_loss=curve[-1][1] if curve else None,
        flops=_column_max(rows, "compute/flops"),
        tokens=_column_max(rows, "compute/tokens"),
        wall_s=None,
        events=_logged_events(rows),
        sizes={str(k): int(v) for k, v in sizes.items()} if isinstance(sizes, dict) else None,
    )
