"""The end-of-run summary on the console: a rich table, also appended to the run's log.

The summary itself, and its JSON file in the run folder, is
:class:`progrow.app.run_summary.RunRecord`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from progrow.app.run_summary import RunRecord
    from progrow.events import GrowthEvent


def _fmt(value: float | None, spec: str | Any) -> str:
    """``value`` formatted with a format spec or a function; ``-`` for ``None``."""
    if value is None:
        return "-"
    return spec(value) if callable(spec) else format(value, spec)


def human(n: float) -> str:
    """``1234567`` -> ``"1.23M"``."""
    if not math.isfinite(n):
        return str(n)
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def print_summary(record: RunRecord, console: Any = None) -> None:
    """Print the final validation loss, the growth events and where the outputs are.

    Args:
        record: the run's summary (:func:`progrow.app.train.run` returns its dict form).
        console: a ``rich.console.Console`` to print to (default: stdout).
    """
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)  # logs and pipes: do not wrap at 80 columns
    val = record.val_loss
    head = Table(title=f"progrow run: growth={record.growth}", show_header=False)
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    head.add_row("final val/loss", "n/a" if val is None else f"{val:.4f}")
    head.add_row("steps", str(record.global_step))
    head.add_row("params", f"{human(record.params_start)} -> {human(record.params)}")
    flops = f"{human(record.flops)} training FLOPs (6N + causal attention, progrow.flops)"
    head.add_row("compute", f"{flops}, {human(record.tokens)} tokens")
    head.add_row("wall time", f"{record.wall_s:.1f} s this launch ({record.fit_s:.1f} s training)")
    head.add_row("run folder", record.output_dir)
    labelled = [f"{entry['logger']}: {entry['dir']}" for entry in record.loggers]
    head.add_row("logs", "\n".join(labelled) or "(no logger)")
    head.add_row("checkpoints", record.ckpt_dir)
    if record.compile:
        stats = record.compile
        per_size = ", ".join(f"step {c['step']}: {c['first_step_s']:.1f} s" for c in stats)
        graphs = sum(c["graphs"] for c in stats)
        head.add_row("torch.compile", f"{graphs} graphs; first step per size (compile "
                     f"included): {per_size}")  # fmt: skip
    if record.hf_export:
        head.add_row("Hugging Face model", record.hf_export)
    if record.resumed_from:
        head.add_row("resumed from", record.resumed_from)
    console.print(head)
    if record.events:
        console.print(_events_table(record.sizes_start, record.events))
    else:
        console.print("no growth events (fixed-size run)")
    whole = " (all jobs of this sweep)" if record.report_dir != record.output_dir else ""
    console.print(f"report: progrow-report {record.report_dir}{whole}", soft_wrap=True)


def _events_table(sizes_start: dict[str, int], events: list[GrowthEvent]) -> Any:
    from rich.table import Table

    table = Table(title="growth events (loss on a fixed probe batch, before/after)")
    for col in ("stage", "step", "params", "loss before", "loss after", "delta", "sizes"):
        table.add_column(col, justify="right" if col != "sizes" else "left")
    previous = dict(sizes_start)
    for e in events:
        now = dict(e.sizes)
        sizes = " ".join(
            f"{k} {previous[k]}->{v}" if k in previous else f"{k}={v}"
            for k, v in now.items()
            if previous.get(k) != v
        )
        previous = dict(now)
        table.add_row(
            str(e.stage),
            str(e.step),
            f"{_fmt(e.params_before, human)} -> {_fmt(e.params, human)}",
            _fmt(e.loss_before, ".6f"),
            _fmt(e.loss_after, ".6f"),
            _fmt(e.loss_delta, "+.2e"),
            sizes,
        )
    return table


def log_files(output_dir: Path) -> list[Path]:
    """The files in ``output_dir`` the root logger writes to (Hydra's ``<job>.log``)."""
    root = output_dir.resolve()
    return [
        Path(h.baseFilename)
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == root
    ]


def append_summary_to_logs(record: RunRecord) -> list[Path]:
    """Append the summary, as plain text, to the run folder's log files (``train.log``),
    so that the log ends with what the console showed. Returns the files written."""
    from rich.console import Console

    files = log_files(Path(record.output_dir))
    for path in files:
        for handler in logging.getLogger().handlers:
            handler.flush()
        with path.open("a") as f:
            print_summary(record, Console(file=f, width=120, color_system=None))
    return files
