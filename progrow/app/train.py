"""``python -m progrow.train`` (or ``progrow-train``): the Hydra training application.

With no arguments it trains a tiny transformer on the Python standard library's source on
CPU, grows it through all six expansions (``conf/growth/all_six.yaml``) and prints the
final validation loss, the growth events with their loss deltas, the compute used and
where the logs and checkpoints are. Configs live in the repository's top-level ``conf/``
folder (so progrow is used from a clone or an editable install); see the README.

Only this module sees a ``DictConfig``: :func:`train` turns it into
:class:`progrow.app.RunSettings` at once and :func:`run` works on typed values.

Example:
    python -m progrow.train growth=width_first trainer.max_steps=1000
    python -m progrow.train -m growth=none,all_six seed=0,1
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from progrow.app.config_values import CONF_DIR
from progrow.app.job import Job, prepare
from progrow.app.loggers import logger_entries, logger_extras
from progrow.app.settings import RunSettings

if TYPE_CHECKING:  # the app imports Lightning lazily, inside the functions
    from progrow.app.run_summary import RunRecord
    from progrow.training import PreemptionCallback

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured by a composed config; returns the summary (see :func:`run`)."""
    return run(RunSettings.from_config(cfg))


def run(settings: RunSettings) -> dict[str, Any]:
    """Train one job described by a :class:`progrow.app.RunSettings`; see :func:`_run`.

    From the start (data loading and setup included), SIGUSR1 and SIGTERM are recorded by
    a :class:`~progrow.training.PreemptionCallback`, which acts on them at the first
    optimizer-step boundary: a checkpoint, a requeue of a SLURM job run with
    ``ckpt_path=auto``, and :class:`~progrow.training.FitInterrupted` (a ``SystemExit``).
    Ctrl-C is handled the same way once training has started.
    """
    from progrow.training import PreemptionCallback

    # Requeue only a job whose next attempt resumes by itself.
    preemption = PreemptionCallback(requeue=None if settings.ckpt_path == "auto" else False)
    preemption.arm()
    try:
        return _run(settings, preemption)
    finally:
        preemption.disarm()


def _run(settings: RunSettings, preemption: PreemptionCallback) -> dict[str, Any]:
    """Train one job described by a :class:`progrow.app.RunSettings`.

    Order: the run folder's earlier summary, if any (refused unless of this progrow's
    schema) -> cheap checks (devices, resume target) -> seed -> data (its vocabulary sizes
    the model) -> model -> schedule checked against the model and ``max_steps`` -> resume
    checked against the checkpoint's run -> callbacks, loggers, trainer -> fit. Anything
    wrong in the config raises :class:`progrow.app.ConfigError` before the Trainer exists.

    Returns:
        The run's summary as ``summary.json`` holds it
        (:meth:`progrow.app.run_summary.RunRecord.to_dict`): ``schema``, ``val_loss``
        (final validation loss), ``events`` (growth events), ``flops``, ``tokens``,
        ``params``/``params_start``, ``sizes``/``sizes_start``, ``global_step``,
        ``wall_s`` (this launch, data loading included), ``wall_s_total`` (every launch
        that finished in the run folder), ``fit_s`` (``trainer.fit`` alone),
        ``output_dir``, ``ckpt_dir``, ``last_ckpt``, ``log_dirs``, ``loggers``,
        ``resumed_from``, ``growth`` (schedule name), ``seed``, ``fingerprint`` (of the
        data), ``report_dir`` (the sweep folder in a multirun) and the rest of
        :class:`~progrow.app.run_summary.RunRecord`'s fields.
    """
    from progrow.app.run_summary import SUMMARY_FILE
    from progrow.app.summary import append_summary_to_logs, print_summary

    started = time.perf_counter()
    earlier_wall_s = _recorded_wall_s(settings.output_dir)
    job = prepare(settings)
    trainer, loggers = _build_trainer(job, preemption)
    from progrow.app import wandb_extras

    # W&B's service dies with the job's processes at a requeue: finish its run first.
    preemption.before_requeue = lambda t: wandb_extras.finish_before_requeue(
        t.loggers, job.growth.events
    )
    fit_s, val_loss, last_ckpt = _fit(job, trainer, loggers)
    wall_s = time.perf_counter() - started
    record = _summary(
        job,
        trainer,
        val_loss,
        last_ckpt,
        fit_s=fit_s,
        wall_s=wall_s,
        wall_s_total=earlier_wall_s + wall_s,
    )
    if trainer.is_global_zero:
        record.write(job.settings.output_dir / SUMMARY_FILE)
        print_summary(record)
        append_summary_to_logs(record)
    return record.to_dict()


