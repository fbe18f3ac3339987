"""``progrow-plan``: plan a run from short pilot runs: which size the budget supports,
and whether (and when) to grow into it.

Examples:
    progrow-plan --sizes scale_start scale_target --budget-steps 30000 optim.schedule=wsd
    progrow-plan --sizes scale_start --growth scale_two_stage --budget 3e15 --insist-target
    progrow-plan --sizes scale_start scale_target --budget-steps 30000 --runs outputs/sweep

1. **Pilots.** Every size of the family (``--sizes``, ``--growth``, plus ``--intermediates``
   sizes interpolated between start and target) is trained fixed-size at a few short
   budgets, each as its own ``python -m progrow.train experiment=compare ...`` run (the
   Hydra overrides given are passed to every run), cached per run folder under
   ``--cache``: a second invocation runs no pilot it has. Or ``--runs DIR...`` gives
   finished fixed-size runs instead.
2. **Fit.** ``L(N, D) = E + A/N^alpha + B/D^beta`` (Hoffmann et al. 2022, fitted as
   Besiroglu et al. 2024 redo it: :mod:`progrow.app.scaling`) to the pilots' final
   validation losses (``N`` parameters, ``D`` tokens), and each size's measured curve
   (final loss against log-FLOPs); leave-one-out errors of both. The intermediate
   validations of a pilot are not fit data: taken before its learning rate decayed, they
   lie above what a run that ends there reaches (with WSD, whose decay comes last, by the
   most), so they would bias every prediction up. They are drawn on the plot.
3. **Plan** (:mod:`progrow.app.planning`): (a) the compute-optimal fixed size at the
   budget, (b) the target trained on the whole budget, (c) the envelope (lowest
   predicted loss over sizes at each FLOPs) and what following it saves against the
   target, (d) the schedule that follows it (grow where the next size's curve overtakes
   the current one's), to the size the budget supports or, with ``--insist-target``, on
   to the target, with what insisting costs, and (e) the recommendation, one line:
   ``grow with this schedule`` (written to ``conf/growth/<name>.yaml``, runnable as is)
   or ``train size X without growing``.

Writes ``plan.json`` and ``plan.png`` (predicted and measured loss per size, the
envelope, the plan) to ``--out``. Bad input is refused in one line naming the flag,
exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from progrow.app.family import PlanError
from progrow.app.scaling import HUBER_DELTA

#: A plan's pilots should spend at most about this share of its budget.
PILOT_SHARE_GOAL = 0.15


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (``progrow-plan: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    about = " ".join(__doc__.split("\n\n")[0].split()).strip("`").replace("``: ", ": ")
    p = _Parser(prog="progrow-plan", description=about)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides passed to every run (data.*, optim.*, trainer.*, ...)",
    )
    fam = p.add_argument_group("family")
    fam.add_argument(
        "--sizes",
        nargs="+",
        default=[],
        metavar="SIZE",
        help="model configs (conf/model/NAME.yaml) or inline mappings such as "
        "'{d_model: 96, n_layers: 3}' (the first named one's sizes, changed); "
        "the smallest is the start, the largest the target",
    )
    fam.add_argument(
        "--growth",
        metavar="NAME",
        help="a schedule (conf/growth/NAME.yaml) whose stages' sizes, grown from "
        "the start, join the family",
    )
    fam.add_argument(
        "--intermediates",
        type=int,
        metavar="K",
        help="sizes interpolated between start and target (default: 2 when the "
        "family is only a start and a target, else 0)",
    )
    budget = p.add_argument_group("budget (one of)")
    budget.add_argument("--budget", metavar="FLOPS", help="training FLOPs, e.g. 3e15")
    budget.add_argument(
        "--budget-steps", metavar="N", help="the training FLOPs of N optimizer steps of the target"
    )
    pilots = p.add_argument_group("pilots")
    pilots.add_argument(
        "--runs",
        nargs="+",
        metavar="DIR",
        help="finished fixed-size run folders to fit instead of running pilots",
    )
    pilots.add_argument(
        "--cache",
        default="outputs/plan/pilots",
        help="pilot run folders (default: outputs/plan/pilots)",
    )
    pilots.add_argument(
        "--jobs",
        default="1",
        help="pilots at a time (default 1), each on one "
        "CPU thread unless OMP_NUM_THREADS says otherwise",
    )
    pilots.add_argument(
        "--in-process",
        action="store_true",
        help="run pilots in this process (the app's train function, no new "
        "interpreter: quick checks and tests); default: one process each",
    )
    pilots.add_argument(
        "--pilot-fraction",
        default="0.1",
        metavar="F",
        help="share of the budget all pilots spend (default 0.1)",
    )
    pilots.add_argument(
        "--pilot-budgets", default="3", metavar="K", help="budgets per size (default 3)"
    )
    pilots.add_argument(
        "--pilot-ratio",
        default="3",
        metavar="R",
        help="each pilot budget R times the previous (default 3)",
    )
    pilots.add_argument(
        "--min-pilot-steps",
        default="20",
        metavar="S",
        help="steps of the shortest pilot of the largest size (default 20)",
    )
    sched = p.add_argument_group("schedule")
    sched.add_argument(
        "--insist-target",
        action="store_true",
        help="end at the target even where the budget supports a smaller size",
    )
    sched.add_argument(
        "--latest-growth",
        default="0.8",
        metavar="F",
        help="no growth after this share of the run's steps (default 0.8; with WSD the last "
        "20%% is the decay)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--name", help="the schedule's name (default: plan_<target>_<budget>)")
    out.add_argument(
        "--out", help="folder for plan.json and plan.png (default: outputs/plan/<name>)"
    )
    out.add_argument(
        "--conf-dir",
        help="config folder whose growth/ receives <name>.yaml (default: the repository's conf/)",
    )
    out.add_argument(
        "--force", action="store_true", help="replace an existing growth/<name>.yaml that differs"
    )
    return p


@dataclass(frozen=True)
class PlanOptions:
    """The command line, checked."""

    sizes: tuple[str, ...]
    growth: str | None
    intermediates: int | None
    budget: float | None
    budget_steps: int | None
    runs: tuple[str, ...]
    cache: Path
    jobs: int
    launcher: str
    ladder: Any
    latest: float
    insist_target: bool
    name: str | None
    out: Path | None
    conf_dir: Path | None
    force: bool
    overrides: tuple[str, ...] = field(default_factory=tuple)
    argv: tuple[str, ...] = field(default_factory=tuple)
    """The command line as given (recorded in the plan and the growth config)."""


def _number(
    flag: str,
    text: str | None,
    kind: type,
    low: float,
    high: float = math.inf,
    open_low: bool = False,
) -> Any:
    """``text`` as ``kind`` in ``[low, high]`` (``(low, high]`` if ``open_low``), else a
    :class:`PlanError` naming the flag and the value."""
    if text is None:
        return None
    try:
        value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
        ok = math.isfinite(value) and (value > low if open_low else value >= low)
        ok = ok and value <= high
    except ValueError:
        ok = False
    if not ok:
        span = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise PlanError(
            f"{flag}={text}: must be {'an integer' if kind is int else 'a number'} in {span}"
        )
    return value


def _looks_like_override(text: str) -> bool:
    """``key=value`` (a Hydra override), not a folder or an inline ``{...}`` size."""
    return bool(re.match(r"^[+~]{0,2}[A-Za-z_][\w.]*=", text)) and not Path(text).exists()


def options(argv: Sequence[str] | None = None) -> PlanOptions:
    """Parse and check the command line."""
    from progrow.app.pilots import LadderSettings

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_intermixed_args(argv)  # overrides before or after flags
    # `--runs DIR... key=value`: the list flags take the overrides after them too
    for flag in ("runs", "sizes"):
        items = getattr(args, flag)
        if items:
            setattr(args, flag, [i for i in items if not _looks_like_override(i)])
            args.overrides = [*args.overrides, *(i for i in items if _looks_like_override(i))]
    if args.runs == []:
        raise PlanError("--runs: give one or more run folders")
    if (args.budget is None) == (args.budget_steps is None):
        raise PlanError("give the budget as --budget FLOPS or --budget-steps N (one of them)")
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", args.name):
        raise PlanError(f"--name={args.name}: use letters, digits, '_', '.' and '-' only")
    jobs = _number("--jobs", args.jobs, int, 1)
    if args.in_process and jobs > 1:
        raise PlanError(f"--jobs={jobs}: --in-process runs one pilot at a time")
    ladder = LadderSettings(
        fraction=_number("--pilot-fraction", args.pilot_fraction, float, 0, 1, open_low=True),
        budgets=_number("--pilot-budgets", args.pilot_budgets, int, 1),
        ratio=_number("--pilot-ratio", args.pilot_ratio, float, 1, open_low=True),
        min_steps=_number("--min-pilot-steps", args.min_pilot_steps, int, 1),
    )
    return PlanOptions(
        sizes=tuple(args.sizes),
        growth=args.growth,
        intermediates=_number("--intermediates", args.intermediates, int, 0),
        budget=_number("--budget", args.budget, float, 0, open_low=True),
        budget_steps=_number("--budget-steps", args.budget_steps, int, 1),
        runs=tuple(args.runs or ()),
        cache=Path(args.cache),
        jobs=jobs,
        launcher="in-process" if args.in_process else "subprocess",
        ladder=ladder,
        latest=_number("--latest-growth", args.latest_growth, float, 0, 1, open_low=True),
        insist_target=args.insist_target,
        name=args.name,
        out=None if args.out is None else Path(args.out),
        conf_dir=None if args.conf_dir is None else Path(args.conf_dir),
        force=args.force,
        overrides=tuple(args.overrides),
        argv=tuple(argv),
    )


# -- the plan -----------------------------------------------------------------------------


def _budget_flag(opts: PlanOptions) -> str:
    return "--budget" if opts.budget is not None else "--budget-steps"


def _budget_text(opts: PlanOptions, budget: float) -> str:
    return (
        f"--budget={opts.budget:g}"
        if opts.budget is not None
        else f"--budget-steps={opts.budget_steps} ({budget:.3g} FLOPs)"
    )


def _default_name(opts: PlanOptions, target: str) -> str:
    amount = f"{opts.budget_steps}steps" if opts.budget_steps else f"{opts.budget:.0e}"
    return re.sub(r"[^A-Za-z0-9_.-]", "", f"plan_{target}_{amount.replace('+', '')}")


def _results(
    opts: PlanOptions,
    family: Sequence[Any],
    budget: float,
    recipe: Any,
    progress: Callable[[str], None],
) -> tuple[list[Any], list[str]]:
    """The fit's data: the pilots (run or cached), or the runs given with ``--runs``."""
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
                f"{_budget_text(opts, budget)}: not above the compute of the runs given "
                f"({spent:.3g} FLOPs); a plan extrapolates from runs much shorter than it"
            )
        return results, notes
    jobs = pl.plan_pilots(
        family, budget, recipe, opts.cache, opts.ladder, _budget_text(opts, budget)
    )
    todo = sum(pl.read_run(j.folder) is None for j in jobs)
    progress(
        f"pilots: {len(jobs)} runs under {opts.cache} ({len(jobs) - todo} cached, {todo} to run)"
    )
    return pl.run_pilots(jobs, pl.LAUNCHERS[opts.launcher], opts.jobs, progress), notes


