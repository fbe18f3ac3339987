"""AdamW with decay / no-decay groups, and linear warmup then cosine decay."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule of :class:`progrow.training.LMModule`."""

    lr: float = 3e-3
    """Peak learning rate."""
    weight_decay: float = 0.1
    """AdamW decay on matrices and embeddings; never on biases and norm gains."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 20
    """Linear warmup from ~0 to ``lr``."""
    max_steps: int = 1000
    """Length of the cosine decay (the run's optimizer steps)."""
    min_lr_ratio: float = 0.1
    """The cosine ends at ``lr * min_lr_ratio``."""
    foreach: bool | None = None
    fused: bool | None = None

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.max_steps <= 0:
            raise ValueError(f"optim.max_steps must be > 0, got {self.max_steps!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        object.__setattr__(self, "betas", tuple(self.betas))


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and norm gains (1-D tensors) are not decayed."""
    return param.ndim < 2


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups, each in ``named_parameters()`` order: decay first, then no-decay."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if is_no_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_adamw(module: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    kwargs: dict = {}
    if cfg.foreach is not None:
        kwargs["foreach"] = cfg.foreach
    if cfg.fused is not None:
        kwargs["fused"] = cfg.fused
    return torch.optim.AdamW(
        param_groups(module, cfg.weight_decay),
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        **kwargs,
    )


def warmup_cosine(step: int, cfg: OptimConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine
