"""The loss-continuity probe: one fixed batch whose loss is measured just before and
just after every growth (``GrowthCallback``'s ``growth/loss_before``/``loss_after``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

from progrow.loss import lm_loss
from progrow.model import Transformer

LossFn = Callable[[L.LightningModule, Tensor], Tensor]
#: What the default probe loss reads: ``(B, T + 1)`` token ids, or ``(inputs, targets)``.
Probe = Tensor | tuple[Tensor, Tensor]


def _is_ids(value: Any, min_len: int) -> bool:
    """Whether ``value`` is a ``(B, T)`` integer tensor with ``T >= min_len``."""
    return (
        isinstance(value, Tensor)
        and value.ndim == 2
        and value.shape[1] >= min_len
        and not value.is_floating_point()
        and not value.is_complex()
    )


def probe_pair(batch: Any) -> tuple[Tensor, Tensor] | None:
    """``(inputs, targets)`` if ``batch`` is such a pair, else ``None``.

    A tuple or list of exactly two ``(B, T)`` integer tensors of the same shape (a
    ``TensorDataset(x, y)`` loader): the user trains on ``model(inputs)`` against
    ``targets``, which need not be ``inputs`` shifted, so the probe must score the same
    pair rather than read ``inputs`` alone as a token stream.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        return None
    inputs, targets = batch
    if _is_ids(inputs, 1) and _is_ids(targets, 1) and inputs.shape == targets.shape:
        return inputs, targets
    return None


def probe_tokens(batch: Any) -> Tensor | None:
    """The token ids of a batch of a common shape, for the default probe loss.

    A ``(B, T + 1)`` integer tensor itself, the first element of a tuple or list (a
    ``TensorDataset`` loader), or a mapping's ``"input_ids"``; ``None`` for anything else.
    An ``(inputs, targets)`` pair is :func:`probe_pair`'s, checked first by
    :func:`default_probe`.
    """
    if isinstance(batch, Mapping):
        batch = batch.get("input_ids")
    elif isinstance(batch, (tuple, list)):
        batch = batch[0] if batch else None
    return batch if _is_ids(batch, 2) else None


def default_probe(batch: Any) -> Probe | None:
    """What the default probe loss reads from ``batch``: an ``(inputs, targets)`` pair
    (:func:`probe_pair`), else its token ids (:func:`probe_tokens`), else ``None``."""
    pair = probe_pair(batch)
    return pair if pair is not None else probe_tokens(batch)


def default_probe_loss(model: torch.nn.Module, probe: Probe) -> Tensor:
    """Next-token cross-entropy: of ``model(inputs)`` against ``targets`` for a pair, of
    the shifted token ids (:func:`~progrow.training.lm_loss`) for a tensor."""
    if isinstance(probe, tuple):
        inputs, targets = probe
        logits = model(inputs)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    return lm_loss(model, probe)


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
        probe = default_probe(batch)
        if probe is None:
            raise ValueError(
                f"GrowthCallback: the probe batch is {_describe(batch)}; the default "
                "probe loss needs token ids: a (B, T + 1) integer tensor, a tuple/list "
                "whose first element is one, an (inputs, targets) pair of integer tensors "
                "of one shape, or a dict with 'input_ids'. Pass "
                "loss_fn=(pl_module, batch) -> loss (or probe_batch=...) for this batch."
            )
        batch = probe
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
    ``loss_fn(pl_module, batch)`` if given, else :func:`default_probe_loss` of ``model``."""
    batch = move_data_to_device(probe, pl_module.device)
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            if loss_fn is not None:
                loss = loss_fn(pl_module, batch)
            else:
                loss = default_probe_loss(model, batch)
    finally:
        pl_module.train(was_training)
    return float(loss)