def _fit(results: Sequence[Any]) -> dict[str, Any]:
    """Both models and their leave-one-out errors."""
    from progrow.app import scaling

    n = [float(r.params) for r in results]
    d = [r.tokens for r in results]
    loss = [r.val_loss for r in results]
    if len(results) < 5:
        raise PlanError(
            f"{len(results)} runs: the fit has 5 parameters and needs 5 or more runs "
            "(more sizes or --pilot-budgets; with --runs, more folders)"
        )
    fit = scaling.fit_loss(n, d, loss)
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        groups.setdefault(r.label, []).append((r.flops, r.val_loss))
    per_size = scaling.loo_curves(groups)
    all_curves = scaling.HeldOut(tuple(e for h in per_size.values() for e in h.errors))
    return {
        "fit": fit,
        "loo": scaling.loo_fit(n, d, loss, fit),
        "curves_loo": all_curves,
        "curves_loo_per_size": per_size,
    }


def _yaml_text(
    name: str,
    family: Sequence[Any],
    schedule: Any,
    fractions: Sequence[float],
    header: Sequence[str],
) -> str:
    lines = [*(f"# {h}" for h in header), f"name: {name}", "stages:"]
    for fraction, (_, index) in zip(fractions, schedule.stages, strict=True):
        size = family[index]
        lines.append(f"  - {{step: {fraction:.4f}, {size.inline()[1:-1]}}}")
    return "\n".join(lines) + "\n"


