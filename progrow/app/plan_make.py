"""Everything ``progrow-plan`` computes, from its checked command line: the pilots (or
the runs given with ``--runs``), both models fitted to them, the predictions (a) to (d),
the recommendation (:mod:`progrow.app.plan_recommend`), as a JSON-ready dict; writes
``plan.json`` and ``plan.png``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from progrow.app.family import PlanError
from progrow.app.plan_options import PlanOptions, budget_flag, budget_text, default_name
from progrow.app.plan_recommend import recommend
from progrow.app.scaling import HUBER_DELTA


def make_plan(opts: PlanOptions, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything ``progrow-plan`` computes, as a JSON-ready dict; writes the files."""
    from progrow.app import family as fam
    from progrow.app import planning

    overrides = fam.check_overrides(opts.overrides)
    named = [s for s in opts.sizes if isinstance(fam.parse_size(s), str)]
    recipe = fam.recipe(overrides, named[0] if named else None)
    family = fam.build_family(opts.sizes, opts.growth, opts.intermediates, recipe)
    tps = recipe.tokens_per_step
    target_step = family[-1].step_flops(tps)
    budget = opts.budget if opts.budget is not None else (opts.budget_steps or 0) * target_step
    name = opts.name or default_name(opts, family[-1].label)
    scouts = [] if opts.runs else fam.scouts(family[0], opts.scouts, recipe)
    below = f"; scouts (pilots only): {', '.join(map(fam.describe, scouts))}" if scouts else ""
    progress(
        f"family: {', '.join(fam.describe(s) for s in family)}{below}; budget {budget:.3g} "
        f"FLOPs = {budget / target_step:.0f} steps of {family[-1].label} at {tps} tokens/step"
    )
    results, notes = _results(opts, family, scouts, budget, recipe, progress)
    models = _fit(results, opts.form)
    curves = [planning.Curve(s.label, s.params, s.flops_per_token) for s in family]
    plan = {
        "name": name,
        "argv": list(opts.argv),
        "budget": {"flops": budget, "target_steps": budget / target_step,
                   "flag": budget_flag(opts)},
        "scouts": [{"label": s.label, "dims": s.dims, "params": s.params} for s in scouts],
        **_inputs(recipe, family, results, notes, models, curves, budget, opts),
    }  # fmt: skip
    schedules = _predictions(plan, models["fit"], curves, family, budget, tps, opts)
    chosen = schedules["insist" if opts.insist_target else "schedule"]
    plan["recommendation"] = recommend(plan, opts, family, chosen, recipe, name, budget)
    _write_outputs(plan, opts, models["fit"], curves, results, chosen, budget)
    return plan


def _results(
    opts: PlanOptions,
    family: Sequence[Any],
    scouts: Sequence[Any],
    budget: float,
    recipe: Any,
    progress: Callable[[str], None],
) -> tuple[list[Any], list[str]]:
    """The fit's data: the pilots (run or cached; ``scouts`` among them, not in the
    family), or the runs given with ``--runs``."""
    from progrow.app import pilots as pl
    from progrow.app.family import by_dims

    notes: list[str] = []
    if opts.runs:
        results, notes = pl.read_runs(opts.runs)
        for r in results:
            size = by_dims(family, r.dims)
            r.label, r.in_family = (size.label, True) if size else (Path(r.folder).name, False)
        spent = sum(r.flops for r in results)
        if spent >= budget:
            raise PlanError(
                f"{budget_text(opts, budget)}: not above the compute of the runs given "
                f"({spent:.3g} FLOPs); a plan extrapolates from runs much shorter than it"
            )
        return results, notes
    jobs = pl.plan_pilots(
        [*reversed(scouts), *family], budget, recipe, opts.cache, opts.ladder,
        budget_text(opts, budget),
    )  # fmt: skip
    todo = sum(pl.read_run(j.folder) is None for j in jobs)
    progress(
        f"pilots: {len(jobs)} runs under {opts.cache} ({len(jobs) - todo} cached, {todo} to run)"
    )
    results = pl.run_pilots(jobs, pl.LAUNCHERS[opts.launcher], opts.jobs, progress)
    labels = {s.label for s in family}
    for r in results:
        r.in_family = r.label in labels
    return results, notes


