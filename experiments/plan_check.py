"""Check ``progrow-plan``'s predictions against whole runs on the budget it planned for.

    python experiments/plan_check.py             # plan, then each size and the schedule
    python experiments/plan_check.py --jobs 2    # two runs at a time

1. ``progrow-plan`` on a small family (``model=tiny``, one interpolated size,
   ``model=small``; the standard library's bytes, sequences of 32, batch 8, WSD) and a
   budget of 4000 steps of ``small``, pilots spending 15% of it (``PLAN`` below);
2. every size of the family trained fixed-size on the whole budget, and the run the plan
   recommends (its growth schedule, or its fixed size);
3. predicted against measured final validation loss, written to
   ``experiments/results/plan_check.{md,json}``.

Runs are cached per folder under ``experiments/runs/plan_check/`` (experiments/run.py's
job cache; the pilots in the planner's own cache there).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import RESULTS, RUNS, run_all  # the sibling runner's job cache

ROOT = RUNS / "plan_check"
#: The whole standard library (as experiments/README.md's runs): with data.max_bytes=200000
#: the runs on the budget repeat the data ~40 times and the validation loss stops falling.
OVERRIDES = [
    "data.seq_len=32",
    "data.batch_size=8",
    "optim.warmup_steps=10",
    "optim.schedule=wsd",
]
SIZES = ["tiny", "small"]
PLAN = [
    "--sizes", *SIZES, "--intermediates", "1", "--budget-steps", "4000",
    "--pilot-fraction", "0.15", "--pilot-ratio", "2", "--name", "plan_check",
    # the ladder and form this check was run with: every size at 3 budgets, the additive
    # form (before scouts, the window of tokens per parameter and the interaction form
    # became the defaults)
    "--pilot-budgets", "3", "--scouts", "0", "--pilot-tokens-per-param", "0,inf",
    "--form", "chinchilla",
    "--cache", str(ROOT / "pilots"), "--out", str(ROOT / "plan"),
    "--conf-dir", str(ROOT / "conf"), *OVERRIDES,
]  # fmt: skip


#: The second plan: the same pilots, ending at small whatever it costs.
INSIST = ["--insist-target", "--name", "plan_check_insist", "--out", str(ROOT / "plan_insist")]


def _grown_job(command: str, folder: Path) -> tuple[Path, list[str]]:
    """The printed command as a run_job job (``--config-dir`` as a search path)."""
    args = shlex.split(command)  # python -m progrow.train --config-dir DIR experiment=...
    at = args.index("--config-dir")
    overrides = [a for a in args[at + 2 :] if a != "experiment=compare"]
    return folder, [*overrides, f"hydra.searchpath=[file://{args[at + 1]}]"]


def _whole_runs(plan: dict[str, Any], insist: dict[str, Any]) -> dict[str, tuple[Path, list[str]]]:
    """Each size fixed on the whole budget, and each plan's growing run, by label."""
    from progrow.app.family import build_family, recipe
    from progrow.app.pilots import fixed_job

    rec = recipe(OVERRIDES, SIZES[0])
    family = build_family(SIZES, None, 1, rec)
    budget = plan["budget"]["flops"]
    jobs = {}
    for size in family:
        steps = max(1, round(budget / size.step_flops(rec.tokens_per_step)))
        job = fixed_job(size, steps, rec, ROOT / "whole", rec.warmup_steps)
        jobs[size.label] = (job.folder, list(job.overrides[1:]))  # run_job adds the experiment
    for label, which in (("grown", plan), ("grown, insisting", insist)):
        command = which["recommendation"].get("command")
        if command:  # the chosen schedule has stages (recommended or not)
            jobs[label] = _grown_job(command, ROOT / "whole" / label.replace(", ", "_"))
    return jobs


def table(plan: dict[str, Any], insist: dict[str, Any], measured: dict[str, float]) -> str:
    plans = {"grown": plan, "grown, insisting": insist}
    fixed = plan["fixed_at_budget"]
    rec = plan["recommendation"]
    pilots, fit = plan["pilots"], plan["fit"]
    lines = [
        "progrow-plan on model=tiny -> model=small (+1 interpolated size), stdlib bytes, "
        f"seq 32, batch 8, WSD, budget {plan['budget']['flops']:.3g} FLOPs (4000 steps of "
        f"small); pilots: {pilots['count']} runs, {100 * pilots['fraction']:.1f}% of the "
        f"budget; fit {fit['formula']}, leave-one-out rmse {fit['loo']['rmse']:.3f}.",
        "",
        "| run on the whole budget | predicted final loss | measured | error |",
        "|---|---|---|---|",
    ]
    for label, loss in fixed.items():
        got = measured.get(label)
        err = "-" if got is None else f"{loss - got:+.3f}"
        lines.append(
            f"| {label}, fixed | {loss:.3f} | {'-' if got is None else f'{got:.3f}'} | {err} |"
        )
    for label, key in (("grown", "schedule"), ("grown, insisting", "insist")):
        if label in measured:
            sched = plans[label][key]
            pred, at = (
                sched["loss"],
                ", ".join(f"{st['step_fraction']:.2f}" for st in sched["stages"]),
            )
            lines.append(
                f"| {label}: {sched['start']} -> {sched['end']} (stages at {at} of the steps) "
                f"| {pred:.3f} | {measured[label]:.3f} | {pred - measured[label]:+.3f} |"
            )
    lines += [
        "",
        f"Recommendation: {rec['line'].removeprefix('recommendation: ')}",
        "",
        "With --insist-target: "
        + insist["recommendation"]["line"].removeprefix("recommendation: "),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    from progrow.app.plan import main as plan_main

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1, help="processes at a time")
    args = parser.parse_args()
    for extra in ([], INSIST):
        if plan_main([*PLAN, *extra, "--jobs", str(args.jobs), "--force"]) != 0:
            sys.exit("progrow-plan failed")
    plan = json.loads((ROOT / "plan" / "plan.json").read_text())
    insist = json.loads((ROOT / "plan_insist" / "plan.json").read_text())
    jobs = _whole_runs(plan, insist)
    run_all(dict(jobs.values()), args.jobs)
    labels = [s["label"] for s in plan["family"]]
    measured = {
        label: float(json.loads((folder / "summary.json").read_text())["val_loss"])
        for label, (folder, _) in jobs.items()
    }
    assert set(labels) <= set(measured), measured
    markdown = table(plan, insist, measured)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "plan_check.md").write_text(markdown)
    (RESULTS / "plan_check.json").write_text(
        json.dumps({"plan": plan, "insist": insist, "measured": measured}, indent=2, default=str)
        + "\n"
    )
    print(markdown)


if __name__ == "__main__":
    main()