def _write_growth(path: Path, text: str, force: bool, name: str) -> None:
    if path.is_file() and not force:
        old = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
        new = [ln for ln in text.splitlines() if not ln.startswith("#")]
        if old != new:
            raise PlanError(
                f"--name={name}: {path} exists with other stages; pass --force to replace "
                "it or pick another --name"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


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


def _run_command(
    recipe: Any, model_args: Sequence[str], growth: str, steps: int, conf_dir: Path | None
) -> str:
    extra = [] if conf_dir is None else ["--config-dir", str(conf_dir.resolve())]
    parts = [
        "python",
        "-m",
        "progrow.train",
        *extra,
        "experiment=compare",
        *model_args,
        f"growth={growth}",
        f"budget.steps={steps}",
        *recipe.overrides,
    ]
    return shlex.join(parts)


def _stages_text(plan: dict[str, Any], key: str) -> str:
    s = plan[key]
    steps = [
        f"-> {st['size']} at {100 * st['step_fraction']:.0f}% of the steps "
        f"({100 * st['flops_fraction']:.0f}% of the FLOPs)"
        for st in s["stages"]
    ]
    return " ".join([s["start"], *steps]) if steps else f"{s['start']} (no growth)"


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
    name = opts.name or _default_name(opts, family[-1].label)
    progress(
        f"family: {', '.join(fam.describe(s) for s in family)}; budget {budget:.3g} FLOPs = "
        f"{budget / target_step:.0f} steps of {family[-1].label} at {tps} tokens/step"
    )
    results, notes = _results(opts, family, budget, recipe, progress)
    models = _fit(results)
    curves = [planning.Curve(s.label, s.params, s.flops_per_token) for s in family]
    plan = {
        "name": name,
        "argv": list(opts.argv),
        "budget": {"flops": budget, "target_steps": budget / target_step,
                   "flag": _budget_flag(opts)},
        **_inputs(recipe, family, results, notes, models, budget, opts),
    }  # fmt: skip
    schedules = _predictions(plan, models["fit"], curves, family, budget, tps, opts)
    chosen = schedules["insist" if opts.insist_target else "schedule"]
    plan["recommendation"] = _recommend(plan, opts, family, chosen, recipe, name, budget)
    _write_outputs(plan, opts, models["fit"], curves, results, chosen, budget)
    return plan


def _inputs(
    recipe: Any,
    family: Sequence[Any],
    results: Sequence[Any],
    notes: Sequence[str],
    models: dict[str, Any],
    budget: float,
    opts: PlanOptions,
) -> dict[str, Any]:
    """The plan's data: recipe, family, pilots (or runs) and both models."""
    tps = recipe.tokens_per_step
    fit = models["fit"]
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
        "curves_loo": {**models["curves_loo"].to_dict(), "per_size": {
            k: v.to_dict() for k, v in models["curves_loo_per_size"].items()}},
        "model": _model_choice(models, budget, results),
    }  # fmt: skip


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