def _fit(results: Sequence[Any], form: str) -> dict[str, Any]:
    """Both forms (``form`` the one the plan follows), the per-size curves, and their
    leave-one-out errors."""
    from progrow.app import scaling, scaling_kaplan

    n = [float(r.params) for r in results]
    d = [r.tokens for r in results]
    loss = [r.val_loss for r in results]
    if len(results) < 5:
        raise PlanError(
            f"{len(results)} runs: the fit has 5 parameters and needs 5 or more runs "
            "(more sizes or --pilot-budgets; with --runs, more folders)"
        )
    fitters: dict[str, tuple[Callable[..., Any], Callable[[Any], list[float]]]] = {
        "kaplan": (scaling_kaplan.fit_kaplan, scaling_kaplan.warm_start),
        "chinchilla": (scaling.fit_loss, scaling.warm_start),
    }
    fits, loos = {}, {}
    for name, (fitter, warm) in fitters.items():
        fits[name] = fitter(n, d, loss)
        loos[name] = scaling.loo_fit(n, d, loss, fits[name], fit=fitter, warm=warm)
    other = next(k for k in fitters if k != form)
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        groups.setdefault(r.label, []).append((r.flops, r.val_loss))
    per_size = scaling.loo_curves(groups)
    all_curves = scaling.HeldOut(tuple(e for h in per_size.values() for e in h.errors))
    return {
        "fit": fits[form],
        "loo": loos[form],
        "other": fits[other],
        "other_loo": loos[other],
        "curves_loo": all_curves,
        "curves_loo_per_size": per_size,
    }


def _inputs(
    recipe: Any,
    family: Sequence[Any],
    results: Sequence[Any],
    notes: Sequence[str],
    models: dict[str, Any],
    curves: Sequence[Any],
    budget: float,
    opts: PlanOptions,
) -> dict[str, Any]:
    """The plan's data: recipe, family, pilots (or runs) and the models."""
    tps = recipe.tokens_per_step
    fit, other = models["fit"], models["other"]
    theirs = _best(other, curves, budget)
    spent = sum(r.flops for r in results)
    return {
        "recipe": {"tokens_per_step": tps, "seq_len": recipe.seq_len,
                   "vocab_size": recipe.vocab_size, "overrides": list(recipe.overrides)},
        "family": [{"label": s.label, "dims": s.dims, "params": s.params, "origin": s.origin,
                    "flops_per_token": s.flops_per_token, "step_flops": s.step_flops(tps),
                    "model_args": list(s.model_args)} for s in family],
        "pilots": {"source": "--runs" if opts.runs else "pilots", "count": len(results),
                   "ran": sum(r.ran for r in results), "flops": spent,
                   "fraction": spent / budget, "notes": list(notes),
                   "runs": [{k: v for k, v in r.to_dict().items() if k != "curve"}
                            for r in results]},
        "fit": {**fit.to_dict(), "formula": fit.formula(), "huber_delta": HUBER_DELTA,
                "data": "final validation loss of each run (N: its parameters, D: its tokens)",
                "loo": models["loo"].to_dict()},
        "other_form": {**other.to_dict(), "formula": other.formula(),
                       "loo": models["other_loo"].to_dict(), "best_at_budget": theirs},
        "curves_loo": {**models["curves_loo"].to_dict(), "per_size": {
            k: v.to_dict() for k, v in models["curves_loo_per_size"].items()}},
        "model": _model_choice(models, curves, budget, results, theirs),
    }  # fmt: skip


def _best(fit: Any, curves: Sequence[Any], budget: float) -> str:
    """The family size ``fit`` predicts lowest at ``budget``."""
    return str(min(curves, key=lambda c: c.loss(fit, budget)).label)


