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

This module is the command and its tables; the figures are computed in
:mod:`progrow.app.report_compare`, the plot drawn in :mod:`progrow.app.report_plot`.

Example:
    progrow-report outputs/train/multirun/2025-01-01_12-00-00_000000 --out cmp.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from progrow.app.report_compare import summarize
from progrow.app.report_plot import default_plot_path, plot
from progrow.app.run_summary import SummaryError
from progrow.app.runs import RunSummary

__all__ = ["COLUMNS", "FLOPS_NOTE", "baseline_notes", "main", "markdown", "print_table"]


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
