"""Why short pilots mislead ``progrow-plan``, and the ladder that follows from it.

    python experiments/plan_pilots.py --run     # the grid of fixed-size pilots (cached)
    python experiments/plan_pilots.py           # results/plan_pilots.{md,json} from it

1. **The grid**: the 0.87M family of section 7 (start 0.12M, inter 0.24M, half 0.37M,
   mid 0.68M, target 0.87M) and four sizes below the start (0.08M, 0.04M, 0.02M,
   0.01M), each trained fixed-size (WSD, seed 0, ``experiment=compare``, warmup at most
   10% of the steps, as the planner's pilots) on the FLOPs of 10, 30, 100 and 300 steps of
   the target (an iso-FLOP slice per budget); pilots of fewer than 20 steps are not run.
   Cached under ``experiments/runs/plan_scouts/pilots``; the table keeps its points in
   ``results/plan_pilots.json``, so it is rebuilt without the cache.
2. **The slices**, with the envelope's whole runs (results/envelope_runs.json and the
   scale tables: 1000, 3000 and 9000 target steps) as the last rows: per budget, each
   size's final validation loss and its tokens per parameter, and the best size.
3. **The planner's default ladder against the envelope**: ``progrow-plan`` on the five
   sizes at 1000, 3000 and 9000 target steps, pilots 15% of each budget
   (:data:`VALIDATE`, the scouts and the window of tokens per parameter at their
   defaults), its pilots refitted with both loss forms, each size's predicted final loss
   against the measured one, and whether the size ranked first is the measured best.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_forms import FITTERS, envelope_losses, score
from run import RESULTS, RUNS

CACHE = RUNS / "plan_scouts" / "pilots"
#: The grid's sizes, smallest first (the start's other settings: model=scale_start).
SIZES = {
    "0.01M": dict(d_model=16, d_mlp=64, n_heads=1, d_qk=8, d_v=8, n_layers=1),
    "0.02M": dict(d_model=24, d_mlp=96, n_heads=1, d_qk=8, d_v=8, n_layers=1),
    "0.04M": dict(d_model=32, d_mlp=128, n_heads=2, d_qk=8, d_v=8, n_layers=2),
    "0.08M": dict(d_model=48, d_mlp=192, n_heads=2, d_qk=12, d_v=12, n_layers=2),
    "start": dict(d_model=64, d_mlp=256, n_heads=2, d_qk=16, d_v=16, n_layers=2),
    "inter": dict(d_model=80, d_mlp=320, n_heads=2, d_qk=20, d_v=20, n_layers=3),
    "half": dict(d_model=96, d_mlp=384, n_heads=3, d_qk=24, d_v=24, n_layers=3),
    "mid": dict(d_model=112, d_mlp=448, n_heads=4, d_qk=28, d_v=28, n_layers=4),
    "target": dict(d_model=128, d_mlp=512, n_heads=4, d_qk=32, d_v=32, n_layers=4),
}
RUNGS = (10, 30, 100, 300)
PLANS = RUNS / "plan_validate"
#: The planner's command for a budget (``{steps}``); the family's sizes as in section 7.
VALIDATE = [
    "--sizes", "scale_start", *(
        "{" + ", ".join(f"{k}: {v}" for k, v in SIZES[n].items()) + "}"
        for n in ("inter", "half", "mid")
    ), "scale_target", "--intermediates", "0", "--budget-steps", "{steps}",
    "--pilot-fraction", "0.15", "--jobs", "2", "--cache", str(PLANS / "pilots"),
    "--out", str(PLANS / "plan_{steps}"), "--name", "plan_validate_{steps}",
    "--conf-dir", str(PLANS / "conf"), "optim.schedule=wsd",
]  # fmt: skip
#: The planner's labels of the family's sizes.
LABELS = {"scale_start": "start", "size2": "inter", "size3": "half", "size4": "mid",
          "scale_target": "target"}  # fmt: skip
BUDGETS = (1000, 3000, 9000)
#: The loss forms, in the tables' order.
FORMS = ("chinchilla", "kaplan")
MIN_STEPS = 20


def _jobs() -> list[tuple[str, int, Any]]:
    from progrow.app import family as fam
    from progrow.app import pilots as pl

    recipe = fam.recipe(["optim.schedule=wsd"], "scale_start")
    sizes = {
        name: fam._size(name, recipe.base_config.replace(**dims), recipe, name, None)
        for name, dims in SIZES.items()
    }
    target_step = sizes["target"].step_flops(recipe.tokens_per_step)
    jobs = []
    for rung in RUNGS:
        for name, size in sizes.items():
            steps = round(rung * target_step / size.step_flops(recipe.tokens_per_step))
            if steps >= MIN_STEPS:
                warmup = min(recipe.warmup_steps, math.ceil(0.1 * steps))
                jobs.append((name, rung, pl.fixed_job(size, steps, recipe, CACHE, warmup)))
    return jobs


def _points(run: bool, parallel: int) -> list[dict[str, Any]]:
    from progrow.app import pilots as pl

    jobs = _jobs()
    if run:
        pl.run_pilots([j for _, _, j in jobs], pl.LAUNCHERS["subprocess"], parallel, print)
    out = []
    for name, rung, job in jobs:
        result = pl.read_run(job.folder)
        if result is not None:
            out.append({"size": name, "rung": rung, "steps": job.steps, "params": result.params,
                        "tokens": result.tokens, "flops": result.flops,
                        "loss": result.val_loss})  # fmt: skip
    return out


def _whole(grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The envelope's whole fixed runs (seed 0, :func:`plan_forms.envelope_losses`), with
    their tokens from the grid's FLOPs per token."""
    per_token = {p["size"]: p["flops"] / p["tokens"] for p in grid}
    params = {p["size"]: p["params"] for p in grid}
    target = next(p for p in grid if p["size"] == "target")
    target_step = target["flops"] / target["steps"]
    return [
        {"size": size, "rung": steps, "steps": None, "params": params[size],
         "flops": steps * target_step, "tokens": steps * target_step / per_token[size],
         "loss": loss}
        for (size, steps), loss in sorted(envelope_losses().items(), key=lambda kv: kv[0][1])
    ]  # fmt: skip


