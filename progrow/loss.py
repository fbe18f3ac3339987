"""The training loss: next-token cross-entropy (core: no Lightning)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def lm_loss(model: torch.nn.Module, batch: Tensor) -> Tensor:
    """Next-token cross-entropy on a ``(B, T + 1)`` batch of token ids."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
