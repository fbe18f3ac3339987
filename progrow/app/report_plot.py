"""The figure of ``progrow-report``: validation loss against training FLOPs, one line per
run, with each run's growth events marked, and where the command writes it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from progrow.app.report_compare import common_parent
from progrow.app.runs import RunSummary

__all__ = ["EVENT_STYLES", "default_plot_path", "figure", "plot"]

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

    folder = common_parent([Path(r.path) for r in runs]) or Path(".")
    names = [re.sub(r"[^A-Za-z0-9._=+-]+", "-", r.name).strip("-") or "run" for r in runs]
    label = "_vs_".join(names)
    if len(label) > 120:
        digest = hashlib.sha1("\0".join(r.path for r in runs).encode()).hexdigest()[:8]
        label = f"{names[0]}_vs_{names[1]}_and_{len(names) - 2}_more-{digest}"
    return folder / f"report-{label}.png"
