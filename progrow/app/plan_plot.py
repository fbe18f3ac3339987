"""The plan's figure: predicted and measured loss against training FLOPs per size, the
envelope, and the planned schedule (``progrow-plan`` writes it beside its JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from progrow.app.pilots import Result
from progrow.app.planning import Curve
from progrow.app.scaling import LossForm


def figure(
    fit: LossForm,
    curves: Sequence[Curve],
    results: Sequence[Result],
    envelope: Sequence[tuple[float, float, int]],
    plan: Sequence[tuple[float, float]],
    budget: float,
    growths: Sequence[float],
    title: str,
) -> Any:
    """Per size (one colour each): the predicted curve of its final loss (dashed), its
    pilots' final losses (dots) and validation curves (thin; mid-run, so above the final
    losses of longer runs); scouts and other runs in grey; the envelope (black); the
    plan's predicted path (red, its growths marked); the budget (vertical). Returns the
    figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    xs = np.array([f for f, _, _ in envelope])
    for i, curve in enumerate(curves):
        _plot_size(ax, fit, curve, results, xs, f"C{i % 10}")
    _plot_others(ax, [r for r in results if not r.in_family])
    ax.plot(
        xs,
        [loss for _, loss, _ in envelope],
        "-",
        color="black",
        linewidth=2.5,
        alpha=0.6,
        label="envelope (best size per FLOPs)",
    )
    _plot_plan(ax, plan, growths)
    ax.axvline(budget, color="black", linestyle="-.", linewidth=1, label="budget")
    measured = [r.val_loss for r in results]
    low = min([*measured, *(loss for _, loss, _ in envelope)])
    ax.set_ylim(low - 0.05 * abs(low), max(measured) * 1.15)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (6N + causal attention, see progrow.flops)")
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    return fig


def _plot_size(
    ax: Any, fit: LossForm, curve: Curve, results: Sequence[Result], xs: Any, color: str
) -> None:
    """One size: its predicted curve, its pilots' validation curves and final losses."""
    predicted = [curve.loss(fit, f) for f in xs]
    ax.plot(xs, predicted, "--", color=color, linewidth=1, label=f"{curve.label}: predicted")
    mine = [r for r in results if r.in_family and r.label == curve.label]
    for r in mine:
        if r.curve:
            cx, cy = zip(*r.curve, strict=True)
            ax.plot(cx, cy, "-", color=color, alpha=0.3, linewidth=0.8)
    if mine:
        ax.plot(
            [r.flops for r in mine],
            [r.val_loss for r in mine],
            "o",
            color=color,
            markeredgecolor="black",
            label=f"{curve.label}: pilots (final loss)",
        )


def _plot_others(ax: Any, others: Sequence[Result]) -> None:
    """Runs outside the family (given with --runs): used by the fit, drawn in grey."""
    if others:
        ax.plot(
            [r.flops for r in others],
            [r.val_loss for r in others],
            "o",
            color="grey",
            label="scouts and other runs (fit only)",
        )


def _plot_plan(ax: Any, plan: Sequence[tuple[float, float]], growths: Sequence[float]) -> None:
    """The plan's predicted path and its growth points."""
    if plan:
        px, py = zip(*plan, strict=True)
        ax.plot(px, py, "-", color="red", linewidth=1.5, label="plan (predicted)")
        for g in growths:
            ax.axvline(g, color="red", linestyle=":", linewidth=0.8)


def plot(out: Path, *args: Any, **kwargs: Any) -> Path:
    """Write :func:`figure` to ``out`` (PNG) and return it."""
    import matplotlib.pyplot as plt

    fig = figure(*args, **kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
