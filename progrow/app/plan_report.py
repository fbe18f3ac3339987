"""The plan as console lines, what ``progrow-plan`` prints at the end: (a) to (e), the
fit, and where the files are."""

from __future__ import annotations

import math
from typing import Any


def report(plan: dict[str, Any]) -> list[str]:
    """The plan as console lines: (a) to (e), the fit, and where the files are."""
    fit, loo, cl = plan["fit"], plan["fit"]["loo"], plan["curves_loo"]
    other = plan["other_form"]
    co, tg, env = plan["compute_optimal"], plan["target"], plan["envelope"]
    n_star = co["n_star"]
    star = (
        ""
        if n_star is None or not math.isfinite(n_star)
        else f"; continuous optimum N* = {n_star:.3g} params (C = 6ND), nearest "
        f"family size {co['nearest']}"
    )
    segs = ", ".join(f"{s['size']} from {s['from']:.2g}" for s in env["segments"])
    saving = env["saving_vs_target"]
    save = (
        "the target never ends that low"
        if saving is None
        else f"a fixed {tg['label']} needs {env['target_iso_multiple']:.2f}x the budget to end "
        f"there: following the envelope saves {max(0.0, 100 * saving):.0f}% against it"
    )
    sch, ins = plan["schedule"], plan["insist"]
    insist = (
        ""
        if ins["end"] == sch["end"]
        else f"; insisting on {tg['label']}: {stages_text(plan, 'insist')}, predicted "
        f"{ins['loss']:.4f} ({ins['cost']:+.4f})"
    )
    pilots = plan["pilots"]
    lines = [
        f"data: {pilots['count']} fixed-size runs ({pilots['ran']} run now), "
        f"{pilots['flops']:.3g} FLOPs = {100 * pilots['fraction']:.1f}% of the budget",
        *(f"  note: {n}" for n in pilots["notes"]),
        f"fit ({fit['form']}): {fit['formula']} (Huber {fit['huber_delta']:g} on log-loss, "
        f"L-BFGS from a grid; {fit['data']})",
        f"check ({other['form']}): {other['formula']}, best size at the budget "
        f"{other['best_at_budget']}",
        f"leave-one-out error: {fit['form']} rmse {_rmse(loo)}; {other['form']} rmse "
        f"{_rmse(other['loo'])}; per-size curves {_curves_error(cl)}",
        f"model: {plan['model']['why']}",
        *([f"warning: {plan['model']['warning']}"] if plan["model"]["warning"] else []),
        f"(a) compute-optimal fixed size: {co['label']}, predicted {co['loss']:.4f}{star}",
        f"(b) target {tg['label']} on the whole budget: predicted {tg['loss']:.4f}",
        f"(c) envelope: {segs} FLOPs; at the budget {env['loss_at_budget']:.4f}; {save}",
        f"(d) schedule on the envelope: {stages_text(plan, 'schedule')}; ends at "
        f"{sch['end']}, predicted {sch['loss']:.4f}{insist}",
        plan["recommendation"]["line"],
    ]
    rec = plan["recommendation"]
    command = rec.get("command") if rec["kind"] == "grow" else rec.get("fixed_command")
    if command:
        lines.append(f"run: {command}")
    if rec["growth_yaml"]:
        lines.append(f"growth config: {rec['growth_yaml']}")
    lines.append(f"plan: {plan['json']}; plot: {plan['plot']}")
    return lines


def stages_text(plan: dict[str, Any], key: str) -> str:
    """The schedule ``plan[key]`` in words: ``start -> size at 40% of the steps (...)``."""
    s = plan[key]
    steps = [
        f"-> {st['size']} at {100 * st['step_fraction']:.0f}% of the steps "
        f"({100 * st['flops_fraction']:.0f}% of the FLOPs)"
        for st in s["stages"]
    ]
    return " ".join([s["start"], *steps]) if steps else f"{s['start']} (no growth)"


def _rmse(loo: dict[str, Any]) -> str:
    if not loo["predicted"]:
        return "not computable (5 runs or fewer: none can be held out)"
    return f"{loo['rmse']:.4f} (max {loo['max_abs']:.4f}, {loo['predicted']} runs)"


def _curves_error(loo: dict[str, Any]) -> str:
    """The per-size curves' leave-one-out error, or why there is none: a curve through
    two pilots leaves none to hold out (--pilot-budgets 2)."""
    if not loo["predicted"]:
        return "not computable (a size needs 3 pilots to hold one out: --pilot-budgets >= 3)"
    return f"rmse {loo['rmse']:.4f} (max {loo['max_abs']:.4f}, {loo['predicted']} runs)"