#: Pilot designs replayed on the grid: (name, window of tokens per parameter, the
#: largest rung, with the sizes below the start or not).
DESIGNS = [
    ("family only, every rung", (0.0, math.inf), 300, False),
    ("all nine sizes, every rung", (0.0, math.inf), 300, True),
    ("all nine sizes, rungs to 100", (0.0, math.inf), 100, True),
    ("window 3-100", (3.0, 100.0), 300, True),
    ("window 5-300", (5.0, 300.0), 300, True),
    ("window 10-200", (10.0, 200.0), 300, True),
    ("window 10-1000", (10.0, 1000.0), 300, True),
    ("window 3-100, rungs to 100", (3.0, 100.0), 100, True),
]


def _replay(grid: list[dict[str, Any]], whole: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each design's pilots of the grid refitted with both forms: which size each ranks
    first at each whole-run budget, against the measured best. No training."""
    family_names = ("start", "inter", "half", "mid", "target")
    family = {
        p["size"]: {"params": p["params"], "flops_per_token": p["flops"] / p["tokens"]}
        for p in grid if p["size"] in family_names
    }  # fmt: skip
    target = next(p for p in grid if p["size"] == "target")
    unit = target["flops"] / target["steps"]
    rows = []
    for name, (lo, hi), top, below in DESIGNS:
        pts = [
            p for p in grid
            if p["rung"] <= top and lo <= p["tokens"] / p["params"] <= hi
            and (below or p["size"] in family)
        ]  # fmt: skip
        cost = sum(p["flops"] for p in pts) / unit
        n, d, loss = ([p[k] for p in pts] for k in ("params", "tokens", "loss"))
        for form in FORMS:
            fit = FITTERS[form][0](n, d, loss)
            cells = [
                {"steps": steps, "share": cost / steps,
                 **score(fit, family, steps * unit, _measured(whole, steps))}
                for steps in BUDGETS
            ]  # fmt: skip
            rows.append({"design": name, "pilots": len(pts), "form": form, "budgets": cells})
    return rows


def _measured(whole: list[dict[str, Any]], steps: int) -> dict[str, float]:
    return {w["size"]: w["loss"] for w in whole if w["rung"] == steps}


def _replay_table(rows: list[dict[str, Any]]) -> list[str]:
    head = " | ".join(f"{b} steps: ranks first (pilots' share), max error" for b in BUDGETS)
    lines = [f"| pilots on the grid | form | {head} |", "|---|---|" + "---|" * len(BUDGETS)]
    for r in rows:
        cells = " | ".join(
            f"{c['picked']} ({'yes' if c['right'] else '**no**'}; {100 * c['share']:.0f}%), "
            f"{c['max_abs_error']:.3f}"
            for c in r["budgets"]
        )
        lines.append(f"| {r['design']} ({r['pilots']}) | {r['form']} | {cells} |")
    return lines


def _plan(steps: int, run: bool) -> dict[str, Any] | None:
    """The points of the plan at ``steps`` (running it if asked and missing)."""
    from progrow.app.plan import main as plan_main

    path = PLANS / f"plan_{steps}" / "plan.json"
    if run and not path.is_file():
        plan_main([a.replace("{steps}", str(steps)) for a in VALIDATE])
    if not path.is_file():
        return None
    plan = json.loads(path.read_text())
    return {
        "budget_flops": plan["budget"]["flops"], "share": plan["pilots"]["fraction"],
        "family": {LABELS[f["label"]]: {"params": f["params"],
                                        "flops_per_token": f["flops_per_token"]}
                   for f in plan["family"]},
        "pilots": [{"label": r["label"], "params": r["params"], "tokens": r["tokens"],
                    "loss": r["val_loss"]} for r in plan["pilots"]["runs"]],
        "recommended": LABELS.get(plan["compute_optimal"]["label"]),
    }  # fmt: skip


def _validate(plans: dict[str, Any], whole: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Both forms refitted to each plan's pilots, against the measured whole runs."""
    rows = []
    for steps, plan in sorted(plans.items(), key=lambda kv: int(kv[0])):
        pts = plan["pilots"]
        n, d, loss = ([p[k] for p in pts] for k in ("params", "tokens", "loss"))
        measured = _measured(whole, int(steps))
        for form in FORMS:
            fit = FITTERS[form][0](n, d, loss)
            scored = score(fit, plan["family"], plan["budget_flops"], measured)
            picked, best = scored["picked"], scored["best_measured"]  # picked: the plan's choice
            rows.append({
                "steps": int(steps), "share": plan["share"], "pilots": len(pts), "form": form,
                "formula": fit.formula(), **scored,
                "regret": measured[picked] - measured[best] if picked in measured else None,
            })  # fmt: skip
    return rows


def _validation_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| budget (target steps) | pilots (share) | form | predicted / measured per size "
        "| ranks first | measured best | regret | max error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sizes = ", ".join(
            f"{k} {v:.3f}/" + (f"{r['measured'][k]:.3f}" if k in r["measured"] else "-")
            for k, v in r["predicted"].items()
        )
        ok = "yes" if r["right"] else "**no**"
        regret = "not run" if r["regret"] is None else f"{r['regret']:+.3f}"
        lines.append(
            f"| {r['steps']} | {r['pilots']} ({100 * r['share']:.0f}%) | {r['form']} | {sizes} "
            f"| {r['picked']} ({ok}) | {r['best_measured']} | {regret} | {r['max_abs_error']:.3f} |"
        )
    return lines


