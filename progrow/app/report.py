"""``progrow-report RUN_DIR...``: compare growing runs with fixed-size baselines by compute.

Reads only local files written by ``python -m progrow.train``: each run folder's
``.hydra/config.yaml`` (schedule name, seed), its CSV metrics
(``csv/version_*/metrics.csv``; several versions are the attempts of a resumed run, later
ones win where they overlap) and ``summary.json`` (schedule, final loss, compute, wall
time, growth events: :class:`progrow.app.run_summary.RunRecord`; a run without one, still
running or killed, is read from its logs). A multirun folder works too: runs are found
recursively.

For each run it reports the final validation loss, the training FLOPs, and, against the
fixed-size baseline, the FLOPs at which the run first reached the baseline's final
validation loss and the saving in percent. The FLOPs are interpolated linearly between
the two validations around the crossing. FLOPs are progrow's count (``FLOPS_NOTE``,
:mod:`progrow.flops`): comparable between runs, about half the attention term of MFU
conventions.

A baseline of a run is a fixed-size run (schedule ``none``, no growth events) with the
run's final model sizes: comparing with a smaller fixed-size model would report a
meaningless saving. Per run: ``--baseline RUN_DIR`` if it qualifies; else among the
qualifying runs, those of the run's LR schedule if any, then those within 5% of the
run's FLOPs (equal compute) if any, then the one with the same seed, else the one with the
most FLOPs; else none, and the report says so.

Iso-loss: when fixed-size runs of the run's final sizes, seed and LR schedule exist at
two or more budgets, the report also gives the FLOPs such a run needs to *end* at the
growing run's final loss, interpolated in log-FLOPs (:mod:`progrow.app.isoloss`), and the
saving against it: the figure to trust when the in-run crossing compares a decayed
learning rate with one still mid-schedule.

Example:
    progrow-report outputs/train/multirun/2025-01-01_12-00-00_000000 --out cmp.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from progrow.app.isoloss import iso_loss_flops
from progrow.app.isoloss import saving_pct as iso_saving
from progrow.app.run_summary import SummaryError
from progrow.app.runs import (
    BASELINE_SCHEDULE,
    RunSummary,
    find_runs,
    load_run,
    read_metrics,
)

__all__ = [
    "BASELINE_SCHEDULE",
    "RunSummary",
    "compare",
    "crossing",
    "default_plot_path",
    "figure",
    "find_runs",
    "flops_to_reach",
    "load_run",
    "main",
    "markdown",
    "pick_baseline",
    "plot",
    "read_metrics",
    "summarize",
]

# -- comparing --------------------------------------------------------------------------


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
    parent = _common_parent(found)
    runs = [load_run(run, _label(run, parent)) for run in found]
    return compare(runs, base_run)


def _common_parent(paths: Sequence[Path]) -> Path | None:
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


# -- output -----------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def baseline_notes(runs: Sequence[RunSummary]) -> list[str]:
    """One line per growing run that has no baseline, saying what baseline it needs."""
    notes = []
    for run in runs:
        if run.is_baseline or run.baseline is not None:
            continue
        sizes = " ".join(f"{k}={v}" for k, v in (run.sizes or {}).items()) or "unknown"
        notes.append(
            f"{run.name}: no baseline: no fixed-size run (growth=none) of its final size "
            f"({sizes}) among the runs; train one (e.g. model=small growth=none for the "
            "default schedules) or pass --baseline"
        )
    return notes


def _rows(runs: Sequence[RunSummary]) -> list[list[str]]:
    rows = []
    used = {run.baseline for run in runs}
    for run in runs:
        deltas = [e.loss_delta for e in run.events]
        worst = max((abs(d) for d in deltas if d is not None), default=None)
        if run.is_baseline:
            reach, saving = ("(baseline)" if run.path in used else "(fixed size)"), "-"
        elif run.baseline is None:
            reach, saving = "no baseline", "-"
        elif run.flops_to_baseline is None:
            reach, saving = "not reached", "-"
        else:
            reach, saving = _fmt(run.flops_to_baseline, ".3e"), _fmt(run.saving_pct, "+.1f") + "%"
            if run.time_saving_pct is not None:
                saving += f" ({_fmt(run.time_saving_pct, '+.1f')}% time)"
        if run.iso_flops is not None:
            iso = f"{run.iso_flops:.3e} ({_fmt(run.iso_saving_pct, '+.1f')}%)"
        else:
            note = run.iso_note or ""
            iso = note if note.startswith(("below", "above")) else "-"
        rows.append(
            [
                run.name,
                run.growth,
                "-" if run.seed is None else str(run.seed),
                _fmt(run.final_val_loss, ".4f"),
                _fmt(run.flops, ".3e"),
                reach,
                saving,
                iso,
                f"{len(run.events)} (max delta {_fmt(worst, '.1e')})" if run.events else "0",
                _fmt(run.wall_s, ".0f"),
            ]
        )
    return rows


COLUMNS = ["run", "growth", "seed", "final val/loss", "FLOPs", "FLOPs to baseline's loss",
           "saving", "iso-loss baseline FLOPs (saving)", "growths", "wall s"]  # fmt: skip
#: What the FLOPs figures are (printed with every table and on the plot).
FLOPS_NOTE = (
    "FLOPs: training FLOPs, 6N + 6·L·H·(Q+V)·(T+1)/2 per token (attention counted for a "
    "causal model, about half the usual 12·L·H·Q·T of MFU figures; see progrow.flops)"
)


def markdown(runs: Sequence[RunSummary]) -> str:
    """The comparison as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(runs)]
    return "\n".join([*lines, "", FLOPS_NOTE, *baseline_notes(runs)])