def _model_choice(
    models: dict[str, Any],
    curves: Sequence[Any],
    budget: float,
    results: Sequence[Any],
    theirs: str,
) -> dict[str, Any]:
    """Which model the plan uses and why, with warnings where the data undermine it
    (``theirs``: the size the other form ranks first at the budget)."""
    loo, cl, fit, other = models["loo"], models["curves_loo"], models["fit"], models["other"]
    largest = max(r.flops for r in results)
    why = (
        f"the {fit.form} form: the budget is {budget / largest:.0f}x the largest pilot, "
        "beyond every size's measured range: only a parametric form, fitted to all sizes "
        "at once, extrapolates there (a per-size curve continues straight in log-FLOPs "
        "and never flattens); the per-size curves' error is reported as a check"
    )
    warnings = []
    if math.isfinite(loo.rmse) and math.isfinite(cl.rmse) and loo.rmse > 2 * cl.rmse:
        warnings.append(
            f"the fit predicts held-out pilots worse than the per-size curves (rmse "
            f"{loo.rmse:.3g} vs {cl.rmse:.3g}): treat its extrapolation with care; more "
            "pilots (--pilot-budgets, --pilot-fraction) narrow it"
        )
    lowest = min(r.val_loss for r in results)
    if fit.E / lowest >= 0.98:
        warnings.append(
            f"the fit puts the irreducible loss E={fit.E:.4g} at the pilots' lowest loss "
            f"({lowest:.4g}): the pilots do not show how far the loss falls, so every "
            "prediction at the budget is a pessimistic guess; longer pilots "
            "(--pilot-fraction, fewer sizes or --pilot-budgets) or --runs of longer runs"
        )
    n = [float(r.params) for r in results]
    d = [r.tokens for r in results]
    effects = {  # how much the runs' range of each lowers the fitted loss
        "parameters": fit.parameters_effect(min(n), max(n), max(d)),
        "tokens": fit.tokens_effect(min(d), max(d), min(n)),
    }
    for what, effect in effects.items():
        if effect < 0.01 * lowest:
            warnings.append(
                f"in the fit the runs' range of {what} lowers the loss by {effect:.2g} only: "
                f"the pilots never showed more {what} paying off, so the fit cannot tell which "
                "size the budget supports; longer pilots or --runs of longer runs"
            )
    edge = smallest_wins(results)
    if edge is not None:
        warnings.append(
            f"at the largest pilot budget ({edge['flops']:.3g} FLOPs) the smallest size run "
            f"there ({edge['label']}) ended lowest: the pilots never reach the compute where "
            "a larger size pays and extrapolates where it will (in this project's checks "
            "against whole runs the choice was then too small); longer pilots or --runs of "
            "longer runs"
        )
    mine = _best(fit, curves, budget)
    if mine != theirs:
        warnings.append(
            f"the {fit.form} form picks {mine} at the budget, the {other.form} form {theirs}: "
            "the pilots do not decide between them; longer pilots or --runs of longer runs"
        )
    warning = "; ".join(warnings) or None
    return {"used": fit.form, "why": why, "warning": warning}


def smallest_wins(results: Sequence[Any], tolerance: float = 0.1) -> dict[str, Any] | None:
    """The largest budget at which two or more runs spent the same FLOPs (within
    ``tolerance``: an iso-FLOP slice of the pilot ladder), if the one of fewest parameters
    ended lowest there: ``{"flops", "label"}``; else ``None``.

    Example:
        >>> from types import SimpleNamespace as R
        >>> runs = [R(flops=1e9, params=p, val_loss=v, label=f"s{p}")
        ...         for p, v in ((1, 2.0), (2, 2.1))]
        >>> smallest_wins(runs)["label"]
        's1'
        >>> smallest_wins([*runs, R(flops=3e9, params=1, val_loss=1.9, label="s1"),
        ...                R(flops=3.1e9, params=2, val_loss=1.8, label="s2")]) is None
        True
    """
    ordered = sorted(results, key=lambda r: r.flops, reverse=True)
    for r in ordered:
        same = [o for o in ordered if abs(math.log(o.flops / r.flops)) <= math.log1p(tolerance)]
        if len({o.params for o in same}) >= 2:
            lowest = min(same, key=lambda o: o.val_loss)
            if lowest.params == min(o.params for o in same):
                return {"flops": r.flops, "label": lowest.label}
            return None
    return None


