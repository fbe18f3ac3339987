"""The end-of-run summary: a JSON file in the run folder and a rich table on the console."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from progrow.events import GrowthEvent, events_from_dicts

SUMMARY_FILE = "summary.json"


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


def write_summary(output_dir: Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json``; wall time adds up over resumed attempts of the same folder."""
    path = output_dir / SUMMARY_FILE
    previous = 0.0
    if path.is_file():
        try:
            previous = float(json.loads(path.read_text()).get("wall_s_total", 0.0))
        except (ValueError, OSError):
            previous = 0.0
    summary["wall_s_total"] = previous + float(summary["wall_s"])
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path


def print_summary(summary: dict[str, Any], console: Any = None) -> None:
    """Print the final validation loss, the growth events and where the outputs are.

    Args:
        summary: what :func:`progrow.app.train.run` returns.
        console: a ``rich.console.Console`` to print to (default: stdout).
    """
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)  # logs and pipes: do not wrap at 80 columns
    val = summary.get("val_loss")
    head = Table(title=f"progrow run: growth={summary['growth']}", show_header=False)
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    head.add_row("final val/loss", "n/a" if val is None else f"{val:.4f}")
    head.add_row("steps", str(summary["global_step"]))
    head.add_row("params", f"{human(summary['params_start'])} -> {human(summary['params'])}")
    flops = f"{human(summary['flops'])} training FLOPs (6N + causal attention, progrow.flops)"
    head.add_row("compute", f"{flops}, {human(summary['tokens'])} tokens")
    head.add_row(
        "wall time", f"{summary['wall_s']:.1f} s this launch ({summary['fit_s']:.1f} s training)"
    )
    head.add_row("run folder", summary["output_dir"])
    labelled = [f"{entry['logger']}: {entry['dir']}" for entry in summary.get("loggers") or []]
    head.add_row("logs", "\n".join(labelled or summary["log_dirs"]) or "(no logger)")
    head.add_row("checkpoints", summary["ckpt_dir"])
    if summary.get("compile"):
        stats = summary["compile"]
        per_size = ", ".join(f"step {c['step']}: {c['first_step_s']:.1f} s" for c in stats)
        graphs = sum(c["graphs"] for c in stats)
        head.add_row("torch.compile", f"{graphs} graphs; first step per size (compile "
                     f"included): {per_size}")  # fmt: skip
    if summary.get("hf_export"):
        head.add_row("Hugging Face model", summary["hf_export"])
    if summary.get("resumed_from"):
        head.add_row("resumed from", summary["resumed_from"])
    console.print(head)
    events = events_from_dicts(summary.get("events"))
    if events:
        console.print(_events_table(summary, events))
    else:
        console.print("no growth events (fixed-size run)")
    report_dir = summary.get("report_dir") or summary["output_dir"]
    whole = " (all jobs of this sweep)" if report_dir != summary["output_dir"] else ""
    console.print(f"report: progrow-report {report_dir}{whole}", soft_wrap=True)


def _events_table(summary: dict[str, Any], events: list[GrowthEvent]) -> Any:
    from rich.table import Table

    table = Table(title="growth events (loss on a fixed probe batch, before/after)")
    for col in ("stage", "step", "params", "loss before", "loss after", "delta", "sizes"):
        table.add_column(col, justify="right" if col != "sizes" else "left")
    previous = dict(summary.get("sizes_start") or {})
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


def append_summary_to_logs(summary: dict[str, Any]) -> list[Path]:
    """Append the summary, as plain text, to the run folder's log files (``train.log``),
    so that the log ends with what the console showed. Returns the files written."""
    from rich.console import Console

    files = log_files(Path(summary["output_dir"]))
    for path in files:
        for handler in logging.getLogger().handlers:
            handler.flush()
        with path.open("a") as f:
            print_summary(summary, Console(file=f, width=120, color_system=None))
    return files
