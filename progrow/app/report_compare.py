"""What ``progrow-report`` computes: each run against its fixed-size baseline, by compute.

:func:`summarize` finds the runs under some folders, reads them
(:func:`progrow.app.runs.load_run`) and :func:`compare` fills in each one's figures: the
FLOPs at which it first reached its baseline's final validation loss and the saving in
percent (:func:`crossing`), and the iso-loss FLOPs (:mod:`progrow.app.isoloss`). How a run's
baseline is picked, and when the iso-loss figure applies: :mod:`progrow.app.report`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from progrow.app.isoloss import iso_loss_flops
from progrow.app.isoloss import saving_pct as iso_saving
from progrow.app.runs import RunSummary, find_runs, load_run

__all__ = [
    "common_parent",
    "compare",
    "crossing",
    "flops_to_reach",
    "pick_baseline",
    "qualifies_as_baseline",
    "summarize",
]


def flops_to_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """FLOPs at which ``curve`` first gets to ``target`` or below, interpolated linearly
    between the validations around the crossing; ``None`` if it never does.

    Example:
        >>> flops_to_reach([(10.0, 3.0), (20.0, 2.0), (30.0, 1.0)], 1.5)
        25.0
    """
    previous: tuple[float, float] | None = None
    for flops, loss in curve:
        if loss <= target:
            if previous is None or previous[1] == loss:
                return flops
            f0, l0 = previous
            return f0 + (l0 - target) / (l0 - loss) * (flops - f0)
        previous = (flops, loss)
    return None


def qualifies_as_baseline(base: RunSummary, run: RunSummary) -> bool:
    """Whether ``base`` is a fixed-size run of ``run``'s final sizes (both known)."""
    return base.is_baseline and base.sizes is not None and base.sizes == run.sizes


def _equal_compute(base: RunSummary, run: RunSummary) -> bool:
    if not base.flops or not run.flops:
        return False
    return abs(base.flops / run.flops - 1.0) <= 0.05


def pick_baseline(run: RunSummary, baselines: Sequence[RunSummary]) -> RunSummary | None:
    """Among the fixed-size runs of ``run``'s final sizes, narrowed to those of ``run``'s
    LR schedule and then to those of equal compute (within 5% of its FLOPs) where any
    exist: the one with ``run``'s seed, else the one with the most FLOPs; ``None`` if
    there is none. A fixed-size run is never its own baseline."""
    usable = [
        b
        for b in baselines
        if b.curve and b.path != run.path and qualifies_as_baseline(b, run)  # never itself
    ]
    usable = [b for b in usable if b.lr_schedule == run.lr_schedule] or usable
    usable = [b for b in usable if _equal_compute(b, run)] or usable
    if not usable:
        return None
    same_seed = [b for b in usable if b.seed is not None and b.seed == run.seed]
    pool = same_seed or usable
    return max(pool, key=lambda b: b.flops or 0.0)


def compare(runs: list[RunSummary], baseline: RunSummary | None = None) -> list[RunSummary]:
    """Fill each run's ``baseline``, ``flops_to_baseline`` and ``saving_pct``."""
    baselines = [baseline] if baseline is not None else [r for r in runs if r.is_baseline]
    for run in runs:
        base = pick_baseline(run, baselines)
        if base is not None:
            crossing(run, base)
        _iso_loss(run, baselines)
    return runs


def crossing(run: RunSummary, base: RunSummary) -> None:
    """Fill ``run``'s ``baseline``, ``flops_to_baseline``, ``saving_pct`` and the
    training-time equivalents against ``base``'s final validation loss. :func:`compare`
    calls it with the baseline it picked; call it directly to measure a run against a
    model of another size (e.g. a fixed-size run of the starting size as a reference)."""
    # Against this base only: nothing left from a baseline compared before.
    run.baseline = run.flops_to_baseline = run.saving_pct = None
    run.time_to_baseline = run.time_saving_pct = None
    if base.final_val_loss is None or not run.curve:
        return
    run.baseline = base.path
    reached = flops_to_reach(run.curve, base.final_val_loss)
    run.flops_to_baseline = reached
    base_flops = base.curve[-1][0]
    if reached is not None and base_flops > 0:
        run.saving_pct = 100.0 * (1.0 - reached / base_flops)
    if run.time_curve and base.time_curve:
        run.time_to_baseline = flops_to_reach(run.time_curve, base.final_val_loss)
        base_time = base.time_curve[-1][0]
        if run.time_to_baseline is not None and base_time > 0:
            run.time_saving_pct = 100.0 * (1.0 - run.time_to_baseline / base_time)


def _iso_loss(run: RunSummary, baselines: Sequence[RunSummary]) -> None:
    """Fill ``run``'s iso-loss fields from the fixed-size runs of its final sizes, seed
    and LR schedule (at least two budgets)."""
    if run.is_baseline or run.final_val_loss is None or not run.flops:
        return
    ladder = [
        (float(b.flops or 0.0), float(b.final_val_loss or 0.0))
        for b in baselines
        if qualifies_as_baseline(b, run)
        and b.seed == run.seed
        and b.lr_schedule == run.lr_schedule
        and b.flops
        and b.final_val_loss is not None
    ]
    if len({f for f, _ in ladder}) < 2:
        run.iso_note = "needs fixed-size runs at 2+ budgets (same sizes, seed, LR schedule)"
        return
    iso = iso_loss_flops(ladder, run.final_val_loss)
    run.iso_flops, run.iso_saving_pct = iso.flops, iso_saving(iso, run.flops)
    if iso.outside == "better":
        run.iso_note = f"below every baseline's final loss: needs > {iso.bound:.3e}"
    elif iso.outside == "worse":
        run.iso_note = f"above every baseline's final loss: needs < {iso.bound:.3e}"


def summarize(
    run_dirs: Iterable[str | Path], baseline: str | Path | None = None
) -> list[RunSummary]:
    """Find the runs under ``run_dirs``, read their local logs and compare them.

    Args:
        run_dirs: Run folders or folders holding runs (e.g. a multirun folder).
        baseline: A run folder to compare every run against (if it is a fixed-size run
            of the run's final size); default: per run, such a run with the same seed,
            else the one with the most FLOPs (see :func:`pick_baseline`).

    Returns:
        One :class:`RunSummary` per run, in the order found.
    """
    found = find_runs(run_dirs)
    base_run = None
    if baseline is not None:
        base_dirs = find_runs([baseline])
        if not base_dirs:
            raise FileNotFoundError(f"--baseline {baseline}: no run with CSV metrics there")
        base_run = load_run(base_dirs[0])
    parent = common_parent(found)
    runs = [load_run(run, _label(run, parent)) for run in found]
    return compare(runs, base_run)


def common_parent(paths: Sequence[Path]) -> Path | None:
    """The deepest folder holding every one of ``paths`` (resolved); ``None`` for none."""
    if not paths:
        return None
    parts = [p.resolve().parts for p in paths]
    common: list[str] = []
    for items in zip(*parts, strict=False):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return Path(*common) if common else None


def _label(run: Path, parent: Path | None) -> str:
    if parent is not None and run.resolve() != parent:
        return str(run.resolve().relative_to(parent))
    return run.name
