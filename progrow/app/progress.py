"""The console progress bar of training runs (``conf/callbacks/default.yaml``)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Rich progress bar for step-based runs: the training stream is one endless epoch, so
    "Epoch 0/-2" and the logger's ``v_num`` say nothing; the bar shows steps instead.

    With ``trainer.max_steps`` set, the bar counts optimizer steps of the whole run,
    ``global_step/max_steps``: a run resumed at step 167 of 300 starts at ``167/300``, its
    elapsed time, speed and remaining time count from the resume. (Lightning's bar counts
    the batches of the current epoch against the steps left, which after a mid-epoch
    resume reads ``300/132``, and marks the bar finished, remaining ``0:00:00``, as soon as
    the count passes that total.) Without ``max_steps`` it is Lightning's bar.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        return "train steps"

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def _counts_steps(self) -> bool:
        max_steps = self.trainer.max_steps
        return max_steps is not None and max_steps > 0

    def _start_step_task(self, trainer: Any) -> None:
        """Make the training task count from ``global_step`` to ``max_steps``, its clock
        and speed starting now."""
        if self.progress is None or self.train_progress_bar_id is None:
            return
        self.progress.reset(
            self.train_progress_bar_id, total=trainer.max_steps, completed=trainer.global_step
        )

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._counts_steps():
            super().on_train_epoch_start(trainer, pl_module)
            return
        if self.is_disabled or self.train_progress_bar_id is not None:
            return  # one bar for the whole run, across epochs of a finite dataset
        super().on_train_epoch_start(trainer, pl_module)
        self._start_step_task(trainer)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        # A resume in the middle of the epoch skips on_train_epoch_start: the bar starts
        # before the first resumed step, at the checkpoint's step.
        if self._counts_steps() and not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
            self._start_step_task(trainer)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._counts_steps():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()
