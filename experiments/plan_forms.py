"""Which loss form ``progrow-plan`` should extrapolate with: both forms, fitted to the
same data, against the measured runs they predict.

    python experiments/plan_forms.py

No training: it reads the pilots of two plans and the whole runs measured for them.

* **envelope 3000**: the 0.87M family (start, half-way, mid, target) at 3000 target
  steps, WSD; the 8 pilots of ``progrow-plan --budget-steps 3000 --pilot-fraction 0.2
  --pilot-budgets 2`` (experiments/README.md section 7, cached under
  ``experiments/runs/plan_envelope``; their points are kept in
  ``results/plan_forms.json``, so this script runs without the cache), measured against
  the envelope's fixed runs at 1000 and 3000 target steps (results/envelope_runs.json,
  results/scale_*.json).
* **plan_check 4000**: the tiny/small family of experiments/plan_check.py at 4000 steps
  of ``small``, its 9 pilots (15% of the budget) and its measured whole runs.

For each set of fit data (the pilots alone; for the envelope also the pilots with the
fixed runs of 1000 target steps, a third of the budget) and each form (Kaplan et al.'s
interaction form, Hoffmann et al.'s additive form, as :mod:`progrow.app.scaling_kaplan`
and :mod:`progrow.app.scaling` fit them), the predicted final loss of every size on the
measured budgets, the leave-one-out error on the fit data, and whether the size it
ranks first is the measured best. Writes ``results/plan_forms.{md,json}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import RESULTS, RUNS

from progrow.app import scaling, scaling_kaplan

FITTERS: dict[str, tuple[Callable[..., Any], Callable[[Any], list[float]]]] = {
    "kaplan": (scaling_kaplan.fit_kaplan, scaling_kaplan.warm_start),
    "chinchilla": (scaling.fit_loss, scaling.warm_start),
}
ENVELOPE_PLAN = RUNS / "plan_envelope" / "plan_3000" / "plan.json"
#: The envelope's size names, by the planner's labels.
NAMES = {"scale_start": "start", "size2": "half", "size3": "mid", "scale_target": "target"}


def _plan_points(plan: dict[str, Any]) -> dict[str, Any]:
    """The family and pilots of a plan.json, as this script keeps them."""
    return {
        "budget_flops": plan["budget"]["flops"],
        "family": {
            f["label"]: {"params": f["params"], "flops_per_token": f["flops_per_token"],
                         "step_flops": f["step_flops"]}
            for f in plan["family"]
        },
        "pilots": [
            {"label": r["label"], "params": r["params"], "tokens": r["tokens"],
             "flops": r["flops"], "loss": r["val_loss"]}
            for r in plan["pilots"]["runs"]
        ],
    }  # fmt: skip


def envelope_losses() -> dict[tuple[str, int], float]:
    """The envelope's fixed runs (seed 0, WSD): (its size name, target steps) -> final
    loss, from results/envelope_runs.json and, for the start and target at 1000 and 3000
    steps, the scale tables."""
    out: dict[tuple[str, int], float] = {}
    for name, run in json.loads((RESULTS / "envelope_runs.json").read_text()).items():
        if name.startswith("fixed_") and name.endswith("_s0"):
            _, size, steps, _ = name.split("_")
            out[(size, int(steps))] = run["val_loss"]
    for budget, steps in (("short", 1000), ("long", 3000)):
        names = {"fixed start size (reference)": "start", f"fixed target, {steps} steps": "target"}
        for row in json.loads((RESULTS / f"scale_{budget}.json").read_text())["tables"]["wsd"]:
            if row["run"] in names and 0 in row["seeds"]:
                out[(names[row["run"]], steps)] = row["final_val_loss"][row["seeds"].index(0)]
    return out


def score(
    fit: Any, family: dict[str, dict[str, float]], flops: float, measured: dict[str, float]
) -> dict[str, Any]:
    """``fit``'s predicted final loss of each size of ``family`` (``params``,
    ``flops_per_token``) after ``flops``, the size it ranks first, the measured best of
    ``measured``, and the largest error over the measured sizes."""
    predicted = {
        label: float(fit.loss(size["params"], flops / size["flops_per_token"]))
        for label, size in family.items()
    }
    picked = min(predicted, key=lambda k: predicted[k])
    best = min(measured, key=lambda k: measured[k])
    return {
        "predicted": predicted, "measured": measured, "picked": picked, "best_measured": best,
        "right": picked == best,
        "max_abs_error": max(abs(predicted[k] - measured[k]) for k in measured),
    }  # fmt: skip


def _envelope_measured() -> dict[tuple[str, int], float]:
    """Fixed runs of the envelope of the plan's sizes: (planner label, target steps) ->
    loss (the envelope's other sizes were not in the plan's family)."""
    label = {v: k for k, v in NAMES.items()}
    return {(label[s], st): v for (s, st), v in envelope_losses().items() if s in label}


def _cases(kept: dict[str, Any]) -> list[dict[str, Any]]:
    """Each fit-data set with the budgets it predicts and what was measured there."""
    env = kept["envelope"]
    fam = env["family"]
    target_step = fam["scale_target"]["step_flops"]
    measured = _envelope_measured()
    by_budget: dict[int, dict[str, float]] = {}
    for (label, steps), loss in measured.items():
        by_budget.setdefault(steps, {})[label] = loss

    def run_point(label: str, steps: int) -> dict[str, Any]:
        flops = steps * target_step
        tokens = flops / fam[label]["flops_per_token"]
        return {"label": label, "params": fam[label]["params"], "flops": flops,
                "tokens": tokens, "loss": measured[(label, steps)]}  # fmt: skip

    third = [run_point(label, 1000) for label in fam if (label, 1000) in measured]
    check = kept["plan_check"]
    return [
        {"case": "envelope 3000", "data": "8 pilots", "family": fam, "points": env["pilots"],
         "budget_flops": env["budget_flops"], "unit": target_step,
         "measured": {s: by_budget[s] for s in (1000, 3000)}},
        {"case": "envelope 3000", "data": "8 pilots + the fixed runs at 1000 target steps",
         "family": fam, "points": env["pilots"] + third, "budget_flops": env["budget_flops"],
         "unit": target_step, "measured": {3000: by_budget[3000]}},
        {"case": "plan_check 4000", "data": "9 pilots", "family": check["family"],
         "points": check["pilots"], "budget_flops": check["budget_flops"],
         "unit": check["family"]["small"]["step_flops"],
         "measured": {4000: check["measured"]}},
    ]  # fmt: skip


def _evaluate(case: dict[str, Any]) -> list[dict[str, Any]]:
    pts = case["points"]
    n, d, loss = ([p[k] for p in pts] for k in ("params", "tokens", "loss"))
    spent = sum(p["flops"] for p in pts) / case["budget_flops"]
    rows = []
    for form, (fitter, warm) in FITTERS.items():
        fit = fitter(n, d, loss)
        held = scaling.loo_fit(n, d, loss, fit, fit=fitter, warm=warm)
        for steps, measured in case["measured"].items():
            rows.append({
                "case": case["case"], "data": case["data"], "data_share": spent, "form": form,
                "formula": fit.formula(), "loo_rmse": held.rmse, "budget_steps": steps,
                **score(fit, case["family"], steps * case["unit"], measured),
            })  # fmt: skip
    return rows


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| plan | fit data (share of the budget) | form | leave-one-out rmse | predicts at "
        "(steps) | predicted / measured per size | ranks first | measured best | max error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sizes = ", ".join(
            f"{NAMES.get(k, k)} {v:.3f}/"
            + (f"{r['measured'][k]:.3f}" if k in r["measured"] else "-")
            for k, v in r["predicted"].items()
        )
        ok = "yes" if r["right"] else "**no**"
        lines.append(
            f"| {r['case']} | {r['data']} ({100 * r['data_share']:.0f}%) | {r['form']} | "
            f"{r['loo_rmse']:.3f} | {r['budget_steps']} | {sizes} | "
            f"{NAMES.get(r['picked'], r['picked'])} ({ok}) | "
            f"{NAMES.get(r['best_measured'], r['best_measured'])} | {r['max_abs_error']:.3f} |"
        )
    return lines


def main() -> None:
    out_json = RESULTS / "plan_forms.json"
    kept = json.loads(out_json.read_text())["inputs"] if out_json.is_file() else {}
    if ENVELOPE_PLAN.is_file():  # the cache, when present, is the source
        kept["envelope"] = _plan_points(json.loads(ENVELOPE_PLAN.read_text()))
    check = json.loads((RESULTS / "plan_check.json").read_text())
    fixed = {k: v for k, v in check["measured"].items() if k in {"tiny", "interp1", "small"}}
    kept["plan_check"] = {**_plan_points(check["plan"]), "measured": fixed}
    rows = [row for case in _cases(kept) for row in _evaluate(case)]
    out_json.write_text(json.dumps({"inputs": kept, "rows": rows}, indent=2) + "\n")
    lines = [
        "Loss forms for progrow-plan: predicted (fitted to the data named) against measured "
        "final validation loss of fixed sizes on the whole budget.",
        "",
        *_table(rows),
    ]
    (RESULTS / "plan_forms.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
