"""The compute-optimal envelope of the 0.87M family, and the growth tax: the tables of
experiments/README.md, section "The envelope and the growth tax".

    python experiments/envelope.py              # runs what the tables need, writes them
    python experiments/envelope.py --table-only # rewrite from finished runs

**Envelope.** Fixed-size models of four sizes of the family of experiments/scale.py
(start 0.12M, the two-stage schedule's half-way size 0.37M, a size between it and the
target 0.62M, the target 0.87M), each trained on several budgets: a budget is the
training FLOPs of N steps of the *target* (batch 16 x 128 tokens), so a smaller model
takes more steps. The envelope at a budget is the lowest final validation loss any fixed
size reaches there.

**Tax.** One growth stage, start -> half-way size, fired at 10%, 25% or 45% of the
run's steps, on the long budget, against the half-way size trained fixed on the same
budget: the final-loss gap is what growing costs (or saves) against a model trained at
its end size from the start.

Every run uses WSD (warmup 100 steps, constant, linear decay over the last 20%), seed 0,
the app's defaults otherwise. Jobs are cached per folder under
``experiments/runs/envelope/`` (experiments/run.py's job cache).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import RESULTS, RUNS, run_all  # the sibling runner's job cache

#: size name -> model overrides (model=scale_target with these widths and depth).
SIZES: dict[str, dict[str, int]] = {
    "start": dict(d_model=64, d_mlp=256, n_heads=2, d_qk=16, d_v=16, n_layers=2),
    "half": dict(d_model=96, d_mlp=384, n_heads=3, d_qk=24, d_v=24, n_layers=3),
    "mid": dict(d_model=112, d_mlp=448, n_heads=4, d_qk=28, d_v=28, n_layers=4),
    "target": dict(d_model=128, d_mlp=512, n_heads=4, d_qk=32, d_v=32, n_layers=4),
}
#: budgets, in steps of the target whose training FLOPs a run spends.
BUDGETS = (1000, 3000, 9000)
#: growth-tax runs: start -> half at these fractions of the run's steps, long budget.
TAX_AT = (0.1, 0.25, 0.45)
TAX_BUDGET = 3000
VAL_EVERY = 100
ROOT = RUNS / "envelope"


def _sizes(size: str) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in SIZES[size].items()) + "}"


def _common(seed: int, steps: int) -> list[str]:
    return [
        "optim.schedule=wsd",
        f"seed={seed}",
        f"budget.steps={steps}",
        f"budget.model={_sizes('target')}",  # FLOPs of the target's steps
        f"trainer.val_check_interval={VAL_EVERY}",
    ]


def fixed_job(size: str, steps: int, seed: int = 0) -> tuple[Path, list[str]]:
    model = [f"model.{k}={v}" for k, v in SIZES[size].items()]
    overrides = ["model=scale_target", *model, "growth=none", *_common(seed, steps)]
    return ROOT / f"fixed_{size}_{steps}_s{seed}", overrides


def tax_job(at: float, end: str = "half", seed: int = 0) -> tuple[Path, list[str]]:
    stage = _sizes(end)[1:-1]
    overrides = [
        "model=scale_start",
        "growth.name=tax",
        f"growth.stages=[{{step: {at}, {stage}}}]",
        *_common(seed, TAX_BUDGET),
    ]
    return ROOT / f"tax_{end}_{at}_{TAX_BUDGET}_s{seed}", overrides


def jobs() -> dict[Path, list[str]]:
    """Most informative first: the sizes between start and target at the budgets the
    scale tables have, the tax, then the long budget where the target may win."""
    ordered = [fixed_job("half", 3000), tax_job(0.25), fixed_job("mid", 3000)]
    ordered += [fixed_job("half", 1000), fixed_job("mid", 1000)]
    ordered += [tax_job(0.1), tax_job(0.45)]
    ordered += [fixed_job(s, 9000) for s in ("target", "mid", "half")]
    ordered += [fixed_job(s, b) for s in ("start", "target") for b in (1000, 3000)]
    ordered += [fixed_job("start", 9000)]
    return dict(ordered)


def _result(folder: Path) -> dict[str, Any] | None:
    summary = folder / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1, help="processes at a time")
    parser.add_argument("--table-only", action="store_true", help="run nothing")
    args = parser.parse_args()
    if not args.table_only:
        todo = jobs()
        print(f"{len(todo)} jobs ({sum(_result(p) is not None for p in todo)} done)", flush=True)
        run_all(todo, args.jobs)
    found = {p.name: r for p in jobs() if (r := _result(p)) is not None}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "envelope_runs.json").write_text(json.dumps(found, indent=2) + "\n")
    print(f"{len(found)} runs finished")


if __name__ == "__main__":
    main()
