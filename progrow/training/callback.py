"""``GrowthCallback``: grows the model inside ``trainer.fit`` at scheduled steps.

The expansions do the work (:mod:`progrow.expand`), optimizer surgery moves the state
(:mod:`progrow.surgery`); this callback only decides when, re-wraps DDP, checks loss
continuity and logs. ``docs/lightning-growth.md`` in the repository explains why each
step is where it is.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.hooks import RemovableHandle

from progrow.events import GrowthEvent, events_from_dicts
from progrow.expand.targets import grown_config
from progrow.model import Transformer
from progrow.optimizer_layout import GroupForNew, ParamOrder
from progrow.schedule import GrowthSchedule, GrowthStage, check_resumed_schedule, stage_seed
from progrow.surgery import (
    NewMoments,
    OptimizerState,
    SurgeryOptions,
    check_new_moments,
    check_optimizer_state,
)
from progrow.training.architecture import (
    find_transformer,
    rebuild_on_load,
    save_architecture,
)
from progrow.training.fsdp import GrowableModelParallelStrategy
from progrow.training.growth_lr import GrowthLR
from progrow.training.lightning_internals import (
    micro_batches_started_this_epoch,
)
from progrow.training.probe import LossFn, capture_probe, probe_loss
from progrow.training.strategies import check_strategy, fresh_layout, grow_in_fit

OnLossJump = Literal["raise", "warn", "ignore"]


class GrowthCallback(L.Callback):
    """Grow the LightningModule's Transformer at the steps of a :class:`GrowthSchedule`.

    The Transformer is found at ``pl_module.<model_attr>`` (default ``model``), so any
    LightningModule that keeps its :class:`progrow.Transformer` there works. At the first
    micro-batch of the optimizer step ``stage.step`` (so never in the middle of gradient
    accumulation), the callback:

    1. computes the loss on a fixed probe batch (eval mode, no grad);
    2. grows the model with values drawn from a generator seeded by ``(seed, stage)``, so
       every DDP rank and every resumed run draws the same values;
    3. moves the optimizer state to the grown parameters in place (the LR scheduler stays
       attached), see :func:`progrow.surgery.update_optimizer`;
    4. rebuilds the DistributedDataParallel wrapper under DDP;
    5. computes the probe loss again and logs ``growth/loss_before``,
       ``growth/loss_after``, ``growth/loss_delta``, ``growth/stage``, ``growth/params``;
       a ``|delta|`` above ``loss_tolerance`` raises or warns (``on_loss_jump``); under DDP
       every rank records and decides on rank 0's numbers, so all raise or none does.

    Growth is idempotent: a stage whose sizes the model already has is skipped, so resuming
    from a checkpoint before, between or after stages does the right thing. The callback
    also writes the architecture into every checkpoint (``checkpoint["progrow"]``; the
    Transformer's own state dict carries it too). Resuming a fit, it rebuilds the grown
    shapes as the checkpoint's state dict loads, before the optimizers are built
    (:func:`~progrow.training.architecture.rebuild_on_load`, from setup to fit start
    only); any other load of another size fails, as torch's does.

    Args:
        schedule: a :class:`GrowthSchedule` or a list of mappings such as
            ``{"step": 200, "d_mlp": 512}``.
        seed: run seed; the values of stage i come from ``stage_seed(seed, i)``.
        model_attr: where the Transformer lives on the LightningModule (dotted path).
        probe_batch: the fixed batch for loss continuity; default: the datamodule's
            ``probe_batch()`` if it has one, else the first training batch of the run.
            Under DDP every rank uses rank 0's probe batch.
        loss_fn: ``loss_fn(pl_module, batch) -> loss``; default: next-token cross-entropy
            of the Transformer on the batch's token ids (see :func:`probe_tokens`: a
            ``(B, T + 1)`` integer tensor, the first element of a tuple or list, or a
            dict's ``"input_ids"``), or of ``model(inputs)`` against ``targets`` for an
            ``(inputs, targets)`` pair of integer tensors of one shape (see
            :func:`probe_pair`). Other batch shapes need a ``loss_fn``; without one the fit
            stops at its first batch with a ``ValueError``.
        loss_tolerance: largest accepted ``|loss_after - loss_before|``.
        on_loss_jump: "raise", "warn" or "ignore" when the tolerance is exceeded.
        new_moments: how optimizer surgery fills new Adam entries ("zero" or
            "bias_corrected"); see :func:`progrow.surgery.update_optimizer`.
        group_for_new, param_order: passed to :func:`progrow.surgery.update_optimizer` for
            every optimizer. By default both follow ``configure_optimizers`` called on the
            grown module (it must build the same number of optimizers and groups), so the
            optimizer holds what a run resumed from the next checkpoint builds, in the same
            order, whatever order or grouping the module's ``configure_optimizers`` uses.
        rewarmup_steps: after each growth, ramp the learning rate linearly from
            ``1/rewarmup_steps`` of its scheduled value back to it over this many steps
            (0: off).
        rewarmup_from: where the re-warmup ramp starts, as a fraction of the scheduled
            LR in [0, 1): step ``i`` after a growth uses ``rewarmup_from + (1 -
            rewarmup_from) * (i + 1) / rewarmup_steps`` of it (0: the plain ramp above).
            Needs ``rewarmup_steps > 0``.
        lr_width_exponent: while the model is narrower than the schedule's final
            ``d_model``, multiply the scheduled learning rate by
            ``(final d_model / current d_model) ** lr_width_exponent`` (0: off). Adam's
            best learning rate falls roughly as 1 / width, so 1.0 trains the small early
            sizes at the rate that suits them; at the final size the factor is 1 and the
            run follows the same schedule as a fixed-size baseline. Composes with
            ``rewarmup_steps`` (the two factors multiply).
        lr_fan_in_exponent: per param group, multiply the scheduled LR of its weight
            matrices by ``(final fan-in / fan-in) ** lr_fan_in_exponent`` (0: off; 1:
            Adam's 1/fan-in rule per matrix), from the current shapes at every step, so
            it changes with each growth and is 1 at the final size; embeddings, gains and
            biases keep the scheduled LR. Each group must hold weights of one fan-in
            (refused at fit start otherwise; ``LMModule`` with
            ``OptimConfig(fan_in_groups=True)`` builds such groups). Refused together
            with ``lr_width_exponent``, which scales every group by ``d_model``.
        optimizer_state: Adam/SGD state at each growth: "carry" (default: moved onto the
            grown parameters), "reset_old" (the parameters the growth changed, and the
            new ones, start afresh: zero moments and step 0, so bias correction restarts)
            or "reset_all" (every parameter afresh); see
            :func:`progrow.surgery.update_optimizer`.
        resume_allow_changes: resume a checkpoint whose run grew per another schedule
            (a stage already grown that this schedule lists differently, or lacks): a
            warning instead of the ``ValueError``. A stage of this schedule at the index
            of an event of the checkpoint then draws that stage's values again and is
            logged with its index. A difference in stages still ahead always warns.

    A stage that perturbs (:attr:`progrow.GrowthStep.perturbs`) changes the
    function on purpose: its probe loss is measured and logged as for any growth, and its
    jump is reported as expected (an info line), never raised or warned about.

    Example:
        >>> cb = GrowthCallback([{"step": 10, "d_mlp": 64}, {"step": 20, "n_layers": 3}])
        >>> [stage.step for stage in cb.schedule]
        [10, 20]
    """

    def __init__(
        self,
        schedule: GrowthSchedule | Iterable[GrowthStage | Mapping[str, Any]],
        *,
        seed: int = 0,
        model_attr: str = "model",
        probe_batch: Any = None,
        loss_fn: LossFn | None = None,
        loss_tolerance: float = 1e-4,
        on_loss_jump: OnLossJump = "raise",
        new_moments: NewMoments = "zero",
        rewarmup_steps: int = 0,
        lr_width_exponent: float = 0.0,
        group_for_new: GroupForNew | None = None,
        param_order: ParamOrder | None = None,
        resume_allow_changes: bool = False,
        rewarmup_from: float = 0.0,
        lr_fan_in_exponent: float = 0.0,
        optimizer_state: OptimizerState = "carry",
    ) -> None:
        self.schedule = (
            schedule if isinstance(schedule, GrowthSchedule) else GrowthSchedule(schedule)
        )
        if on_loss_jump not in ("raise", "warn", "ignore"):
            raise ValueError(f"on_loss_jump must be raise|warn|ignore, got {on_loss_jump!r}")
        if not loss_tolerance >= 0:
            raise ValueError(f"loss_tolerance must be >= 0, got {loss_tolerance!r}")
        check_new_moments(new_moments)
        self.lr = GrowthLR(rewarmup_steps, rewarmup_from, lr_width_exponent, lr_fan_in_exponent)
        check_optimizer_state(optimizer_state, new_moments)
        self.seed = seed
        self.model_attr = model_attr
        self.probe_batch = probe_batch
        self.loss_fn = loss_fn
        self.loss_tolerance = loss_tolerance
        self.on_loss_jump = on_loss_jump
        self.new_moments = new_moments
        self.optimizer_state = optimizer_state
        self.group_for_new = group_for_new
        self.param_order = param_order
        if not isinstance(resume_allow_changes, bool):
            raise ValueError(
                f"resume_allow_changes must be True or False, got {resume_allow_changes!r}"
            )
        self.resume_allow_changes = resume_allow_changes
        self.events: list[GrowthEvent] = []
        self._probe: Any = None  # this fit's probe batch, on the CPU
        self._restoring: RemovableHandle | None = None  # see setup

    # -- setup: validate before step 0, make checkpoints carry the architecture ----------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy(trainer.strategy)
        if isinstance(trainer.strategy, GrowableModelParallelStrategy) and (
            self.new_moments != "zero"
        ):
            # Sharded surgery sees one parameter's state at a time; sibling statistics
            # would need the whole state gathered.
            raise ValueError(
                f"new_moments={self.new_moments!r} is not supported under FSDP2 "
                "(GrowableModelParallelStrategy); use new_moments='zero'"
            )
        model = find_transformer(pl_module, self.model_attr)
        self.schedule.validate_for(model.config, trainer.max_steps)
        configs = [model.config]
        for each in self.schedule:  # (``stage`` is the trainer's stage here)
            configs.append(grown_config(configs[-1], each.sizes, each.spec.init))
        self.lr.prepare(trainer, self, configs)
        self._probe = None
        # A resumed fit loads the checkpoint's state dict after setup, before the
        # optimizers exist: give the model the checkpoint's (grown) size then, and only
        # then (on_fit_start ends it). Sharded: GrowableModelParallelStrategy does it.
        self._end_restore()
        self._restoring = rebuild_on_load(model)

    def _end_restore(self) -> None:
        if self._restoring is not None:
            self._restoring.remove()
            self._restoring = None

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        save_architecture(pl_module, checkpoint, self.model_attr, optimizers=trainer.optimizers)

    def state_dict(self) -> dict[str, Any]:
        # The dict form: checkpoints hold plain data, and the keys of every release.
        return {"events": [e.to_dict() for e in self.events], "schedule": self.schedule.to_list()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events = events_from_dicts(state_dict["events"])
        grown = {event.stage for event in self.events}
        check_resumed_schedule(
            list(state_dict["schedule"]), self.schedule.to_list(), grown, self.resume_allow_changes
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_restore()
        self.lr.attach(trainer, pl_module, find_transformer(pl_module, self.model_attr))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Again: resuming under a sharded strategy may set up new optimizers after fit start.
        self.lr.attach(trainer, pl_module, find_transformer(pl_module, self.model_attr))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._end_restore()
        self.lr.detach()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._end_restore()
        self.lr.detach()  # no scaled LR left in an optimizer a user may save

    # -- the growth itself --------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._probe is None:
            self._probe = capture_probe(trainer, batch, self.probe_batch, self.loss_fn)
        ready = micro_batches_started_this_epoch(trainer)
        if (ready - 1) % trainer.accumulate_grad_batches != 0:
            return  # mid-accumulation: never grow between micro-batches of one step
        model = find_transformer(pl_module, self.model_attr)
        for index, stage in enumerate(self.schedule):
            if stage.step <= trainer.global_step and not self._reached(model, stage):
                # The grown model: a sharded growth replaces the module, so the old handle
                # would give a later stage and the width LR factor the old sizes.
                model = self._grow(trainer, pl_module, model, index, stage)
        last_growth = self.events[-1].step if self.events else None
        self.lr.start_step(
            trainer.optimizers, trainer.global_step, model.config.d_model, last_growth
        )

    @staticmethod
    def _reached(model: Transformer, stage: GrowthStage) -> bool:
        sizes = model.config.sizes()
        return all(sizes[dim] >= size for dim, size in stage.sizes.items())

    def _probe_loss(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        assert self._probe is not None, "the probe batch is set at the first training batch"
        model = find_transformer(pl_module, self.model_attr)
        return probe_loss(trainer, pl_module, model, self._probe, self.loss_fn)

    def _grow(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        model: Transformer,
        index: int,
        stage: GrowthStage,
    ) -> Transformer:
        """Grow ``model`` to ``stage``'s sizes; returns the model as the module now holds it
        (the same object after in-place growth, a new one after a sharded re-build)."""
        loss_before = self._probe_loss(trainer, pl_module)
        started = time.perf_counter()  # growth proper: expansion, surgery, DDP re-wrap
        params_before = model.num_params()
        generator = torch.Generator().manual_seed(stage_seed(self.seed, index))
        surgery = SurgeryOptions(
            new_moments=self.new_moments,
            optimizer_state=self.optimizer_state,
            group_for_new=self.group_for_new,
            param_order=self.param_order,
            layout=lambda module: fresh_layout(trainer, pl_module),
        )
        model = grow_in_fit(trainer, pl_module, stage.spec, surgery, generator, self.model_attr)
        seconds = time.perf_counter() - started
        loss_after = self._probe_loss(trainer, pl_module)
        if trainer.world_size > 1:
            # Every rank records and decides on rank 0's numbers: a jump seen on one rank
            # only would raise there and leave the other ranks waiting in a collective.
            loss_before, loss_after = trainer.strategy.broadcast((loss_before, loss_after), 0)
        event = GrowthEvent(
            stage=index,
            step=trainer.global_step,
            params_before=params_before,
            params=model.num_params(),
            sizes=model.config.sizes(),
            loss_before=loss_before,
            loss_after=loss_after,
            seconds=seconds,
            flops=float(getattr(pl_module, "flops", 0.0)),
        )
        self.events.append(event)
        self._log(trainer, event)
        self._check_delta(event, stage)
        return model

    def _log(self, trainer: L.Trainer, event: GrowthEvent) -> None:
        metrics: dict[str, float | None] = {
            "growth/stage": float(event.stage),
            "growth/loss_before": event.loss_before,
            "growth/loss_after": event.loss_after,
            "growth/loss_delta": event.loss_delta,
            "growth/params": float(event.params or 0),
            "growth/seconds": event.seconds,
        }
        if event.flops:
            metrics["compute/flops"] = event.flops
        logged = {k: v for k, v in metrics.items() if v is not None}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)

    def _check_delta(self, event: GrowthEvent, stage: GrowthStage) -> None:
        assert event.loss_delta is not None, "in-loop events measure both losses"
        if abs(event.loss_delta) <= self.loss_tolerance or self.on_loss_jump == "ignore":
            return
        if stage.perturbs:
            rank_zero_info(
                f"growth stage {event.stage} at step {event.step} changed the probe loss by "
                f"{event.loss_delta:+.3e} as expected: its shrink_perturb/new_noise change "
                "the function on purpose"
            )
            return
        message = (
            f"growth stage {event.stage} at step {event.step} changed the probe loss by "
            f"{event.loss_delta:+.3e} ({event.loss_before:.6f} -> "
            f"{event.loss_after:.6f}), above loss_tolerance={self.loss_tolerance:g}"
        )
        if self.on_loss_jump == "raise":
            raise RuntimeError(message)
        warnings.warn(message, stacklevel=2)

    # -- learning-rate levers (progrow.training.growth_lr) ---------------------------------

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.lr.before_step(optimizer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.lr.end_batch()


__all__ = ["GrowthCallback", "stage_seed"]
