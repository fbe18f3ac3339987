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
2. **Fit.** A loss form ``L(N, D)`` to the pilots' final validation losses (``N``
   parameters, ``D`` tokens): by default (``--form kaplan``) Kaplan et al.'s interaction
   form ``E + ((N_c/N)^(a_N/a_D) + D_c/D)^a_D`` (:mod:`progrow.app.scaling_kaplan`),
   where the gap between sizes opens with the tokens, or (``--form chinchilla``) Hoffmann
   et al.'s additive ``E + A/N^alpha + B/D^beta`` (fitted as Besiroglu et al. 2024 redo
   it: :mod:`progrow.app.scaling`); measured against whole runs at three budgets, the
   interaction form's choice never cost more than the additive one's and at two of them
   less (experiments/README.md section 7). Both are fitted, the other as a check (the
   plan warns when they rank the sizes differently), and each size's measured curve
   (final loss against log-FLOPs); leave-one-out errors of all three. The intermediate
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

This module is the command line (its flags, checked into
:class:`~progrow.app.plan_options.PlanOptions`) and the entry point; the plan is made by
:mod:`progrow.app.plan_make` (the recommendation: :mod:`progrow.app.plan_recommend`, the
growth config: :mod:`progrow.app.plan_growth_yaml`) and printed by
:mod:`progrow.app.plan_report`.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from progrow.app.family import PlanError
from progrow.app.plan_make import make_plan
from progrow.app.plan_options import FORMS, PlanOptions
from progrow.app.plan_report import report


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
        "--pilot-budgets", default="4", metavar="K", help="pilot budgets (default 4)"
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
        help="a pilot takes at least S steps; shorter ones are left out (default 20)",
    )
    pilots.add_argument(
        "--pilot-tokens-per-param",
        default="3,100",
        metavar="LO,HI",
        help="a size runs at a pilot budget only if it sees LO to HI tokens per parameter "
        "there (default 3,100; 0,inf: every size at every budget)",
    )
    pilots.add_argument(
        "--scouts",
        default="3",
        metavar="K",
        help="sizes below the start, each about half the parameters of the one above, "
        "run as pilots only (default 3)",
    )
    p.add_argument_group("fit").add_argument(
        "--form",
        choices=FORMS,
        default="kaplan",
        help="the loss form the plan follows (default kaplan: Kaplan et al.'s, where the "
        "gap between sizes opens with the tokens; chinchilla: Hoffmann et al.'s additive "
        "form); the other is fitted as a check",
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


def _window(text: str) -> tuple[float, float]:
    """``--pilot-tokens-per-param LO,HI``, checked: ``0 <= LO < HI``."""
    flag = "--pilot-tokens-per-param"
    parts = text.split(",")
    if len(parts) != 2:
        raise PlanError(f"{flag}={text}: give two numbers LO,HI (e.g. 3,100)")
    lo = _number(flag, parts[0], float, 0)
    hi = float(parts[1]) if parts[1].strip() == "inf" else _number(flag, parts[1], float, 0)
    if not lo < hi:
        raise PlanError(f"{flag}={text}: LO must be below HI")
    return lo, hi


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
        tokens_per_param=_window(args.pilot_tokens_per_param),
    )
    return PlanOptions(
        sizes=tuple(args.sizes),
        growth=args.growth,
        intermediates=_number("--intermediates", args.intermediates, int, 0),
        scouts=_number("--scouts", args.scouts, int, 0),
        budget=_number("--budget", args.budget, float, 0, open_low=True),
        budget_steps=_number("--budget-steps", args.budget_steps, int, 1),
        runs=tuple(args.runs or ()),
        cache=Path(args.cache),
        jobs=jobs,
        launcher="in-process" if args.in_process else "subprocess",
        ladder=ladder,
        latest=_number("--latest-growth", args.latest_growth, float, 0, 1, open_low=True),
        insist_target=args.insist_target,
        form=args.form,
        name=args.name,
        out=None if args.out is None else Path(args.out),
        conf_dir=None if args.conf_dir is None else Path(args.conf_dir),
        force=args.force,
        overrides=tuple(args.overrides),
        argv=tuple(argv),
    )


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
