"""Learning-rate factors on top of the schedule, without the scaled value leaking anywhere.

Three factors, multiplied: for a few steps after a growth the learning rate is ramped back
up (step ``i`` after it uses ``from + (1 - from) * (i + 1) / rewarmup_steps`` of the
scheduled value), a model narrower than its final width may train at
``(final / width) ** exponent`` times the scheduled value, and each param group of
weight matrices may train at ``(final fan-in / fan-in) ** exponent`` times it (its own
factor: :func:`fan_in_finals`). The scaled value is in the param groups from the start
of the step's first micro-batch (so ``LearningRateMonitor``
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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from torch import nn
from torch.utils.hooks import RemovableHandle

from progrow.config import TransformerConfig
from progrow.model import Transformer
from progrow.optimizer_layout import layer_pattern, param_names, prefix_of


def rewarmup_scale(
    steps_since_growth: int, rewarmup_steps: int, start: float = 0.0
) -> float | None:
    """The factor on the scheduled LR ``steps_since_growth`` steps after a growth, or
    ``None`` outside the re-warmup window: a line from ``start`` (the factor before the
    window's first step) to 1 at its last step.

    Example:
        >>> [rewarmup_scale(i, 4) for i in (-1, 0, 3, 4)]
        [None, 0.25, 1.0, None]
        >>> [rewarmup_scale(i, 4, start=0.2) for i in (0, 3)]
        [0.4, 1.0]
    """
    if rewarmup_steps <= 0 or not 0 <= steps_since_growth < rewarmup_steps:
        return None
    ramp = (steps_since_growth + 1) / rewarmup_steps
    return ramp if start == 0 else start + (1 - start) * ramp


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


def fan_in_roles(configs: Sequence[TransformerConfig]) -> dict[str, tuple[int, ...]]:
    """Per weight matrix of a Transformer, named as in every layer (``blocks.#.attn.o.weight``),
    its fan-in (the ``nn.Linear``'s input size) under each of ``configs``.

    Embeddings (a tied output projection included), norm gains and biases have none.

    Example:
        >>> from progrow import TransformerConfig
        >>> small = TransformerConfig(d_model=8, d_mlp=16, n_layers=1)
        >>> fan_in_roles([small, small.replace(d_mlp=32)])["blocks.#.mlp.proj.weight"]
        (16, 32)
    """
    per_config = []
    for config in configs:
        with torch.device("meta"):  # shapes only: nothing is allocated or drawn
            model = Transformer(config)
        per_config.append(
            {
                layer_pattern(name): int(param.shape[1])
                for name, param in model.named_parameters()
                if name.endswith(".weight")
                and isinstance(model.get_submodule(name.rpartition(".")[0]), nn.Linear)
            }
        )
    return {role: tuple(sizes[role] for sizes in per_config) for role in per_config[-1]}


def fan_in_finals(
    optimizers: Sequence[torch.optim.Optimizer],
    module: nn.Module,
    model: Transformer,
    configs: Sequence[TransformerConfig],
    option: str = "lr_fan_in_exponent",
) -> list[list[int | None]]:
    """Per optimizer and param group, the fan-in its weight matrices end with (under the
    last of ``configs``), or ``None`` for a group whose LR is not scaled (embeddings,
    gains, biases, parameters outside ``model``).

    A group's factor must be one number, so its weights must have one fan-in under every
    config (``model``'s sizes before and after each stage).

    Raises:
        ValueError: naming ``option``, the group and two of its parameters, for a group
            that mixes weights of different fan-ins (or scaled and unscaled ones).
    """
    roles = fan_in_roles(configs)
    prefix = prefix_of(module, model)
    names = param_names(module)
    out: list[list[int | None]] = []
    for i, optimizer in enumerate(optimizers):
        finals: list[int | None] = []
        for g, group in enumerate(optimizer.param_groups):
            seen: dict[tuple[int, ...] | None, str] = {}
            for p in group["params"]:
                name = names.get(id(p), "?")
                inner = name[len(prefix) :] if name.startswith(prefix) else None
                seen.setdefault(None if inner is None else roles.get(layer_pattern(inner)), name)
            if len(seen) > 1:
                shown = "; ".join(f"{n}: {s or 'not scaled'}" for s, n in list(seen.items())[:2])
                raise ValueError(
                    f"{option}: param group {g} of optimizer {i} mixes parameters whose "
                    f"fan-ins differ ({shown}), so no one learning-rate factor fits it; "
                    "give each fan-in its own group, e.g. progrow.optim.param_groups(..., "
                    "by_fan_in=True) (LMModule: OptimConfig(fan_in_groups=True), which "
                    "the app sets with growth.lr_fan_in_exponent)"
                )
            sizes = next(iter(seen), None)
            finals.append(None if sizes is None else sizes[-1])
        out.append(finals)
    return out


def fan_in_factors(
    optimizers: Sequence[torch.optim.Optimizer],
    finals: Sequence[Sequence[int | None]],
    exponent: float,
) -> list[list[float]]:
    """Per optimizer and param group, ``(final fan-in / fan-in) ** exponent``: the fan-in
    read from the group's first weight now, the final one from :func:`fan_in_finals`
    (1 for the groups it leaves unscaled, and at the final size)."""
    return [
        [
            1.0
            if final is None
            else width_lr_scale(int(group["params"][0].shape[1]), final, exponent)
            for group, final in zip(optimizer.param_groups, group_finals, strict=True)
        ]
        for optimizer, group_finals in zip(optimizers, finals, strict=True)
    ]


@dataclass
class _Scaled:
    groups: list[tuple[dict[str, Any], float, float]]  # (param group, scheduled lr, factor)
    visible: bool = True  # the groups hold the scaled value now
    in_step: bool = False  # inside optimizer.step (between its pre- and post-hook)

    def apply(self) -> None:
        for group, lr, scale in self.groups:
            group["lr"] = lr * scale
        self.visible = True

    def undo(self) -> None:
        for group, lr, _ in self.groups:
            group["lr"] = lr
        self.visible = False


@dataclass
class GrowthLRScale:
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

    def start_step(
        self,
        optimizers: list[torch.optim.Optimizer],
        scale: float,
        per_group: Sequence[Sequence[float]] | None = None,
    ) -> None:
        """At the first micro-batch of a scaled step: show the scaled LRs, ``scale`` times
        each group's own factor from ``per_group`` (per optimizer, per group) if given."""
        for i, optimizer in enumerate(optimizers):
            if id(optimizer) in self._scaled:
                continue
            groups = optimizer.param_groups
            factors = per_group[i] if per_group is not None else [1.0] * len(groups)
            scaled = _Scaled(
                [(g, g["lr"], scale * f) for g, f in zip(groups, factors, strict=True)]
            )
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


class GrowthLR:
    """The learning-rate levers of growth, as :class:`~progrow.GrowthCallback` applies them:
    the re-warmup after each growth, the width factor and the per-group fan-in factor
    (the module doc), validated when built, each refusal naming its option.

    The callback calls :meth:`prepare` at setup, :meth:`attach` once the optimizers
    exist, :meth:`start_step` at each step's first micro-batch, :meth:`before_step` and
    :meth:`end_batch` around the optimizer step, :meth:`detach` at teardown.
    """

    def __init__(
        self,
        rewarmup_steps: int = 0,
        rewarmup_from: float = 0.0,
        lr_width_exponent: float = 0.0,
        lr_fan_in_exponent: float = 0.0,
    ) -> None:
        _check_levers(rewarmup_steps, rewarmup_from, lr_width_exponent, lr_fan_in_exponent)
        self.rewarmup_steps = rewarmup_steps
        self.rewarmup_from = float(rewarmup_from)
        self.lr_width_exponent = float(lr_width_exponent)
        self.lr_fan_in_exponent = float(lr_fan_in_exponent)
        self._final_d_model: int | None = None
        self._configs: list[TransformerConfig] = []  # the start and each stage's
        self._fan_in_finals: list[list[int | None]] = []  # per optimizer and group
        self._scale = GrowthLRScale()

    @property
    def active(self) -> bool:
        """Whether any lever is on (else every method leaves the optimizers alone)."""
        return bool(self.rewarmup_steps or self.lr_width_exponent or self.lr_fan_in_exponent)

    def prepare(
        self, trainer: L.Trainer, callback: L.Callback, configs: list[TransformerConfig]
    ) -> None:
        """At setup: the configs the schedule goes through (the last is the final one),
        and ``callback`` moved before any ``LearningRateMonitor``, which reads the LR at
        batch start, after the callback has scaled it."""
        self._configs = list(configs)
        self._final_d_model = configs[-1].d_model
        if not self.active:
            return
        callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]
        monitors = [i for i, c in enumerate(callbacks) if isinstance(c, LearningRateMonitor)]
        if monitors and callbacks.index(callback) > monitors[0]:
            callbacks.remove(callback)
            callbacks.insert(monitors[0], callback)

    def attach(self, trainer: L.Trainer, pl_module: nn.Module, model: Transformer) -> None:
        """Hook the trainer's optimizers; a group that no single fan-in factor fits is
        refused here, before step 0."""
        if self.lr_fan_in_exponent:
            self._fan_in_finals = fan_in_finals(trainer.optimizers, pl_module, model, self._configs)
        if self.active:
            self._scale.attach(trainer.optimizers)

    def detach(self) -> None:
        """Put every scheduled LR back and remove the hooks."""
        self._scale.detach()

    def scale(self, global_step: int, d_model: int, last_growth: int | None) -> float:
        """The factor on the scheduled LR: the width factor times the re-warmup ramp
        (``last_growth``: the step of the last growth, ``None`` before any)."""
        final = self._final_d_model or d_model
        scale = width_lr_scale(d_model, final, self.lr_width_exponent)
        if last_growth is not None:
            ramp = rewarmup_scale(
                global_step - last_growth, self.rewarmup_steps, self.rewarmup_from
            )
            scale *= 1.0 if ramp is None else ramp
        return scale

    def start_step(
        self,
        optimizers: list[torch.optim.Optimizer],
        global_step: int,
        d_model: int,
        last_growth: int | None,
    ) -> None:
        """At a step's first micro-batch: show the step's scaled LRs, if any differ."""
        if not self.active:
            return
        scale = self.scale(global_step, d_model, last_growth)
        per_group = None
        if self.lr_fan_in_exponent:
            per_group = fan_in_factors(optimizers, self._fan_in_finals, self.lr_fan_in_exponent)
        if scale != 1.0 or any(f != 1.0 for groups in per_group or [] for f in groups):
            self._scale.start_step(optimizers, scale, per_group)

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._scale.before_step(optimizer)

    def end_batch(self) -> None:
        self._scale.end_batch()


def _number_in(value: Any, low: float, high: float, closed: bool = True) -> bool:
    """Whether ``value`` is a real number (not a bool) in ``[low, high]`` (or
    ``[low, high)`` when not ``closed``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return low <= value <= high if closed else low <= value < high


def _check_levers(
    rewarmup_steps: Any, rewarmup_from: Any, lr_width_exponent: Any, lr_fan_in_exponent: Any
) -> None:
    """Refuse a bad lever value or a bad combination, naming the option and the value."""
    if (
        isinstance(rewarmup_steps, bool)
        or not isinstance(rewarmup_steps, int)
        or rewarmup_steps < 0
    ):
        raise ValueError(f"rewarmup_steps must be an int >= 0, got {rewarmup_steps!r}")
    if not _number_in(lr_width_exponent, 0, 4):
        raise ValueError(f"lr_width_exponent must be a number in [0, 4], got {lr_width_exponent!r}")
    if not _number_in(rewarmup_from, 0, 1, closed=False):
        raise ValueError(f"rewarmup_from must be a number in [0, 1), got {rewarmup_from!r}")
    if rewarmup_from and not rewarmup_steps:
        raise ValueError(
            f"rewarmup_from={rewarmup_from!r} needs rewarmup_steps > 0 (it is where the "
            "re-warmup ramp starts, and rewarmup_steps=0 has none)"
        )
    if not _number_in(lr_fan_in_exponent, 0, 4):
        raise ValueError(
            f"lr_fan_in_exponent must be a number in [0, 4], got {lr_fan_in_exponent!r}"
        )
    if lr_fan_in_exponent and lr_width_exponent:
        raise ValueError(
            f"lr_fan_in_exponent={lr_fan_in_exponent!r} with lr_width_exponent="
            f"{lr_width_exponent!r}: both scale the weight matrices' LR by width; set one "
            "of them to 0"
        )
