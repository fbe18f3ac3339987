"""What ``progrow-plan`` was asked: its command line, checked (:func:`progrow.app.plan.options`
builds it from the flags), and what the plan's other modules read from it: the budget as
the command line gave it and the schedule's default name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The loss forms ``--form`` chooses from (:mod:`progrow.app.scaling_kaplan`,
#: :mod:`progrow.app.scaling`).
FORMS = ("chinchilla", "kaplan")


@dataclass(frozen=True)
class PlanOptions:
    """The command line, checked."""

    sizes: tuple[str, ...]
    growth: str | None
    intermediates: int | None
    scouts: int
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
    form: str = "kaplan"
    """The loss form the plan follows (:data:`FORMS`)."""
    overrides: tuple[str, ...] = field(default_factory=tuple)
    argv: tuple[str, ...] = field(default_factory=tuple)
    """The command line as given (recorded in the plan and the growth config)."""


def budget_flag(opts: PlanOptions) -> str:
    """The flag that gave the budget: ``--budget`` or ``--budget-steps``."""
    return "--budget" if opts.budget is not None else "--budget-steps"


def budget_text(opts: PlanOptions, budget: float) -> str:
    """The budget as the command line gave it (in FLOPs too when given in steps), for
    messages that name it."""
    return (
        f"--budget={opts.budget:g}"
        if opts.budget is not None
        else f"--budget-steps={opts.budget_steps} ({budget:.3g} FLOPs)"
    )


def default_name(opts: PlanOptions, target: str) -> str:
    """The schedule's name without ``--name``: ``plan_<target>_<budget>``."""
    amount = f"{opts.budget_steps}steps" if opts.budget_steps else f"{opts.budget:.0e}"
    return re.sub(r"[^A-Za-z0-9_.-]", "", f"plan_{target}_{amount.replace('+', '')}")
