"""The chosen schedule as a growth config, ``<conf>/growth/<name>.yaml``, runnable as
is: its text (a header naming the command that planned it), checked as the app will check
it, written (never over one with other stages without ``--force``), and the command that
runs it."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from progrow.app.family import PlanError
from progrow.app.plan_options import PlanOptions


def write_schedule(
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
    return str(path), run_command(recipe, start.model_args, name, end_steps, opts.conf_dir)


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


def run_command(
    recipe: Any, model_args: Sequence[str], growth: str, steps: int, conf_dir: Path | None
) -> str:
    """The ``python -m progrow.train`` command of a run of the size ``model_args`` builds,
    under ``growth=<growth>``, for ``steps`` steps with the recipe's overrides."""
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
