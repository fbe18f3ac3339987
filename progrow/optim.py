"""AdamW with decay / no-decay groups, and the learning-rate schedules: linear warmup,
then a cosine decay or a warmup-stable-decay (constant, then a linear decay at the end)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from progrow.optimizer_layout import layer_pattern

#: The learning-rate schedules after warmup (see :func:`lr_multiplier`).
Schedule = Literal["cosine", "wsd"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


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
    """The run's optimizer steps: the schedule ends (at its floor) there."""
    min_lr_ratio: float = 0.1
    """The decay (cosine or WSD's linear one) ends at ``lr * min_lr_ratio``."""
    schedule: Schedule = "cosine"
    """After warmup: "cosine" decays from ``lr`` to the floor over the rest of the run;
    "wsd" (warmup-stable-decay) holds ``lr``, then decays linearly to the floor over the
    last ``decay_fraction`` of the run."""
    decay_fraction: float = 0.2
    """WSD only: the fraction of ``max_steps`` spent decaying, in (0, 1]."""
    foreach: bool | None = None
    fused: bool | None = None
    fan_in_groups: bool = False
    """One decay group per weight (the same weight of every layer) instead of one for
    all: what ``GrowthCallback(lr_fan_in_exponent=...)`` needs to give each fan-in its
    own learning-rate factor (see :func:`param_groups`)."""

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
        if not isinstance(self.fan_in_groups, bool):
            raise ValueError(
                f"optim.fan_in_groups must be true or false, got {self.fan_in_groups!r}"
            )
        self._check_schedule()
        object.__setattr__(self, "betas", tuple(self.betas))

    def _check_schedule(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule={self.schedule!r}: use one of {list(SCHEDULES)}")
        fraction = self.decay_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise ValueError(f"optim.decay_fraction must be a number, got {fraction!r}")
        if not 0 < fraction <= 1:
            raise ValueError(f"optim.decay_fraction must be in (0, 1], got {fraction!r}")
        if self.schedule == "wsd" and self.decay_start < self.warmup_steps:
            raise ValueError(
                f"optim.decay_fraction={fraction!r}: the decay would start at step "
                f"{self.decay_start}, inside the warmup (optim.warmup_steps="
                f"{self.warmup_steps}, max_steps={self.max_steps}); lower one of them"
            )

    @property
    def decay_steps(self) -> int:
        """WSD: how many steps the final linear decay lasts (at least 1)."""
        return max(1, round(self.decay_fraction * self.max_steps))

    @property
    def decay_start(self) -> int:
        """WSD: the first step of the final decay (the stable phase ends before it)."""
        return self.max_steps - self.decay_steps


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and norm gains (1-D tensors) are not decayed."""
    return param.ndim < 2


def param_groups(module: nn.Module, weight_decay: float, by_fan_in: bool = False) -> list[dict]:
    """Two groups, each in ``named_parameters()`` order: decay first, then no-decay.

    ``by_fan_in``: the decay group is split into one group per weight, named as in every
    layer (``blocks.#.attn.q.weight``; in order of first appearance), so each holds
    weights of one fan-in and can take its own learning-rate factor. A growth never adds
    such a name, so the groups stay the same across growth (new layers join theirs).
    """
    decay: dict[str, list[nn.Parameter]] = {} if by_fan_in else {"": []}
    no_decay: list[nn.Parameter] = []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if is_no_decay(name, param):
            no_decay.append(param)
        else:
            decay.setdefault(layer_pattern(name) if by_fan_in else "", []).append(param)
    groups = [{"params": params, "weight_decay": weight_decay} for params in decay.values()]
    return [*groups, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(module: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    kwargs: dict = {}
    if cfg.foreach is not None:
        kwargs["foreach"] = cfg.foreach
    if cfg.fused is not None:
        kwargs["fused"] = cfg.fused
    return torch.optim.AdamW(
        param_groups(module, cfg.weight_decay, by_fan_in=cfg.fan_in_groups),
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        **kwargs,
    )


def lr_multiplier(step: int, cfg: OptimConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based) under ``cfg.schedule``.

    A pure function of the step, so a resumed run (whose scheduler restores its step
    count) continues with the same values, and a growing run and its fixed-size baseline
    of equal ``max_steps`` follow the same schedule.

    Example:
        >>> cfg = OptimConfig(warmup_steps=10, max_steps=100, schedule="wsd")
        >>> [lr_multiplier(s, cfg) for s in (9, 50, 80, 90)]
        [1.0, 1.0, 1.0, 0.55]
    """
    if cfg.schedule == "wsd":
        return warmup_stable_decay(step, cfg)
    return warmup_cosine(step, cfg)


def warmup_stable_decay(step: int, cfg: OptimConfig) -> float:
    """Warmup-stable-decay multiplier: linear warmup, 1 until ``cfg.decay_start``, then a
    linear decay reaching ``cfg.min_lr_ratio`` at ``cfg.max_steps``.

    The stable phase keeps the learning rate high for most of the run, so a model grown
    part-way trains at the peak rate, and the decay (where most of the final loss drop
    happens) is the same for every run of one length.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if step < cfg.decay_start:
        return 1.0
    progress = min(1.0, (step - cfg.decay_start) / cfg.decay_steps)
    return 1.0 - (1.0 - cfg.min_lr_ratio) * progress


def warmup_cosine(step: int, cfg: OptimConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warmup, then
    a cosine from 1 to ``cfg.min_lr_ratio`` at ``cfg.max_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine
