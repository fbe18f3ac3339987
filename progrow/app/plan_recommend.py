"""The plan's recommendation, one line: grow with the chosen schedule (its growth config
written, :mod:`progrow.app.plan_growth_yaml`) or train one size without growing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from progrow.app.plan_growth_yaml import run_command, write_schedule
from progrow.app.plan_options import PlanOptions
from progrow.app.plan_report import stages_text

#: A plan's pilots should spend at most about this share of its budget.
PILOT_SHARE_GOAL = 0.15


def recommend(
    plan: dict[str, Any],
    opts: PlanOptions,
    family: Sequence[Any],
    chosen: Any,
    recipe: Any,
    name: str,
    budget: float,
) -> dict[str, Any]:
    """Grow with the chosen schedule if it has stages and its predicted loss is no worse
    than the best fixed size's (only the target's, with ``--insist-target``); else train
    that fixed size. Writes the growth config whenever the chosen schedule has stages."""
    fixed = plan["fixed_at_budget"]
    options = [family[-1].label] if opts.insist_target else list(fixed)
    fixed_best = min(options, key=lambda k: fixed[k])
    fraction = plan["pilots"]["fraction"]
    pilots = f"pilots used {100 * fraction:.1f}% of the budget"
    if fraction > PILOT_SHARE_GOAL + 1e-3:  # the ladder hits its share up to rounding
        pilots += f" (more than the {100 * PILOT_SHARE_GOAL:.0f}% a plan should spend)"
    out: dict[str, Any] = {"growth_yaml": None}
    if chosen.stages:
        out["growth_yaml"], out["command"] = write_schedule(
            opts, family, chosen, recipe, name, budget
        )
    target, best = family[-1].label, plan["compute_optimal"]["label"]
    versus = f"{target} fixed {fixed[target]:.4f}" + (
        " (the best fixed size)"
        if best == target
        else f", best fixed size {best} {fixed[best]:.4f}"
    )
    caveat = "; unreliable: see the warning above" if plan["model"]["warning"] else ""
    if chosen.stages and chosen.loss <= fixed[fixed_best] + 1e-9:
        key = "insist" if opts.insist_target else "schedule"
        out.update(kind="grow", loss=chosen.loss)
        out["line"] = (
            f"recommendation: grow with this schedule: {stages_text(plan, key)} "
            f"({out['growth_yaml']}): predicted final loss {chosen.loss:.4f} vs {versus}; "
            f"{pilots}{caveat}"
        )
        return out
    size = next(s for s in family if s.label == fixed_best)
    steps = max(1, round(budget / size.step_flops(recipe.tokens_per_step)))
    out.update(kind="fixed", size=fixed_best, loss=fixed[fixed_best])
    out["fixed_command"] = run_command(recipe, size.model_args, "none", steps, None)
    grown = f"; growing per the schedule: {chosen.loss:.4f}" if chosen.stages else ""
    out["line"] = (
        f"recommendation: train size {fixed_best} without growing: predicted final loss "
        f"{fixed[fixed_best]:.4f} vs {versus}{grown}; {pilots}{caveat}"
    )
    return out
