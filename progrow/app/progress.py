"""The console progress bar of training runs (``conf/callbacks/default.yaml``)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Rich progress bar for step-based runs: the training stream is one endless epoch, so
    "Epoch 0/-2" and the logger's ``v_num`` say nothing; the bar shows steps instead."""

    def _get_train_description(self, current_epoch: int) -> str:
        return "train steps"

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items
