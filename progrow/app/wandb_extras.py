"""W&B extras of the app (the library never imports wandb): compute as the x-axis, the
growth events as a table, a stable run id for resumed jobs, one run per job, and training
that outlives W&B's service."""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
#: The logger methods that talk to wandb-core.
SERVICE_CALLS = ("log_metrics", "log_hyperparams", "log_table", "log_text", "log_image",
                 "log_audio", "log_video", "after_save_checkpoint", "save", "finalize")  # fmt: skip

log = logging.getLogger(__name__)


def is_wandb(logger: Logger) -> bool:
    """Whether ``logger`` is Lightning's WandbLogger (checked by name: no wandb import)."""
    return any(cls.__name__ == "WandbLogger" for cls in type(logger).__mro__)


class ServiceGuard:
    """Keeps training going when ``wandb-core`` dies under a W&B logger.

    The service is a separate process: SLURM's ``scancel`` sends it SIGTERM together with
    the trainer, and it can die on its own (out of memory, killed). W&B's next call then
    raises ``ConnectionError`` from wherever the trainer logs (a training step, a
    validation, a checkpoint), which would kill the run, or, under DDP, rank 0 alone while
    the others wait in a collective. Guarded, the first such error is logged once, naming
    the step from which W&B recorded nothing, and every later W&B call is skipped; the
    other loggers (the CSV log) go on, and a resumed job continues the W&B run.
    """

    def __init__(self, logger: Logger, global_step: Callable[[], int]) -> None:
        self.global_step = global_step
        self.lost_at_step: int | None = None
        self.error: BaseException | None = None
        for name in SERVICE_CALLS:
            method = getattr(logger, name, None)
            if callable(method):
                setattr(logger, name, self._guard(name, method))

    @property
    def lost(self) -> bool:
        return self.error is not None

    def _guard(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.lost:
                return None
            try:
                return method(*args, **kwargs)
            except ConnectionError as err:
                self.error, self.lost_at_step = err, self.global_step()
                log.warning(
                    "W&B's service is gone (%r in %s, at step %d): W&B records nothing more "
                    "in this job; the other loggers keep every metric, and a resumed job "
                    "continues the W&B run", err, name, self.lost_at_step,
                )  # fmt: skip
                _drop_dead_service()
                return None

        return guarded


def _drop_dead_service() -> None:
    """Forget the dead service connection, so that the next ``wandb.init`` in this
    process (a multirun's next job) starts a new wandb-core, and the exit does not print
    the old connection's teardown error. The teardown itself fails on the closed
    connection: expected, and nothing to report twice."""
    import wandb

    with contextlib.suppress(Exception):  # the connection is known to be gone
        wandb.teardown()
    # The dead run stays wandb.run (finishing it needs the service), and Lightning's
    # WandbLogger would reuse it: unset it the way wandb.finish does.
    try:
        from wandb.sdk.lib import module
    except ImportError:
        wandb.run = None
    else:
        module.unset_globals()


def guard_service(loggers: list[Logger], global_step: Callable[[], int]) -> None:
    """Put a :class:`ServiceGuard` on each W&B logger of ``loggers``; ``global_step``
    gives the trainer's step for its warning."""
    for logger in loggers:
        guarded = isinstance(getattr(logger, "progrow_guard", None), ServiceGuard)
        if is_wandb(logger) and not guarded:
            logger.progrow_guard = ServiceGuard(logger, global_step)  # type: ignore[attr-defined]


def service_lost(logger: Logger) -> ServiceGuard | None:
    """The guard of a W&B logger whose service died, else None."""
    guard = getattr(logger, "progrow_guard", None)
    return guard if isinstance(guard, ServiceGuard) and guard.lost else None


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
        run = _start_run(logger)  # rank 0: the wandb Run; else a dummy
        define = getattr(run, "define_metric", None)
        if define is None:
            continue
        define("compute/flops")
        for name in BY_COMPUTE:
            define(name, step_metric="compute/flops")


def _start_run(logger: Logger) -> Any:
    """The logger's W&B run, started now; W&B refusing to start it (no API key, no
    server, a bad setting) is a :class:`~progrow.app.ConfigError` naming ``logger=wandb``
    and the ways to run without an account, not a traceback."""
    import wandb

    from progrow.app.errors import ConfigError

    try:
        return getattr(logger, "experiment", None)
    except wandb.errors.Error as err:
        reason = str(err).splitlines()[0].rstrip(". ") if str(err) else type(err).__name__
        raise ConfigError(
            f"logger=wandb: W&B could not start its run: {reason}. Log in (`wandb login`), "
            "or run without an account: WANDB_MODE=offline (then `wandb sync <run dir>/"
            "wandb/offline-run-*`), or logger=csv"
        ) from None


def log_events_table(loggers: list[Logger], events: list[GrowthEvent]) -> None:
    """Log the growth events as a ``growth/events`` table."""
    if not any(is_wandb(logger) and not service_lost(logger) for logger in loggers):
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

    if any(service_lost(logger) for logger in loggers):
        return  # nothing left to finish it with (the run's files end where it died)
    if wandb.run is not None:
        if preempted:
            wandb.run.mark_preempting()
        wandb.finish(exit_code=1 if failed else 0)
