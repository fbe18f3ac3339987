"""W&B extras of the app (the library never imports wandb): compute as the x-axis, the
growth events as a table, a stable run id for resumed jobs, one run per job."""

from __future__ import annotations

import uuid
from pathlib import Path

from lightning.pytorch.loggers import Logger

from progrow.events import GrowthEvent

#: Metrics plotted against cumulative training FLOPs, so growing and fixed-size runs line
#: up by compute. Exact names win over W&B's glob rules set by Lightning ("*" -> step).
BY_COMPUTE = (
    "val/loss",
    "val/ppl",
    "train/loss",
    "growth/loss_before",
    "growth/loss_after",
    "growth/loss_delta",
    "growth/params",
    "growth/stage",
    "size/params",
    "compute/tokens",
)
EVENT_COLUMNS = ("stage", "step", "flops", "params_before", "params", "loss_before",
                 "loss_after", "loss_delta", "seconds")  # fmt: skip
ID_FILE = "wandb-run-id"


def is_wandb(logger: Logger) -> bool:
    """Whether ``logger`` is Lightning's WandbLogger (checked by name: no wandb import)."""
    return type(logger).__name__ == "WandbLogger"


def stable_run_id(output_dir: Path) -> str:
    """The W&B run id of this run folder: read back on resume, so a requeued or resumed
    job continues the same W&B run instead of starting a second one."""
    path = output_dir / ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def _drop_unset_anonymous(logger: Logger) -> None:
    """Lightning's WandbLogger always hands ``anonymous`` to ``wandb.init``, ``None``
    when not asked for, and W&B warns on every run that the setting has no effect. Left
    out, ``wandb.init`` gets what ``None`` meant (nothing set); an explicit
    ``anonymous: true`` in the logger config is passed on as before."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and "anonymous" in init and init["anonymous"] is None:
        del init["anonymous"]


def define_compute_axis(loggers: list[Logger]) -> None:
    """Declare ``compute/flops`` the x-axis of the metrics in ``BY_COMPUTE`` (this starts
    the W&B run)."""
    for logger in loggers:
        if not is_wandb(logger):
            continue
        _drop_unset_anonymous(logger)
        run = getattr(logger, "experiment", None)  # rank 0: the wandb Run; else a dummy
        define = getattr(run, "define_metric", None)
        if define is None:
            continue
        define("compute/flops")
        for name in BY_COMPUTE:
            define(name, step_metric="compute/flops")


def log_events_table(loggers: list[Logger], events: list[GrowthEvent]) -> None:
    """Log the growth events as a ``growth/events`` table."""
    if not any(is_wandb(logger) for logger in loggers):
        return
    import wandb

    if wandb.run is None:  # finished already (at a signal, before a requeue)
        return
    rows = [[getattr(event, col) for col in EVENT_COLUMNS] for event in events]
    for logger in loggers:
        if is_wandb(logger) and hasattr(logger, "log_table"):
            logger.log_table("growth/events", columns=list(EVENT_COLUMNS), data=rows)


def finish_before_requeue(loggers: list[Logger], events: list[GrowthEvent]) -> None:
    """At a signal, after the checkpoint and before a SLURM requeue: log the events table
    and finish the W&B run now, while ``wandb-core`` is alive (SLURM's SIGTERM at the
    requeue ends it, and what it had not written yet would be lost). The next attempt
    continues the same run (:func:`stable_run_id`)."""
    log_events_table(loggers, events)
    finish(loggers, failed=False, preempted=True)


def finish(loggers: list[Logger], failed: bool, preempted: bool = False) -> None:
    """End this job's W&B run (a multirun starts one run per job). ``preempted``: stopped
    by a signal after a checkpoint; W&B marks the run preempted, to be continued."""
    if not any(is_wandb(logger) for logger in loggers):
        return
    import wandb

    if wandb.run is not None:
        if preempted:
            wandb.run.mark_preempting()
        wandb.finish(exit_code=1 if failed else 0)
