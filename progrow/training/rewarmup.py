"""Learning-rate factors on top of the schedule, without the scaled value leaking anywhere.

Two factors, multiplied: for a few steps after a growth the learning rate is ramped back
up (step ``i`` after it uses ``(i + 1) / rewarmup_steps`` of the scheduled value), and a
model narrower than its final width may train at ``(final / width) ** exponent`` times the
scheduled value. The scaled value is in the param groups from the start of the step's
first micro-batch (so ``LearningRateMonitor``
and the user's ``training_step`` see the value actually used) until the optimizer step's
post-hook puts the scheduled value back, before the scheduler steps.

Lightning runs the closure (forward, backward, ``on_before_optimizer_step``) inside
``optimizer.step`` in full and bf16 precision, but before it with a ``GradScaler``, which
may then skip the step. So when ``on_before_optimizer_step`` comes outside a step, the
scheduled value goes back right there and the step's pre-hook re-applies the scaled one
only if the step does happen: a skipped step leaves the scheduled value for the
scheduler, and checkpoints never hold a scaled one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle


def rewarmup_scale(steps_since_growth: int, rewarmup_steps: int) -> float | None:
    """The factor on the scheduled LR ``steps_since_growth`` steps after a growth, or
    ``None`` outside the re-warmup window.

    Example:
        >>> [rewarmup_scale(i, 4) for i in (-1, 0, 3, 4)]
        [None, 0.25, 1.0, None]
    """
    if rewarmup_steps <= 0 or not 0 <= steps_since_growth < rewarmup_steps:
        return None
    return (steps_since_growth + 1) / rewarmup_steps


def width_lr_scale(d_model: int, final_d_model: int, exponent: float) -> float:
    """The learning-rate factor of a model of width ``d_model`` that grows to
    ``final_d_model``: ``(final_d_model / d_model) ** exponent`` (1 at the final width).

    Example:
        >>> [width_lr_scale(64, 128, p) for p in (1.0, 0.5)], width_lr_scale(128, 128, 1.0)
        ([2.0, 1.4142135623730951], 1.0)
    """
    if exponent == 0 or d_model >= final_d_model:
        return 1.0
    return float((final_d_model / d_model) ** exponent)


@dataclass
class _Scaled:
    scale: float
    groups: list[tuple[dict[str, Any], float]]  # (param group, its scheduled lr)
    visible: bool = True  # the groups hold the scaled value now
    in_step: bool = False  # inside optimizer.step (between its pre- and post-hook)

    def apply(self) -> None:
        for group, lr in self.groups:
            group["lr"] = lr * self.scale
        self.visible = True

    def undo(self) -> None:
        for group, lr in self.groups:
            group["lr"] = lr
        self.visible = False


@dataclass
class Rewarmup:
    """Scales optimizers' learning rates for one step at a time (see the module doc).

    Hooks live from :meth:`attach` to :meth:`detach` (called at fit start and teardown),
    so an optimizer never keeps a hook of a finished fit.
    """

    _handles: list[RemovableHandle] = field(default_factory=list)
    _scaled: dict[int, _Scaled] = field(default_factory=dict)  # by id(optimizer)

    def attach(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.detach()
        for optimizer in optimizers:
            self._handles.append(optimizer.register_step_pre_hook(self._pre_step))
            self._handles.append(optimizer.register_step_post_hook(self._post_step))

    def detach(self) -> None:
        """Put every scheduled LR back and remove the hooks."""
        for scaled in self._scaled.values():
            if scaled.visible:
                scaled.undo()
        self._scaled.clear()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def start_step(self, optimizers: list[torch.optim.Optimizer], scale: float) -> None:
        """At the first micro-batch of a re-warmup step: show the scaled LRs."""
        for optimizer in optimizers:
            if id(optimizer) in self._scaled:
                continue
            scaled = _Scaled(scale, [(g, g["lr"]) for g in optimizer.param_groups])
            scaled.apply()
            self._scaled[id(optimizer)] = scaled

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``on_before_optimizer_step``: outside ``optimizer.step`` (a GradScaler, which
        may skip the step), back to the scheduled LR until the step's pre-hook."""
        scaled = self._scaled.get(id(optimizer))
        if scaled is not None and not scaled.in_step:
            scaled.undo()

    def end_batch(self) -> None:
        """After the step (taken or skipped): forget what no longer applies."""
        self._scaled = {k: s for k, s in self._scaled.items() if s.visible}

    def _pre_step(self, optimizer: torch.optim.Optimizer, *args: Any) -> None:
        scaled = self._scaled.get(id(optimizer))
        if scaled is not None:
            scaled.in_step = True
            scaled.apply()

    def _post_step(self, optimizer: torch.optim.Optimizer, *args: Any) -> None:
        scaled = self._scaled.pop(id(optimizer), None)
        if scaled is not None:
            scaled.undo()