def _model_choice(models: dict[str, Any], budget: float, results: Sequence[Any]) -> dict[str, Any]:
    """Which model the plan uses and why, with warnings where the data undermine it."""
    loo, curves, fit = models["loo"], models["curves_loo"], models["fit"]
    largest = max(r.flops for r in results)
    why = (
        f"the budget is {budget / largest:.0f}x the largest pilot, beyond every size's "
        "measured range: only the parametric form, fitted to all sizes at once, "
        "extrapolates there (a per-size curve continues straight in log-FLOPs and never "
        "flattens); the per-size curves' error is reported as a check"
    )
    warnings = []
    if math.isfinite(loo.rmse) and math.isfinite(curves.rmse) and loo.rmse > 2 * curves.rmse:
        warnings.append(
            f"the fit predicts held-out pilots worse than the per-size curves (rmse "
            f"{loo.rmse:.3g} vs {curves.rmse:.3g}): treat its extrapolation with care; more "
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
        "parameters": fit.A / min(n) ** fit.alpha - fit.A / max(n) ** fit.alpha,
        "tokens": fit.B / min(d) ** fit.beta - fit.B / max(d) ** fit.beta,
    }
    for what, effect in effects.items():
        if effect < 0.01 * lowest:
            warnings.append(
                f"in the fit the runs' range of {what} lowers the loss by {effect:.2g} only: "
                f"the pilots never showed more {what} paying off, so the fit cannot tell which "
                "size the budget supports; longer pilots or --runs of longer runs"
            )
    warning = "; ".join(warnings) or None
    return {"used": "parametric", "why": why, "warning": warning}


