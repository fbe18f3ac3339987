"""Pilot runs: short fixed-size runs of each size of a family, through the app.

Each pilot is one ``python -m progrow.train experiment=compare model=... growth=none
budget.steps=S budget.model={its own sizes} ...`` job (so it takes exactly ``S`` steps and
spends ``S`` times its FLOPs per step) writing to its own folder under a cache, as
experiments/run.py's ``run_job`` does: a folder that holds a ``summary.json`` is not run
again, and a folder left by a failed job is moved aside, never deleted. The folder name
carries the sizes, the steps and a hash of every override, so a changed recipe (another
learning rate, other data) never reuses a pilot of another.

The ladder: ``budgets`` FLOPs budgets (rungs) in geometric progression (ratio ``ratio``),
the same FLOPs for every size at a rung (an iso-FLOP slice), sized so that all pilots
together spend ``fraction`` of the plan's budget. At each rung only the sizes whose
pilot sees between ``tokens_per_param[0]`` and ``tokens_per_param[1]`` tokens per
parameter run, and only with ``min_steps`` steps or more. A size far above the rung's
compute-optimal size takes so few optimizer steps that its loss measures the step count,
not the size (at 0.87M parameters and 2k tokens per step, pilots of under 3 tokens per
parameter were 0.3-0.9 nats above what the same size reaches; experiments/README.md
section 7); a size far below it has saturated its parameters. Both say little about the
budget, and scouts (sizes below the start, :func:`progrow.app.family.scouts`) fill the
low rungs instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from progrow.app.family import EXPERIMENT, PlanError, Recipe, Size

SUMMARY = "summary.json"


@dataclass(frozen=True)
class LadderSettings:
    """How the pilot ladder is sized (the ``--pilot-*`` flags)."""

    fraction: float = 0.1
    """Share of the budget all pilots together spend (``--pilot-fraction``)."""
    budgets: int = 4
    """Rungs: pilot budgets (``--pilot-budgets``)."""
    ratio: float = 3.0
    """Each budget this many times the previous (``--pilot-ratio``)."""
    min_steps: int = 20
    """Steps a pilot takes at least; shorter ones are left out (``--min-pilot-steps``)."""
    tokens_per_param: tuple[float, float] = (3.0, 100.0)
    """The window of tokens per parameter a pilot runs in (``--pilot-tokens-per-param``)."""
    warmup_share: float = 0.1
    """A pilot warms up over at most this share of its steps (``optim.warmup_steps``
    otherwise): a fixed warmup would take most of a short pilot."""


@dataclass(frozen=True)
class Pilot:
    """One pilot job."""

    size: Size
    steps: int
    folder: Path
    overrides: tuple[str, ...]
    """What follows ``python -m progrow.train`` (the run folder excepted)."""
    flops: float
    """Planned training FLOPs (``steps`` x the size's FLOPs per step)."""


@dataclass
class Result:
    """A finished fixed-size run (a pilot, or a folder given with ``--runs``)."""

    label: str
    """The family size it belongs to, or the folder's name."""
    dims: dict[str, int]
    params: int
    flops: float
    tokens: float
    val_loss: float
    folder: str
    curve: list[tuple[float, float]] = field(default_factory=list)
    """``(flops, val_loss)`` at each validation (from the CSV log)."""
    ran: bool = False
    """Launched by this invocation (``False``: read from a cached or given folder)."""
    in_family: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Rung:
    """One rung of the ladder: its FLOPs and the sizes (indices) that run at it."""

    flops: float
    sizes: tuple[int, ...]


def _rungs(
    smallest: float, step_flops: Sequence[float], params: Sequence[float], tokens_per_step: int,
    ladder: LadderSettings,
) -> list[Rung]:  # fmt: skip
    lo, hi = ladder.tokens_per_param
    out = []
    for k in range(ladder.budgets):
        flops = smallest * ladder.ratio**k
        steps = [round(flops / f) for f in step_flops]
        inside = tuple(
            i
            for i, (n, p) in enumerate(zip(steps, params, strict=True))
            if n >= ladder.min_steps and lo <= n * tokens_per_step / p <= hi
        )
        out.append(Rung(flops, inside))
    return out


def ladder_rungs(
    step_flops: Sequence[float],
    params: Sequence[float],
    tokens_per_step: int,
    budget: float,
    ladder: LadderSettings,
    flag: str = "--budget",
) -> list[Rung]:
    """The ladder for sizes of ``step_flops`` FLOPs per step and ``params`` parameters:
    the highest rungs whose pilots (each size at each rung inside the window of tokens
    per parameter, with ``min_steps`` steps or more) spend at most ``fraction`` of the
    budget. :class:`PlanError` naming the budget (``flag``) when no ladder gives the fit
    its 5 pilots.

    Example (no window: every size at every rung):
        >>> ladder = LadderSettings(min_steps=1, tokens_per_param=(0, math.inf))
        >>> [round(r.flops) for r in ladder_rungs([1.0, 0.5], [1, 1], 1, 2600.0, ladder)]
        [10, 30, 90]
    """
    allowed = ladder.fraction * budget
    units = sum(ladder.ratio**k for k in range(ladder.budgets))
    best: list[Rung] | None = None
    # the largest smallest rung whose pilots fit: the cost is not monotone in it (sizes
    # enter and leave the window), so every candidate on a fine log grid is tried
    for smallest in reversed(np.geomspace(allowed / units / len(step_flops) / 1e4,
                                          allowed / units, 2000)):  # fmt: skip
        rungs = _rungs(float(smallest), step_flops, params, tokens_per_step, ladder)
        cost = sum(r.flops * len(r.sizes) for r in rungs)
        count = sum(len(r.sizes) for r in rungs)
        if cost <= allowed * (1 + 1e-9) and count >= 5:
            # these sizes per rung, spending exactly the share if they stay the same
            exact = allowed / sum(ladder.ratio**k * len(r.sizes) for k, r in enumerate(rungs))
            again = _rungs(exact, step_flops, params, tokens_per_step, ladder)
            same = [r.sizes for r in again] == [r.sizes for r in rungs]
            best = again if same else rungs
            break
    if best is None:
        lo, hi = ladder.tokens_per_param
        raise PlanError(
            f"{flag}: too small for the pilots within --pilot-fraction={ladder.fraction:g} "
            f"of it: no ladder of {ladder.budgets} budgets (ratio {ladder.ratio:g}) gives 5 "
            f"pilots of --min-pilot-steps={ladder.min_steps} or more steps between {lo:g} and "
            f"{hi:g} tokens per parameter (--pilot-tokens-per-param); raise the budget or "
            "--pilot-fraction, add --scouts, or widen the window"
        )
    return best


def _hash(items: Sequence[str]) -> str:
    return hashlib.sha1("\0".join(items).encode()).hexdigest()[:8]


def fixed_job(size: Size, steps: int, recipe: Recipe, cache: Path, warmup: int) -> Pilot:
    """A fixed-size run of ``size`` for ``steps`` steps (validating 4 times), warming up
    over ``warmup`` steps, with its cache folder: a pilot, or a whole run to check one."""
    overrides = (
        EXPERIMENT,
        *size.model_args,
        "growth=none",
        *recipe.overrides,
        f"budget.steps={steps}",
        f"budget.model={size.inline()}",
        f"optim.warmup_steps={warmup}",
        f"trainer.val_check_interval={max(1, steps // 4)}",
    )
    folder = cache / f"{size.slug()}_{steps}st_{_hash(overrides)}"
    return Pilot(size, steps, folder, overrides, steps * size.step_flops(recipe.tokens_per_step))


def plan_pilots(
    family: Sequence[Size],
    budget: float,
    recipe: Recipe,
    cache: Path,
    ladder: LadderSettings,
    flag: str = "--budget",
) -> list[Pilot]:
    """The ladder's pilots (:func:`ladder_rungs`), as jobs with their folders, the sizes
    in ``family``'s order."""
    tps = recipe.tokens_per_step
    step = [s.step_flops(tps) for s in family]
    rungs = ladder_rungs(step, [s.params for s in family], tps, budget, ladder, flag)
    pilots = []
    for i, (size, per_step) in enumerate(zip(family, step, strict=True)):
        for rung in rungs:
            if i not in rung.sizes:
                continue
            steps = max(1, round(rung.flops / per_step))
            warmup = min(recipe.warmup_steps, math.ceil(ladder.warmup_share * steps))
            pilots.append(fixed_job(size, steps, recipe, cache, warmup))
    return pilots


# -- running ------------------------------------------------------------------------------


def _in_process(pilot: Pilot, log: Path) -> None:
    """The pilot in this process: the app's ``train`` on the composed config (no new
    interpreter, for tests and quick checks); its console output goes to ``log``."""
    import torch
    from omegaconf import OmegaConf

    from progrow.app.family import compose
    from progrow.app.train import train

    cfg = compose(pilot.overrides)
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    run_cfg = OmegaConf.create(plain)
    run_cfg.paths.output_dir = str(pilot.folder)
    (pilot.folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (pilot.folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(run_cfg, resolve=True))
    quiet = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in quiet]
    threads = torch.get_num_threads()
    try:
        for lg in quiet:
            lg.setLevel(logging.WARNING)  # Lightning's per-fit banner, printed per pilot
        torch.set_num_threads(_threads(threads))
        with log.open("w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            train(run_cfg)
    finally:
        torch.set_num_threads(threads)
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)


def _threads(default: int) -> int:
    """Torch threads of one pilot: ``OMP_NUM_THREADS`` if set, else 1. Small models gain
    nothing from more, and on a machine whose other cores are busy, threads that wait for
    each other made a pilot ~25x slower here; ``--jobs`` runs pilots side by side."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def _subprocess(pilot: Pilot, log: Path) -> None:
    """The pilot as its own ``python -m progrow.train`` process."""
    cmd = [sys.executable, "-m", "progrow.train", *pilot.overrides, f"hydra.run.dir={pilot.folder}"]
    env = {
        **os.environ,
        "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"),
        "OMP_NUM_THREADS": str(_threads(1)),
    }
    with log.open("w") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}")


Launcher = Callable[[Pilot, Path], None]
LAUNCHERS: dict[str, Launcher] = {"subprocess": _subprocess, "in-process": _in_process}


def run_pilot(pilot: Pilot, launcher: Launcher) -> Result:
    """The pilot's result, from its folder if it finished before, else by running it."""
    cached = read_run(pilot.folder, pilot.size.label)
    if cached is not None:
        return cached
    if pilot.folder.exists():
        pilot.folder.rename(
            pilot.folder.with_name(f"{pilot.folder.name}.failed-{int(time.time())}")
        )
    pilot.folder.parent.mkdir(parents=True, exist_ok=True)
    log = pilot.folder.parent / f"{pilot.folder.name}.log"
    try:
        launcher(pilot, log)
    except Exception as err:
        raise RuntimeError(f"pilot {pilot.folder} failed ({err}); see {log}") from None
    result = read_run(pilot.folder, pilot.size.label)
    if result is None:
        raise RuntimeError(f"pilot {pilot.folder} wrote no {SUMMARY}; see {log}")
    result.ran = True
    return result


def run_pilots(
    pilots: Sequence[Pilot],
    launcher: Launcher,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[Result]:
    """Every pilot's result, ``jobs`` at a time, in the order given."""

    def one(pilot: Pilot) -> Result:
        result = run_pilot(pilot, launcher)
        if progress is not None and result.ran:
            progress(
                f"  pilot {pilot.size.label} {pilot.steps} steps: val/loss "
                f"{result.val_loss:.4f} ({pilot.folder.name})"
            )
        return result

    if jobs <= 1:
        return [one(p) for p in pilots]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, pilots))


