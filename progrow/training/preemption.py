"""Stop cleanly on a signal: checkpoint at the next optimizer step, requeue SLURM jobs.

A signal handler runs between two Python bytecodes of the main thread: possibly in the
middle of a backward pass whose gradient all-reduce the other ranks are waiting in.
Saving a checkpoint there (a collective under DDP) can deadlock, and a save interrupted
by the job's end leaves a torn file. So here the handler only records the signal; at the
next optimizer-step boundary every rank takes part in one small all-reduce of the flags,
so all ranks decide together, in the same step; all save the same checkpoint (written to
a temporary file and renamed, so it is complete or absent), rank 0 requeues a SLURM job,
and ``trainer.fit`` ends by raising :class:`FitInterrupted` on every rank.

Signals:

* ``SIGUSR1``: SLURM's warning before the time limit (``--signal=SIGUSR1@90``). Saves
  and requeues the job when it is a SLURM job (``SLURM_JOB_ID`` is set).
* ``SIGTERM``: ``scancel``, a preemption, ``scontrol requeue``, the time limit itself, a
  container stop. Saves and stops; never requeues. At this signal SLURM shows the same
  job state (``COMPLETING``) for a cancel as for a preemption or a time limit, so the
  signal cannot tell them apart: a ``scancel`` must end the job, and a preemption with
  ``PreemptMode=REQUEUE`` or an ``scontrol requeue`` is requeued by SLURM itself.
* ``SIGINT``: Ctrl-C. Saves and stops; a second Ctrl-C quits at once.

A requeued job keeps its id, so a run folder named after it and ``ckpt_path=auto`` (or
``trainer.fit(ckpt_path=<the saved file>)``) continue the run exactly.

The latch that records signals and :class:`FitInterrupted` are in
:mod:`progrow.training.signals`, the ``scontrol`` calls in :mod:`progrow.training.slurm`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint

from progrow.training.lightning_internals import log_step_metrics
from progrow.training.signals import FitInterrupted, SignalLatch, signal_name
from progrow.training.slurm import requeue_slurm_job, slurm_job_id

log = logging.getLogger(__name__)

#: Signals that end in a requeue when the process is part of a SLURM job: only the time
#: limit's warning. SIGTERM also comes from ``scancel``, which must stop the job.
REQUEUE_SIGNALS = (signal.SIGUSR1,)
#: Signals handled by default: the time-limit warning, termination and Ctrl-C.
DEFAULT_SIGNALS = (*REQUEUE_SIGNALS, signal.SIGTERM, signal.SIGINT)
#: The signals :meth:`PreemptionCallback.arm` records before training (a job's, not Ctrl-C).
_ARMED_EARLY = (*REQUEUE_SIGNALS, signal.SIGTERM)

_REASONS = {
    signal.SIGUSR1: "SIGUSR1 (time limit ahead)",
    signal.SIGTERM: "SIGTERM (cancel, preemption or time limit)",
    signal.SIGINT: "SIGINT (Ctrl-C)",
}


def save_checkpoint_atomically(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint(path)`` (collective: call on every rank), written under a
    temporary name and renamed, so ``path`` is never a torn checkpoint.

    A file replaces the old one in one step. A sharded checkpoint (a folder, written by
    every rank under FSDP) cannot replace a folder in one step: the old one is moved aside
    first and deleted after, so a crash in between leaves ``.<name>.old`` next to it.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    if trainer.is_global_zero:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)  # left by a crash: a sharded save must not mix with old shards
    trainer.strategy.barrier("progrow.save_checkpoint_atomically")
    # The full training state; left unset, Lightning logs that it defaults to it.
    trainer.save_checkpoint(tmp, weights_only=False)  # every rank; ends with a barrier
    if trainer.is_global_zero:
        if path.exists() and (tmp.is_dir() or path.is_dir()):
            old = path.with_name(f".{path.name}.old")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    trainer.strategy.barrier("progrow.save_checkpoint_atomically")  # all see the new one


def _flush_loggers(trainer: L.Trainer) -> None:
    """Log this step's metrics, which the loop would log right after the hook that stops
    (Lightning has no public call for it; tests/test_app.py checks the CSV has no gap),
    and flush every logger, before anything can kill the process.

    A logger whose service died (wandb-core receives the job's signals too, and exits on
    SIGTERM) must not stop the stop: the checkpoint is already saved, the requeue and the
    other ranks' barrier still have to happen. Its failure is logged instead.
    """
    steps: list[tuple[str, Any]] = [("log this step's metrics", lambda: log_step_metrics(trainer))]
    steps += [(f"{type(lg).__name__}.save()", lg.save) for lg in trainer.loggers]
    for what, call in steps:
        if not callable(call):
            continue
        try:
            call()
        except Exception as err:
            log.warning("%s failed at the signal (checkpoint already saved): %r", what, err)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class PreemptionCallback(L.Callback):
    """On SIGUSR1, SIGTERM or Ctrl-C: checkpoint at the next optimizer step, requeue, stop.

    Works with one process and under DDP (the ranks agree through one all-reduce of two
    flags per optimizer step, so they stop in the same step, even if only one of them got
    the signal). What happens, in order:

    1. the signal handler records the signal (nothing else: see the module docstring);
    2. at the end of the next training batch that stepped the optimizer (never between
       micro-batches of gradient accumulation), the ranks agree to stop;
    3. every rank takes part in saving a normal checkpoint of that step to ``ckpt_path``,
       atomically (default: the :class:`~lightning.pytorch.callbacks.ModelCheckpoint`'s
       ``last.ckpt``, so ``ckpt_path=auto`` and "resume from last" find it);
    4. for SIGUSR1 in a SLURM job, rank 0 runs ``scontrol requeue $SLURM_JOB_ID``
       (``requeue=False`` turns this off); never for SIGTERM (``scancel`` sends it) or
       Ctrl-C;
    5. ``trainer.fit`` raises :class:`FitInterrupted` on every rank.

    The handlers are installed when training starts, replacing Lightning's own (its SIGTERM
    handler broadcasts inside the handler; its SLURM auto-requeue saves inside it), and
    restored when training ends; :meth:`arm` installs the SIGUSR1/SIGTERM ones earlier, to
    cover data loading and setup too. Lightning's SLURM auto-requeue is also switched off in
    ``setup`` where the strategy exposes its cluster environment; pass
    ``plugins=[SLURMEnvironment(auto_requeue=False)]`` to the Trainer to make that explicit.

    A resumed fit logs where it resumed from and at which step.

    Args:
        ckpt_path: where to save; default: the ModelCheckpoint's last checkpoint path
            (``<dirpath>/last.ckpt``), else ``<default_root_dir>/checkpoints/last.ckpt``.
        requeue: requeue the SLURM job after SIGUSR1; ``None``: when
            ``SLURM_JOB_ID`` is set.
        signals: the signals to handle (default SIGUSR1, SIGTERM, SIGINT). Only SIGUSR1
            requeues.
        before_requeue: called with the trainer on every rank after the checkpoint and
            before the requeue (and before the stop when there is none): the last moment
            at which every process of the job is certainly alive. SLURM ends the job's
            processes when it requeues it, logging services included; the app finishes
            its W&B run here so that no history is lost.

    Example:
        >>> cb = PreemptionCallback(requeue=False)
        >>> [signal_name(s) for s in cb.signals]
        ['SIGUSR1', 'SIGTERM', 'SIGINT']
    """

    def __init__(
        self,
        ckpt_path: str | Path | None = None,
        *,
        requeue: bool | None = None,
        signals: Iterable[int] = DEFAULT_SIGNALS,
        before_requeue: Callable[[L.Trainer], None] | None = None,
    ) -> None:
        self.ckpt_path = None if ckpt_path is None else Path(ckpt_path)
        self.before_requeue = before_requeue
        self.requeue = requeue
        self.signals = tuple(signal.Signals(s) for s in signals)
        if not self.signals:
            raise ValueError("signals is empty: give at least one signal to handle")
        self._latch = SignalLatch(self.signals)
        self._armed: tuple[signal.Signals, ...] = ()
        self._last_step = -1

    def arm(self) -> None:
        """Record SIGUSR1/SIGTERM from now on, before ``fit`` (data loading and setup can
        take minutes: by default these signals would end the process there, and the SLURM
        job would neither save nor requeue). A signal recorded before training stops the
        run at its first optimizer step. Call :meth:`disarm` when the run is over.
        """
        self._armed = tuple(s for s in self.signals if s in _ARMED_EARLY)
        self._latch.install(self._armed)

    def disarm(self) -> None:
        """Undo :meth:`arm`: the handlers found before it are back."""
        self._latch.restore(self._armed)
        self._armed = ()
        self._latch.received.clear()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if isinstance(environment, SLURMEnvironment):
            # This callback requeues, after a checkpoint at a step boundary.
            environment.auto_requeue = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its handlers just before the training loop starts; this hook
        # runs after that, so these replace them. Signals recorded since arm() count.
        self._latch.install()
        self._last_step = trainer.global_step
        if trainer.ckpt_path and trainer.is_global_zero:
            log.info("resumed from %s at step %d", trainer.ckpt_path, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_training()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._end_training()

    def _end_training(self) -> None:
        # Armed signals stay recorded (not acted upon) until disarm().
        self._latch.restore([s for s in self.signals if s not in self._armed])
        if not self._armed:
            self._latch.received.clear()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step == self._last_step:
            return  # no optimizer step in this batch (gradient accumulation)
        self._last_step = trainer.global_step
        signum = self._agree(trainer)
        if signum:
            self._stop(trainer, signum)

    def _agree(self, trainer: L.Trainer) -> int:
        """The signal to act on (0: none), the same on every rank: a requeue signal that any
        rank received, else any other handled signal (SIGINT) that any rank received."""
        received = self._latch.received
        flags = [max((int(s) for s in received if s in REQUEUE_SIGNALS), default=0)]
        flags.append(max((int(s) for s in received if s not in REQUEUE_SIGNALS), default=0))
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            tensor = torch.tensor(flags, dtype=torch.int32, device=trainer.strategy.root_device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            flags = tensor.tolist()
        return flags[0] or flags[1]

    def _stop(self, trainer: L.Trainer, signum: int) -> None:
        path = self._target(trainer)
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and path.parent == _dirpath(checkpoint):
            # So that the checkpoint callback of the resumed run keeps writing this file.
            checkpoint.last_model_path = str(path)
        save_checkpoint_atomically(trainer, path)
        _flush_loggers(trainer)
        job_id = slurm_job_id()
        want = self.requeue if self.requeue is not None else job_id is not None
        requeue = signum in REQUEUE_SIGNALS and want and job_id is not None
        if trainer.is_global_zero:
            log.warning(
                "%s: saved a checkpoint at step %d to %s%s",
                _REASONS.get(signal.Signals(signum), signal_name(signum)),
                trainer.global_step,
                path,
                f"; requeueing SLURM job {job_id}" if requeue else "",
            )
        # SLURM ends the job's processes when it requeues it: nothing may follow that
        # matters. No rank exits before it is done (`srun --kill-on-bad-exit` would end
        # rank 0 when another rank exits first).
        if self.before_requeue is not None:
            try:
                self.before_requeue(trainer)
            except Exception as err:  # the checkpoint is saved: still requeue and stop
                log.warning("before_requeue failed at the signal: %r", err)
        requeued = bool(requeue and trainer.is_global_zero and requeue_slurm_job(str(job_id)))
        trainer.strategy.barrier("progrow.requeue")
        raise FitInterrupted(signum, trainer.global_step, str(path), requeued)

    def _target(self, trainer: L.Trainer) -> Path:
        if self.ckpt_path is not None:
            return self.ckpt_path
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and _dirpath(checkpoint) is not None:
            if checkpoint.last_model_path:
                return Path(checkpoint.last_model_path)
            name = checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION
            return Path(str(_dirpath(checkpoint))) / name
        return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def _dirpath(checkpoint: ModelCheckpoint) -> Path | None:
    return None if checkpoint.dirpath is None else Path(checkpoint.dirpath)


__all__ = [
    "DEFAULT_SIGNALS",
    "REQUEUE_SIGNALS",
    "PreemptionCallback",
    "save_checkpoint_atomically",
]