def _write_schedule(
    opts: PlanOptions, family: Sequence[Any], chosen: Any, recipe: Any, name: str, budget: float
) -> tuple[str, str]:
    """Write the chosen schedule as ``<conf>/growth/<name>.yaml``, checked as the app
    will check it; returns its path and the command that runs it."""
    from progrow.app.family import conf_growth_dir
    from progrow.app.planning import step_fractions
    from progrow.schedule import GrowthSchedule

    tps = recipe.tokens_per_step
    fractions, steps = step_fractions(chosen, [s.step_flops(tps) for s in family], budget)
    start = family[chosen.start]
    header = [
        f"progrow-plan {shlex.join(opts.argv)}",
        f"start: {start.label} ({' '.join(start.model_args)}); budget {budget:.4g} FLOPs; "
        f"predicted final loss {chosen.loss:.4f}",
    ]
    text = _yaml_text(name, family, chosen, fractions, header)
    try:  # rounded fractions that collide, or a size the start cannot grow to, would
        # only fail when the run starts
        stages = yaml.safe_load(text)["stages"]
        GrowthSchedule(stages, max_steps=steps).validate_for(start.config, steps)
    except ValueError as err:
        raise RuntimeError(f"the planned schedule does not validate ({err}): {text}") from None
    path = (opts.conf_dir / "growth" if opts.conf_dir else conf_growth_dir()) / f"{name}.yaml"
    _write_growth(path, text, opts.force, name)
    end_steps = max(1, round(budget / family[chosen.end].step_flops(tps)))
    return str(path), _run_command(recipe, start.model_args, name, end_steps, opts.conf_dir)


def _recommend(
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
        out["growth_yaml"], out["command"] = _write_schedule(
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
            f"recommendation: grow with this schedule: {_stages_text(plan, key)} "
            f"({out['growth_yaml']}): predicted final loss {chosen.loss:.4f} vs {versus}; "
            f"{pilots}{caveat}"
        )
        return out
    size = next(s for s in family if s.label == fixed_best)
    steps = max(1, round(budget / size.step_flops(recipe.tokens_per_step)))
    out.update(kind="fixed", size=fixed_best, loss=fixed[fixed_best])
    out["fixed_command"] = _run_command(recipe, size.model_args, "none", steps, None)
    grown = f"; growing per the schedule: {chosen.loss:.4f}" if chosen.stages else ""
    out["line"] = (
        f"recommendation: train size {fixed_best} without growing: predicted final loss "
        f"{fixed[fixed_best]:.4f} vs {versus}{grown}; {pilots}{caveat}"
    )
    return out


# -- output -------------------------------------------------------------------------------


def report(plan: dict[str, Any]) -> list[str]:
    """The plan as console lines: (a) to (e), the fit, and where the files are."""
    fit, loo, cl = plan["fit"], plan["fit"]["loo"], plan["curves_loo"]
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
        else f"; insisting on {tg['label']}: {_stages_text(plan, 'insist')}, predicted "
        f"{ins['loss']:.4f} ({ins['cost']:+.4f})"
    )
    pilots = plan["pilots"]
    lines = [
        f"data: {pilots['count']} fixed-size runs ({pilots['ran']} run now), "
        f"{pilots['flops']:.3g} FLOPs = {100 * pilots['fraction']:.1f}% of the budget",
        *(f"  note: {n}" for n in pilots["notes"]),
        f"fit: {fit['formula']} (Huber {fit['huber_delta']:g} on log-loss, L-BFGS from a "
        f"grid; {fit['data']})",
        f"leave-one-out error: fit rmse {loo['rmse']:.4f} (max {loo['max_abs']:.4f}, "
        f"{loo['predicted']} runs); per-size curves rmse {cl['rmse']:.4f} "
        f"(max {cl['max_abs']:.4f}, {cl['predicted']} runs)",
        f"model: the parametric fit: {plan['model']['why']}",
        *([f"warning: {plan['model']['warning']}"] if plan["model"]["warning"] else []),
        f"(a) compute-optimal fixed size: {co['label']}, predicted {co['loss']:.4f}{star}",
        f"(b) target {tg['label']} on the whole budget: predicted {tg['loss']:.4f}",
        f"(c) envelope: {segs} FLOPs; at the budget {env['loss_at_budget']:.4f}; {save}",
        f"(d) schedule on the envelope: {_stages_text(plan, 'schedule')}; ends at "
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


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``progrow-plan``."""
    from progrow.app.console import user_error
    from progrow.app.settings import ConfigError

    try:
        opts = options(argv)
        plan = make_plan(opts, progress=lambda line: print(line, flush=True))
    except (PlanError, ConfigError) as err:
        print(f"progrow-plan: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a pilot failed: its log says why
        print(f"progrow-plan: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        message = user_error(err)  # a bad Hydra override
        if message is None:
            raise
        print(f"progrow-plan: error: {message}", file=sys.stderr)
        return 2
    for line in report(plan):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