def _table(points: list[dict[str, Any]]) -> list[str]:
    names = list(SIZES)
    lines = [
        "| budget (target steps) | " + " | ".join(names) + " | best (tokens/param) |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for rung in sorted({p["rung"] for p in points}):
        row = {p["size"]: p for p in points if p["rung"] == rung}
        best = min(row.values(), key=lambda p: p["loss"])
        cells = [
            "-" if n not in row else (
                f"**{row[n]['loss']:.3f}**" if row[n] is best else f"{row[n]['loss']:.3f}"
            ) + f" ({row[n]['tokens'] / row[n]['params']:.3g})"
            for n in names
        ]  # fmt: skip
        kind = "pilot" if rung in RUNGS else "whole run"
        lines.append(
            f"| {rung} ({kind}) | " + " | ".join(cells)
            + f" | {best['size']} ({best['tokens'] / best['params']:.3g}) |"
        )  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="store_true", help="run the grid's missing pilots")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    out_json = RESULTS / "plan_pilots.json"
    kept = json.loads(out_json.read_text()) if out_json.is_file() else {"grid": []}
    grid = _points(args.run, args.jobs) if CACHE.is_dir() else kept["grid"]
    whole = _whole(grid)
    plans = dict(kept.get("plans", {}))
    for steps in BUDGETS:
        found = _plan(steps, args.run)
        if found is not None:
            plans[str(steps)] = found
    rows = _validate(plans, whole)
    replay = _replay(grid, whole)
    out_json.write_text(
        json.dumps(
            {"grid": grid, "whole": whole, "plans": plans, "rows": rows, "replay": replay},
            indent=1,
        )
        + "\n"
    )
    lines = [
        "Final validation loss (tokens per parameter) of fixed sizes at equal FLOPs: "
        "the pilots' grid, then the envelope's whole runs. Bold: the best size per budget.",
        "",
        *_table(grid + whole),
        "",
        "Pilot designs replayed on the grid (its points refitted, no training): the size "
        "each ranks first at each whole-run budget (measured best: inter, half, mid), the "
        "pilots' FLOPs as a share of that budget, the largest error over measured sizes.",
        "",
        *_replay_table(replay),
        "",
        "progrow-plan's default ladder (scouts, 3 to 100 tokens per parameter), pilots 15% "
        "of the budget: predicted against measured final loss of each size on the budget. "
        "Regret: the measured loss of the size ranked first minus the best measured (not "
        "run: that size was not trained on this budget).",
        "",
        *_validation_table(rows),
    ]
    (RESULTS / "plan_pilots.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
