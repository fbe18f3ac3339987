"""Every use of a Lightning internal in progrow, behind one door.

Growing a model inside ``trainer.fit`` needs a few things Lightning keeps private. Each
is wrapped here, with why no public API serves; nothing else in progrow touches a private
Lightning name. ``tests/test_lightning_internals.py`` exercises every function against
the installed Lightning, so a release that moves one fails that test by name instead of
breaking a run (tested with Lightning 2.6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch


def micro_batches_started_this_epoch(trainer: L.Trainer) -> int:
    """Training micro-batches started in the current epoch, this one included.

    Why: growth may only happen at the first micro-batch of a gradient-accumulation
    window; ``trainer.global_step`` counts optimizer steps, not micro-batches, and
    Lightning exposes no public counter of them (the fit loop's batch progress).
    """
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


def micro_batches_processed(trainer: L.Trainer) -> int:
    """Micro-batches trained on, over all epochs, restored ones included.

    Why: the data position of a resumable stream. It counts every ``training_step`` that
    returned, is restored from checkpoints, and is not moved by the loader's prefetching,
    which runs ahead of any count the loader could keep itself. No public equivalent.
    """
    total = trainer.fit_loop.epoch_loop.batch_progress.total
    return int(total.processed)  # type: ignore[attr-defined]  # typed as the base tracker


def build_optimizers(pl_module: L.LightningModule) -> list[torch.optim.Optimizer]:
    """The optimizers ``configure_optimizers`` builds on the module as it is now.

    Why: after a growth, the parameter groups a *resumed* run would build decide where
    new parameters go; ``configure_optimizers`` may return a dict, a tuple or lists, and
    Lightning's parser of those forms is private.
    """
    from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers

    optimizers, _ = _init_optimizers_and_lr_schedulers(pl_module)
    return list(optimizers)


def optimizers_to_device(optimizers: Sequence[Any], device: torch.device) -> None:
    """Move every optimizer state tensor to ``device``.

    Why: after rebuilding optimizers for a sharded checkpoint's shapes, their state must
    sit where the strategy expects it; Lightning's helper handles its optimizer wrappers.
    """
    from lightning.fabric.utilities.optimizer import _optimizers_to_device

    _optimizers_to_device(optimizers, device)


def ddp_start_method(strategy: Any) -> str:
    """How a DDP strategy starts its processes (``"popen"``: the script once per rank).

    Why: ``ddp_spawn``/``ddp_fork`` train in workers and hand back rank 0's weights
    only, so growth there would be lost; the strategy keeps this setting private.
    """
    return str(getattr(strategy, "_start_method", "popen"))


def last_saved_step(checkpoint: Any) -> int:
    """The global step of the last checkpoint a ``ModelCheckpoint`` wrote (-1: none).

    Why: the app writes a final ``last.ckpt`` only when the last step was not saved yet;
    ``ModelCheckpoint`` exposes the path of its last file, not its step.
    """
    return int(getattr(checkpoint, "_last_global_step_saved", -1))


def log_step_metrics(trainer: L.Trainer) -> None:
    """Log the current step's training metrics now.

    Why: a signal stops training inside ``on_train_batch_end``, before the loop logs that
    step's metrics; without this the CSV/W&B history would miss the step the checkpoint
    holds. Lightning has no public call for it.
    """
    trainer._logger_connector.update_train_step_metrics()
