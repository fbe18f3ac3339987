"""The loss-continuity probe: one fixed batch whose loss is measured just before and
just after every growth (``GrowthCallback``'s ``growth/loss_before``/``loss_after``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

from progrow.model import Transformer
from progrow.training.module import lm_loss

LossFn = Callable[[L.LightningModule, Tensor], Tensor]


def probe_tokens(batch: Any) -> Tensor | None:
    """The token ids of a batch of a common shape, for the default probe loss.

    A ``(B, T + 1)`` integer tensor itself, the first element of a tuple or list (a
    ``TensorDataset`` loader), or a mapping's ``"input_ids"``; ``None`` for anything else.
    """
    if isinstance(batch, Mapping):
        batch = batch.get("input_ids")
    elif isinstance(batch, (tuple, list)):
        batch = batch[0] if batch else None
    is_tokens = (
        isinstance(batch, Tensor)
        and batch.ndim == 2
        and batch.shape[1] >= 2
        and not batch.is_floating_point()
        and not batch.is_complex()
    )
    return batch if is_tokens else None


def _describe(batch: Any) -> str:
    if isinstance(batch, Tensor):
        return f"a {tuple(batch.shape)} {batch.dtype} tensor"
    if isinstance(batch, Mapping):
        return f"a {type(batch).__name__} with keys {sorted(map(str, batch))}"
    return f"a {type(batch).__name__}"


def capture_probe(
    trainer: L.Trainer, batch: Any, probe_batch: Any = None, loss_fn: LossFn | None = None
) -> Any:
    """This fit's probe batch, checked now (not at the first growth), the same on every
    rank (rank 0's), on the CPU: ``probe_batch`` if given, else the datamodule's
    ``probe_batch()`` if it has one, else ``batch`` (the run's first training batch)."""
    datamodule = getattr(trainer, "datamodule", None)
    if probe_batch is not None:
        batch = probe_batch
    elif datamodule is not None and hasattr(datamodule, "probe_batch"):
        batch = datamodule.probe_batch()
    if loss_fn is None:
        tokens = probe_tokens(batch)
        if tokens is None:
            raise ValueError(
                f"GrowthCallback: the probe batch is {_describe(batch)}; the default "
                "probe loss needs token ids: a (B, T + 1) integer tensor, a tuple/list "
                "whose first element is one, or a dict with 'input_ids'. Pass "
                "loss_fn=(pl_module, batch) -> loss (or probe_batch=...) for this batch."
            )
        batch = tokens
    batch = apply_to_collection(batch, Tensor, lambda t: t.detach().cpu().clone())
    if trainer.world_size > 1:
        # Each rank's first batch differs (distributed sampler): probe rank 0's on all,
        # so every rank measures, logs and decides on the same numbers.
        batch = trainer.strategy.broadcast(batch, src=0)
    return batch


def probe_loss(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    model: Transformer,
    probe: Any,
    loss_fn: LossFn | None = None,
) -> float:
    """The loss on ``probe`` in eval mode, without gradients, under the trainer's precision:
    ``loss_fn(pl_module, batch)`` if given, else next-token cross-entropy of ``model``."""
    batch = move_data_to_device(probe, pl_module.device)
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            loss = loss_fn(pl_module, batch) if loss_fn is not None else lm_loss(model, batch)
    finally:
        pl_module.train(was_training)
    return float(loss)