def _predictions(
    plan: dict[str, Any],
    fit: Any,
    curves: Sequence[Any],
    family: Sequence[Any],
    budget: float,
    tps: int,
    opts: PlanOptions,
) -> dict[str, Any]:
    """Fill (a) to (d) into ``plan``; returns the envelope schedule and the insisting one."""
    from progrow.app import planning
    from progrow.app.family import nearest

    fixed = {c.label: c.loss(fit, budget) for c in curves}
    best = min(fixed, key=lambda k: fixed[k])
    n_star = fit.optimal_params(budget)
    iso = curves[-1].flops_for(fit, fixed[best]) / budget
    step_flops = [s.step_flops(tps) for s in family]
    natural = planning.envelope_schedule(fit, curves, budget, step_flops, opts.latest)
    insist = planning.insist_schedule(
        fit, curves, budget, step_flops, opts.latest, natural, len(family) - 1
    )
    target = family[-1].label
    plan.update(
        fixed_at_budget=fixed,
        compute_optimal={"label": best, "loss": fixed[best], "n_star": n_star,
                         "nearest": None if math.isnan(n_star) else nearest(family, n_star).label},
        target={"label": target, "loss": fixed[target]},
        envelope={"loss_at_budget": fixed[best], "target_iso_multiple": iso,
                  "saving_vs_target": 1 - 1 / iso if math.isfinite(iso) else None,
                  "segments": [{"size": family[s["size"]].label, "from": s["from"], "to": s["to"]}
                               for s in planning.segments(_envelope(fit, curves, plan, budget))]},
        schedule=_schedule_dict(natural, family, budget, tps),
        insist={**_schedule_dict(insist, family, budget, tps), "cost": insist.loss - natural.loss},
        chosen="insist" if opts.insist_target else "schedule",
    )  # fmt: skip
    return {"schedule": natural, "insist": insist}


def _envelope(
    fit: Any, curves: Sequence[Any], plan: dict[str, Any], budget: float
) -> list[tuple[float, float, int]]:
    """The envelope from a third of the smallest run's FLOPs to 4x the budget."""
    import numpy as np

    from progrow.app.planning import envelope

    lowest = min(r["flops"] for r in plan["pilots"]["runs"])
    return envelope(fit, curves, [float(f) for f in np.geomspace(lowest / 3, budget * 4, 240)])


def _schedule_dict(
    schedule: Any, family: Sequence[Any], budget: float, tokens_per_step: int
) -> dict[str, Any]:
    from progrow.app.planning import step_fractions

    step_flops = [s.step_flops(tokens_per_step) for s in family]
    fractions, steps = step_fractions(schedule, step_flops, budget)
    return {
        "start": family[schedule.start].label,
        "end": family[schedule.end].label,
        "loss": schedule.loss,
        "max_steps": steps,
        "stages": [
            {
                "size": family[j].label,
                "dims": family[j].dims,
                "flops": f,
                "flops_fraction": f / budget,
                "step_fraction": frac,
            }
            for (f, j), frac in zip(schedule.stages, fractions, strict=True)
        ],
    }


def _write_outputs(
    plan: dict[str, Any],
    opts: PlanOptions,
    fit: Any,
    curves: Sequence[Any],
    results: Sequence[Any],
    chosen: Any,
    budget: float,
) -> None:
    """``plan.png`` and ``plan.json`` in ``--out`` (default ``outputs/plan/<name>``)."""
    from progrow.app.plan_plot import plot
    from progrow.app.planning import follow

    out = opts.out or Path("outputs") / "plan" / plan["name"]
    out.mkdir(parents=True, exist_ok=True)
    env = _envelope(fit, curves, plan, budget)
    trace = follow(fit, curves, chosen, budget, points=40, lo=env[0][0])[1]
    growths = [f for f, _ in chosen.stages]
    title = f"progrow-plan {plan['name']}: {fit.formula()}"
    png = plot(out / "plan.png", fit, curves, results, env, trace, budget, growths, title)
    plan["plot"], plan["json"] = str(png), str(out / "plan.json")
    (out / "plan.json").write_text(json.dumps(plan, indent=2, default=str) + "\n")