def _recorded_wall_s(output_dir: Path) -> float:
    """The wall time the run folder's ``summary.json`` holds (0 without one): the launches
    that finished there before this one, which ``wall_s_total`` adds up. Read at launch,
    so that a summary this progrow cannot read is refused before the training, not after.
    """
    from progrow.app.errors import ConfigError
    from progrow.app.run_summary import SUMMARY_FILE, RunRecord, SummaryError

    path = output_dir / SUMMARY_FILE
    if not path.is_file():
        return 0.0
    try:
        return RunRecord.read(path).wall_s_total
    except SummaryError as err:
        raise ConfigError(str(err)) from None


def _build_trainer(job: Job, preemption: PreemptionCallback) -> tuple[Any, list[Any]]:
    """The Trainer with the configured callbacks and loggers, hyperparameters logged."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar

    from progrow.app import wandb_extras
    from progrow.app.interrupt import slurm_plugins
    from progrow.app.resume import RunIdentity

    settings = job.settings
    # Ctrl-C, SIGTERM and SLURM's SIGUSR1 end in a checkpoint at a step boundary instead of
    # lost work (the preemption callback).
    callbacks = [instantiate(c) for c in settings.callbacks.values()]
    callbacks += [job.growth, preemption, RunIdentity(job.identity)]
    loggers = [instantiate(c, **logger_extras(c, settings)) for c in settings.loggers.values()]
    wandb_extras.define_compute_axis(loggers)
    slurm = slurm_plugins(settings.trainer)
    plugins: dict[str, Any] = {"plugins": slurm} if slurm else {}
    if "enable_progress_bar" not in settings.trainer and not any(
        isinstance(c, ProgressBar) for c in callbacks
    ):
        # callbacks.progress_bar=null means no bar, not Lightning's default one.
        plugins["enable_progress_bar"] = False
    trainer = instantiate(
        settings.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        _convert_="all",
        **plugins,
    )
    wandb_extras.guard_service(loggers, lambda: trainer.global_step)
    for logger in trainer.loggers:
        logger.log_hyperparams(_hparams(job))
    return trainer, loggers


def _hparams(job: Job) -> dict[str, Any]:
    settings = job.settings
    return {
        "task_name": settings.task_name,
        "tags": settings.tags,
        "seed": settings.seed,
        "max_steps": settings.max_steps,
        "budget_flops": job.budget_flops,
        "growth": {
            "name": settings.growth.name,
            "stages": settings.growth.schedule.to_list(),
            "final_sizes": settings.growth.schedule.final_sizes(job.model_cfg),
            **settings.growth.options,
        },
        "data": job.datamodule.describe(),
        "trainer": {k: v for k, v in settings.trainer.items() if k != "_target_"},
    }


def _fit(job: Job, trainer: Any, loggers: list[Any]) -> tuple[float, float | None, str | None]:
    """``trainer.fit``, the final validation and checkpoint (and export); returns the fit's
    seconds, the final validation loss and the last checkpoint."""
    from progrow.app import hf_io, wandb_extras
    from progrow.app.interrupt import interrupted_message
    from progrow.training import FitInterrupted

    settings = job.settings
    fit_started = time.perf_counter()
    failed = True
    try:
        trainer.fit(job.module, datamodule=job.datamodule, ckpt_path=job.resume)
        fit_s = time.perf_counter() - fit_started
        val_loss = _final_val_loss(trainer, job.module, job.datamodule)
        last_ckpt = _save_final_checkpoint(trainer)
        if settings.hf_export_to is not None and trainer.is_global_zero:
            hf_io.export(job.module.model, settings.hf_export_to, job.hf_start)
        failed = False
    except FitInterrupted as stop:
        if trainer.is_global_zero:
            print(interrupted_message(stop, settings), flush=True)
        raise
    finally:
        stopping = sys.exc_info()[0] is FitInterrupted
        try:
            if trainer.is_global_zero:
                wandb_extras.log_events_table(loggers, job.growth.events)
            wandb_extras.finish(loggers, failed, preempted=stopping)
        except Exception as err:
            if not stopping:
                raise
            # wandb-core got the job's SIGTERM too and is gone: the checkpoint is saved,
            # the stop goes on (its exit status is the signal's, not a crash's).
            log.warning("W&B could not finish its run after the signal: %r", err)
    return fit_s, val_loss, last_ckpt


def _summary(
    job: Job,
    trainer: Any,
    val_loss: float | None,
    last_ckpt: str | None,
    *,
    fit_s: float,
    wall_s: float,
    wall_s_total: float,
) -> RunRecord:
    from progrow.app.run_summary import RunRecord

    settings, module = job.settings, job.module
    loggers = logger_entries(trainer.loggers)
    return RunRecord(
        growth=settings.growth.name,
        seed=settings.seed,
        val_loss=val_loss,
        events=list(job.growth.events),
        flops=module.flops,
        budget_flops=job.budget_flops,
        tokens=module.tokens,
        train_s=module.train_seconds,
        max_steps=settings.max_steps,
        params_start=job.model_cfg.num_params(),
        sizes_start=job.model_cfg.sizes(),
        params=module.model.num_params(),
        sizes=module.model.config.sizes(),
        global_step=trainer.global_step,
        wall_s=wall_s,
        wall_s_total=wall_s_total,
        fit_s=fit_s,
        output_dir=str(settings.output_dir),
        ckpt_dir=str(settings.ckpt_dir),
        last_ckpt=last_ckpt,
        log_dirs=[entry["dir"] for entry in loggers],
        # The same folders, each with the logger that writes there (the console's labels).
        loggers=loggers,
        resumed_from=job.resume,
        fingerprint=job.datamodule.fingerprint,
        report_dir=str(_sweep_dir() or settings.output_dir),
        hf_export=None if settings.hf_export_to is None else str(settings.hf_export_to),
        # Per size (the start, then each growth): graphs compiled, first step's seconds.
        compile=None if settings.compile is None else module.compile_stats,
    )


def _sweep_dir() -> Path | None:
    """The multirun's folder when this job is part of one (the report's natural input)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None