# -- reading finished runs ----------------------------------------------------------------


def read_run(folder: Path, label: str | None = None) -> Result | None:
    """A finished fixed-size run's result; ``None`` without a ``summary.json``, or for a
    run that grew or has no validation loss."""
    from progrow.app.run_summary import RunRecord, SummaryError
    from progrow.app.runs import load_run

    path = folder / SUMMARY
    if not path.is_file():
        return None
    try:
        record = RunRecord.read(path)
    except SummaryError as err:  # e.g. a pilot cached by an earlier progrow
        raise PlanError(f"{err} (a cached pilot: delete its folder to run it again)") from None
    if record.events or record.val_loss is None:
        return None
    curve = load_run(folder).curve if any(folder.rglob("metrics.csv")) else []
    return Result(
        label=label or folder.name,
        dims=dict(record.sizes),
        params=record.params,
        flops=record.flops,
        tokens=float(record.tokens),
        val_loss=record.val_loss,
        folder=str(folder),
        curve=[(float(f), float(v)) for f, v in curve],
    )


def read_runs(paths: Sequence[str]) -> tuple[list[Result], list[str]]:
    """The fixed-size runs under ``paths`` (``--runs``), and a note per folder skipped."""
    found: list[Path] = []
    for root in map(Path, paths):
        if not root.exists():
            raise PlanError(f"--runs {root}: no such folder")
        candidates = [root] if (root / SUMMARY).is_file() else []
        candidates += sorted(p.parent for p in root.rglob(SUMMARY) if p.parent != root)
        found += [c for c in candidates if c not in found]
    results, notes = [], []
    for folder in found:
        result = read_run(folder)
        if result is None:
            notes.append(f"{folder}: skipped (grew, or no final val_loss)")
        else:
            results.append(result)
    if not results:
        raise PlanError(f"--runs {' '.join(paths)}: no finished fixed-size run (summary.json)")
    return results, notes
