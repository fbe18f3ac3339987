"""Where an expansion's rescaling factor sits: ``python experiments/run.py placement``.

    python experiments/run.py placement --dim d_model   # hidden factor: gains vs readers
    python experiments/run.py placement --dim d_qk      # key/query factor: keys, queries, shared

``model=small`` grown at step 0 along one dimension (d_model 32 -> 64, or d_qk 8 -> 16,
as ``AT_STEP0`` in run.py) once per placement, against a fresh ``small`` model: same
steps, data and LR schedule. Every grown model computes the smaller fresh model's
function; only where the factor sits differs, so the losses say which placement trains
best. Jobs are cached per folder under ``experiments/runs/placement/`` like run.py's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from run import AT_STEP0, BUDGETS, COMPARE, RESULTS, RUNS, mean_sd, run_all

#: dimension -> (config key of its placement, label -> placement, results file stem)
DIMS: dict[str, tuple[str, dict[str, str], str]] = {
    "d_model": (
        "hidden_factor_at",
        {
            "grown at step 0, factor on the gains (the paper's)": "gains",
            "grown at step 0, factor on the readers (the default)": "readers",
        },
        "placement",
    ),
    "d_qk": (
        "qk_factor_at",
        {
            "grown at step 0, factor on the keys (the default)": "keys",
            "grown at step 0, factor on the queries": "queries",
            "grown at step 0, factor shared by queries and keys": "shared",
        },
        "placement_qk",
    ),
}
#: What each dimension grows from, for the table's caption.
GROWN = {"d_model": "d_model 32 -> 64", "d_qk": "d_qk 8 -> 16"}
FRESH = "fresh model=small"


def placement(
    dim: str, seeds: Sequence[int], parallel: int, steps: int | None, schedule: str
) -> None:
    """Grow ``dim`` at step 0 once per placement, and train a fresh ``small`` model; write
    the table (final validation loss, and its difference to the fresh model of the same
    seed).

    ``steps`` shortens the runs (a quick check); the tables in ``experiments/results/``
    are written only at the default length and schedule, so they always hold full runs.
    """
    key, placements, stem = DIMS[dim]
    default_steps, val_every = BUDGETS["short"]
    steps = steps or default_steps
    common = [
        f"budget.steps={steps}",
        f"trainer.val_check_interval={min(val_every, steps)}",
        f"optim.schedule={schedule}",
    ]
    tag = f"{steps}steps_{schedule}"
    groups: dict[str, dict[Path, list[str]]] = {
        label: {
            RUNS / "placement" / f"{dim}_{place}_{tag}_s{seed}": [
                *AT_STEP0[f"{dim} only"],
                f"growth.{key}={place}",
                f"growth.name={dim}_{place}",
                f"seed={seed}",
                *common,
            ]
            for seed in seeds
        }
        for label, place in placements.items()
    }
    groups[FRESH] = {
        RUNS / "placement" / f"fresh_{tag}_s{seed}": [*COMPARE["baseline"], f"seed={seed}", *common]
        for seed in seeds
    }
    run_all({k: v for jobs in groups.values() for k, v in jobs.items()}, parallel)
    losses = {
        name: [json.loads((p / "summary.json").read_text())["val_loss"] for p in jobs]
        for name, jobs in groups.items()
    }
    markdown = table(losses, steps, schedule, GROWN[dim], seeds)
    if steps == default_steps and schedule == "cosine":
        (RESULTS / f"{stem}.md").write_text(markdown)
        (RESULTS / f"{stem}.json").write_text(json.dumps(losses, indent=2) + "\n")
    print(markdown)


def table(
    losses: dict[str, list[float]], steps: int, schedule: str, grown: str, seeds: Sequence[int]
) -> str:
    """The Markdown table: per start, the final loss and its difference to the fresh
    model of the same seed (mean +- sd over seeds), and the per-seed values."""
    fresh = losses[FRESH]
    lines = [
        f"model=small trained {steps} steps ({schedule} LR schedule, same data) from a fresh "
        f"init, or grown to it at step 0 from {grown}; seeds {list(seeds)}.",
        "",
        "| start | final val loss | vs fresh (same seed) | per seed |",
        "|---|---|---|---|",
        *(
            f"| {name} | {mean_sd(values, '.4f')} | "
            f"{mean_sd([v - f for v, f in zip(values, fresh, strict=True)], '+.4f')} | "
            + " / ".join(f"{v:.4f}" for v in values)
            + " |"
            for name, values in losses.items()
        ),
    ]
    return "\n".join(lines) + "\n"