def _final_val_loss(trainer: Any, module: Any, datamodule: Any) -> float | None:
    """The validation loss at the last step; validates once more if the run did not end
    on a validation."""
    if not _validated_at_end(trainer) or "val/loss" not in trainer.callback_metrics:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    value = trainer.callback_metrics.get("val/loss")
    return None if value is None else float(value)


def _validated_at_end(trainer: Any) -> bool:
    """Whether the fit's last validation ran after its last training batch."""
    interval = trainer.val_check_batch
    batches = trainer.global_step * trainer.accumulate_grad_batches
    return isinstance(interval, int) and interval > 0 and batches % interval == 0


def _save_final_checkpoint(trainer: Any) -> str | None:
    """Make ``last.ckpt`` hold the final state, also when ``max_steps`` is not a multiple
    of the checkpoint interval."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from progrow.training.lightning_internals import last_saved_step

    checkpoint = trainer.checkpoint_callback
    if not isinstance(checkpoint, ModelCheckpoint) or checkpoint.dirpath is None:
        return None
    if last_saved_step(checkpoint) != trainer.global_step:
        last = checkpoint.last_model_path or str(Path(checkpoint.dirpath) / "last.ckpt")
        trainer.save_checkpoint(last, weights_only=False)  # full state, as ModelCheckpoint's
        return last
    return checkpoint.last_model_path or None


#: Config errors of this process's jobs (a multirun goes on with its other jobs).
_config_errors: list[str] = []
#: Whether the user asked for full tracebacks (``HYDRA_FULL_ERROR=1`` at launch).
FULL_ERROR_ENV = "PROGROW_FULL_ERROR"


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the final validation loss (for sweepers).

    A launch that fails before writing anything leaves no run folder behind. A
    :class:`~progrow.app.settings.ConfigError` is printed as one line and recorded (the
    process then exits with status 2, see :func:`main`) instead of a traceback.
    """
    from hydra.core.hydra_config import HydraConfig

    from progrow.app.console import remove_if_unused, user_error

    try:
        return train(cfg)["val_loss"]
    except Exception as err:
        remove_if_unused(Path(HydraConfig.get().runtime.output_dir))
        message = user_error(err)
        if message is None or os.environ.get(FULL_ERROR_ENV) == "1":
            raise
        print(f"progrow-train: error: {message}", file=sys.stderr)
        _config_errors.append(message)
        return None


def main() -> None:
    """``progrow-train`` and ``python -m progrow.train``: :func:`hydra_main`, with an error
    in the config (a bad value, a YAML syntax error, an unknown option) reported as one
    line on stderr and exit status 2 instead of a traceback. ``HYDRA_FULL_ERROR=1`` shows
    full tracebacks instead."""
    from progrow.app.console import user_error

    previous = os.environ.get("HYDRA_FULL_ERROR")
    # The user's choice, kept for the processes this one starts (DDP ranks re-run this
    # command and inherit the HYDRA_FULL_ERROR=1 set just below).
    set_here = FULL_ERROR_ENV not in os.environ
    full = os.environ.setdefault(FULL_ERROR_ENV, "1" if previous == "1" else "0") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # errors reach this function, not Hydra's printer
    try:
        hydra_main()
    except Exception as err:
        message = None if full else user_error(err)
        if message is None:
            raise
        print(f"progrow-train: error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
        if set_here:
            os.environ.pop(FULL_ERROR_ENV, None)
    if _config_errors:
        sys.exit(2)


if __name__ == "__main__":
    main()