def print_table(runs: Sequence[RunSummary]) -> None:
    """The comparison as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="progrow report (loss vs training compute)")
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for row in _rows(runs):
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped output: do not wrap at 80 columns
    console.print(table)
    for note in [FLOPS_NOTE, *baseline_notes(runs)]:
        console.print(note, highlight=False, soft_wrap=True)


#: Per run, how its growth events are drawn (cycled): the vertical's dash pattern and the
#: marker on its curve, so runs growing at the same FLOPs stay apart.
EVENT_STYLES = ((":", "v"), ("--", "^"), ("-.", "s"), ((0, (1, 3)), "D"), ((0, (5, 2, 1, 2)), "P"))


def figure(runs: Sequence[RunSummary]) -> Any:
    """Validation loss against FLOPs, one line per run; each growth event is a vertical
    in its run's colour and dash pattern, and a marker of its run's shape on that run's
    curve (the artists' ``gid`` is ``growth-events:<run name>``). Returns the matplotlib
    figure (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    growing = 0
    for i, run in enumerate(runs):
        if not run.curve:
            continue
        color = f"C{i % 10}"
        xs, ys = zip(*run.curve, strict=True)
        style = "--" if run.is_baseline else "-"
        seed = "" if run.seed is None else f" seed {run.seed}"
        ax.plot(xs, ys, style, color=color, marker=".", label=f"{run.growth}{seed} ({run.name})")
        at = [float(e.flops) for e in run.events if e.flops]
        if at:
            dashes, marker = EVENT_STYLES[growing % len(EVENT_STYLES)]
            growing += 1
            gid = f"growth-events:{run.name}"
            for x in at:
                ax.axvline(x, color=color, alpha=0.5, linestyle=dashes, linewidth=1, gid=gid)
            on_curve = np.interp(np.log(at), np.log(xs), ys)  # straight on the log axis
            ax.plot(at, on_curve, linestyle="none", marker=marker, color=color,
                    markeredgecolor="black", markersize=7, gid=gid,
                    label=f"{run.growth}{seed}: growth events")  # fmt: skip
        if run.is_baseline and run.final_val_loss is not None:
            ax.axhline(run.final_val_loss, color=color, alpha=0.3, linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (6N + causal attention, see progrow.flops)")
    ax.set_ylabel("validation loss")
    ax.set_title("validation loss vs compute (growth events: markers and verticals per run)")
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot(runs: Sequence[RunSummary], out: str | Path) -> Path:
    """Write :func:`figure` to ``out`` (a PNG; replaced if it exists) and return it."""
    import matplotlib.pyplot as plt

    fig = figure(runs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def default_plot_path(runs: Sequence[RunSummary]) -> Path:
    """Where ``progrow-report`` writes its plot unless told: the runs' common folder (the
    one the run names are relative to), ``report-<run>_vs_<run>....png``; a long list is
    shortened to its first two names, the count and a hash of all of them.

    Example:
        >>> a = RunSummary("0", "/s/0", "none", 0, 1.0, 1.0, None, None)
        >>> b = RunSummary("1", "/s/1", "all_six", 0, 1.0, 1.0, None, None)
        >>> str(default_plot_path([a, b]))
        '/s/report-0_vs_1.png'
    """
    import hashlib
    import re

    folder = _common_parent([Path(r.path) for r in runs]) or Path(".")
    names = [re.sub(r"[^A-Za-z0-9._=+-]+", "-", r.name).strip("-") or "run" for r in runs]
    label = "_vs_".join(names)
    if len(label) > 120:
        digest = hashlib.sha1("\0".join(r.path for r in runs).encode()).hexdigest()[:8]
        label = f"{names[0]}_vs_{names[1]}_and_{len(names) - 2}_more-{digest}"
    return folder / f"report-{label}.png"


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``progrow-report``."""
    parser = argparse.ArgumentParser(prog="progrow-report", description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run folders or folders holding runs")
    parser.add_argument("--baseline", help="compare every run against this run folder")
    parser.add_argument(
        "-o",
        "--out",
        help="PNG to write (default: report-<run>_vs_<run>.png in the runs' common folder)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing PNG")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    try:
        runs = summarize(args.run_dirs, baseline=args.baseline)
    except FileNotFoundError as err:
        print(f"progrow-report: {err}", file=sys.stderr)
        return 2
    except SummaryError as err:
        print(f"progrow-report: error: {err}", file=sys.stderr)
        return 2
    if not runs:
        print(f"progrow-report: no runs with CSV metrics under {args.run_dirs}", file=sys.stderr)
        return 1
    png = None
    if not args.no_plot:
        target = Path(args.out) if args.out else default_plot_path(runs)
        if target.exists() and not args.force:
            print(
                f"progrow-report: error: {target} exists; pass --force to replace it, "
                "--out PATH to write elsewhere or --no-plot",
                file=sys.stderr,
            )
            return 2
        png = plot(runs, target)
    if args.json:
        payload = {
            "runs": [r.to_dict() for r in runs],
            "plot": None if png is None else str(png),
            "flops_convention": FLOPS_NOTE,
        }
        print(json.dumps(payload, indent=2))
        return 0
    if args.markdown:
        print(markdown(runs))
    else:
        print_table(runs)
    if png is not None:
        print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
