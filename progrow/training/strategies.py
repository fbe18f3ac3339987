"""Growth under the trainer's strategy: which strategies can grow inside ``fit``, and the
one way the module changes under each.

Single device and DDP grow in place (the DDP wrapper is then rebuilt: it fixed its
parameter set when built); FSDP2 (:class:`GrowableModelParallelStrategy`) gathers, grows
and re-shards, which replaces the Transformer module. Either way, :func:`grow_in_fit`
returns the Transformer as the LightningModule holds it afterwards, the one handle every
caller reads the grown model from.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.strategies import (
    DDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    Strategy,
)

from progrow.expand.step import GrowthStep
from progrow.model import Transformer
from progrow.surgery import SurgeryOptions, grow_with_optimizers
from progrow.training.architecture import find_transformer, optimizer_param_names
from progrow.training.compiled import fresh_compile, is_compiled
from progrow.training.fsdp import GrowableModelParallelStrategy, grow_sharded
from progrow.training.lightning_internals import build_optimizers, ddp_start_method


def check_strategy(strategy: Strategy) -> None:
    """Refuse a strategy whose growth inside ``fit`` is not handled, saying what to use.

    Handled: single device, DDP (its wrapper is rebuilt), FSDP2 through
    :class:`GrowableModelParallelStrategy` (gathered, grown, re-sharded). FSDP1 and
    DeepSpeed wrap and flatten parameters in ways in-place growth cannot follow.
    """
    if type(strategy) is ModelParallelStrategy:
        raise RuntimeError(
            "GrowthCallback needs progrow.training.GrowableModelParallelStrategy instead of "
            "ModelParallelStrategy (same arguments): it rebuilds the grown architecture "
            "before a sharded checkpoint loads, which ModelParallelStrategy cannot."
        )
    if type(strategy) not in (SingleDeviceStrategy, DDPStrategy, GrowableModelParallelStrategy):
        raise RuntimeError(
            f"GrowthCallback does not support the {type(strategy).__name__} strategy "
            "(supported: single device, DDP, and FSDP2 through ModelParallelStrategy). "
            "Grow between jobs instead: stop, grow the checkpoint offline with progrow-grow "
            "(progrow.offline.grow_checkpoint_file), and resume from the grown checkpoint."
        )
    start_method = ddp_start_method(strategy)
    if start_method != "popen":
        # ddp_spawn/ddp_fork/ddp_notebook train in child processes and hand only rank 0's
        # weights back to the parent: its module, optimizer and this callback's events
        # never see the growth.
        raise RuntimeError(
            f"GrowthCallback does not support DDP with start_method={start_method!r} "
            "(strategy='ddp_spawn', 'ddp_fork' or 'ddp_notebook'): the grown model, its "
            "optimizer and the growth events stay in the worker processes. Use "
            "strategy='ddp', which runs the script once per process."
        )


def grow_in_fit(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    spec: GrowthStep,
    surgery: SurgeryOptions,
    generator: torch.Generator,
    model_attr: str = "model",
) -> Transformer:
    """Grow ``pl_module.<model_attr>`` by ``spec`` with the trainer's optimizers carried,
    under the trainer's strategy; returns the grown Transformer as the module now holds it
    (the same object after in-place growth, a new one after a sharded re-build)."""
    if isinstance(trainer.strategy, GrowableModelParallelStrategy):
        # configure_model: the module's own sharding policy, applied to the grown model
        grow_sharded(
            pl_module,
            trainer.optimizers,
            spec,
            pl_module.configure_model,
            surgery,
            generator=generator,
            model_attr=model_attr,
        )
    else:
        model = find_transformer(pl_module, model_attr)
        grow_with_optimizers(
            pl_module, model, trainer.optimizers, spec, surgery, generator=generator
        )
    model = find_transformer(pl_module, model_attr)  # one handle, either way
    if is_compiled(model):
        fresh_compile()  # the grown model compiles once, with static shapes
    if isinstance(trainer.strategy, DDPStrategy):
        # The old wrapper fixed its parameter set when built: without a new one the grown
        # parameters are never all-reduced (or the step fails).
        trainer.strategy.model = pl_module
        trainer.strategy.configure_ddp()
    return model


def fresh_layout(trainer: L.Trainer, pl_module: L.LightningModule) -> list[list[list[str]]]:
    """Per optimizer and group, the parameter names ``configure_optimizers`` gives on the
    grown module: what a resumed run builds and loads the saved state onto."""
    optimizers = build_optimizers(pl_module)
    if len(optimizers) != len(trainer.optimizers):
        raise ValueError(
            f"configure_optimizers built {len(optimizers)} optimizer(s) on the grown "
            f"module, the run has {len(trainer.optimizers)}"
        )
    return optimizer_param_names(pl_module, optimizers)
