"""``LMModule``: causal language modelling around a growable :class:`progrow.Transformer`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from progrow.config import TransformerConfig
from progrow.flops import train_flops_per_token
from progrow.loss import lm_loss
from progrow.model import Transformer
from progrow.optim import OptimConfig, build_adamw, lr_multiplier
from progrow.training.architecture import (
    CHECKPOINT_KEY,
    load_architecture,
    save_architecture,
)
from progrow.training.compiled import compile_in_place, compile_options, graphs_compiled


class LMModule(L.LightningModule):
    """Trains ``self.model`` (a :class:`Transformer`) on ``(B, T + 1)`` token batches.

    Logs ``train/loss``, ``val/loss``, ``val/ppl``, ``throughput/tokens_per_s`` and the
    cumulative training compute ``compute/flops`` and ``compute/tokens`` (all ranks
    together), computed per step from the architecture of that step, so a growing run's
    cheap early steps count as cheap. Compute totals and the current architecture are
    saved in every checkpoint; restoring one rebuilds the grown shapes first
    (``on_load_checkpoint``: :func:`~progrow.training.architecture.load_architecture`), so
    resuming, ``LMModule.load_from_checkpoint`` and ``validate``/``test``/``predict`` with
    a ``ckpt_path`` work before and after any growth.

    Example:
        >>> module = LMModule({"vocab_size": 16, "d_model": 8, "n_layers": 1})
        >>> module.model.config.d_model
        8
    """

    def __init__(
        self,
        model: TransformerConfig | Mapping[str, Any],
        optim: OptimConfig | Mapping[str, Any] | None = None,
        compile: bool | Mapping[str, Any] | None = None,
    ) -> None:
        """``compile``: ``torch.compile`` the Transformer (``True``, or options such as
        ``{"backend": "inductor", "mode": "max-autotune"}``); after each growth it is
        compiled afresh, once (:mod:`progrow.training.compiled`)."""
        super().__init__()
        self.compile_options = compile_options(compile)
        #: Per compile (the start, then each growth): the step, the sizes, the graphs
        #: dynamo compiled for it and the wall time of that first step, compile included.
        self.compile_stats: list[dict[str, Any]] = []
        self._compiling: dict[str, Any] | None = None
        model_cfg = model if isinstance(model, TransformerConfig) else TransformerConfig(**model)
        optim_cfg = optim if isinstance(optim, OptimConfig) else OptimConfig(**(optim or {}))
        # Plain dicts, so checkpoints load without pickled classes.
        self.save_hyperparameters({"model": model_cfg.to_dict(), "optim": asdict(optim_cfg)})
        self.optim_config = optim_cfg
        self.model = Transformer(model_cfg)
        self.val_loss = MeanMetric()
        self.flops = 0.0
        self.tokens = 0
        self.train_seconds = 0.0
        self._step_started: float | None = None
        self._mark: float | None = None

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model(tokens)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = lm_loss(self.model, batch)
        tokens = self._global_tokens(batch)
        self.tokens += tokens
        self.flops += tokens * train_flops_per_token(self.model.config, batch.shape[1] - 1)
        self.log("train/loss", loss, prog_bar=True)
        self.log("compute/flops", self.flops)
        self.log("compute/tokens", float(self.tokens))
        self.log("size/params", float(self.model.config.num_params()))
        self.log("time/train_s", self.train_seconds)
        return loss

    # Training wall time (``time/train_s``) runs from batch end to batch end, so it includes
    # data loading, growth events and logging, and excludes validation (paused below): what
    # a user waits for, comparable between a growing run and a fixed-size one.
    def on_train_start(self) -> None:
        self._mark = time.perf_counter()

    def on_validation_start(self) -> None:
        self._tick()
        self._mark = None

    def on_validation_end(self) -> None:
        self._mark = time.perf_counter()

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._mark is not None:
            self.train_seconds += now - self._mark
        self._mark = now

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()
        if self.compile_options is not None:
            self._start_compile_stats()

    def _start_compile_stats(self) -> None:
        """At the first step of each size (after the growth callback's hook, which Lightning
        runs first): count the graphs and time the step that compiles it."""
        sizes = self.model.config.sizes()
        if self.compile_stats and self.compile_stats[-1]["sizes"] == sizes:
            return
        if self._compiling is not None and self._compiling["sizes"] == sizes:
            return
        compile_in_place(self.model, self.compile_options or {})
        self._compiling = {
            "step": int(self.trainer.global_step),
            "sizes": sizes,
            "graphs_before": graphs_compiled(),
            "started": time.perf_counter(),
        }

    def _end_compile_stats(self) -> None:
        entry, self._compiling = self._compiling, None
        if entry is None:
            return
        self.compile_stats.append({
            "step": entry["step"],
            "sizes": entry["sizes"],
            "graphs": graphs_compiled() - entry["graphs_before"],
            "first_step_s": time.perf_counter() - entry["started"],
        })  # fmt: skip
        self.log("compile/graphs", float(self.compile_stats[-1]["graphs"]))
        self.log("compile/first_step_s", self.compile_stats[-1]["first_step_s"])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._tick()
        self._end_compile_stats()
        if self._step_started is None:
            return
        elapsed = time.perf_counter() - self._step_started
        self.log("throughput/tokens_per_s", self._global_tokens(batch) / max(elapsed, 1e-9))

    def _global_tokens(self, batch: Tensor) -> int:
        """Input tokens of this micro-batch on all ranks together."""
        return batch[:, :-1].numel() * self.trainer.world_size

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.val_loss.update(lm_loss(self.model, batch), weight=batch[:, 1:].numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        # Epoch-level values under DDP/FSDP: the loss (the metric syncs itself) and the
        # FLOPs (counted from all ranks' tokens) are already the same on every rank, and
        # "max" keeps them bit-exact (a mean of equal floats need not be); the training
        # time is the slowest rank's, what the run waited for.
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, reduce_fx="max")
        self.log("val/ppl", torch.exp(loss.clamp(max=30.0)), sync_dist=True, reduce_fx="max")
        self.log("compute/flops", self.flops, sync_dist=True, reduce_fx="max")
        self.log("time/train_s", self.train_seconds, sync_dist=True, reduce_fx="max")

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``: shard the Transformer with FSDP2 (each block,
        then the whole model). Idempotent, as Lightning asks; the growth callback calls it
        again to shard a grown model."""
        mesh = self._device_mesh
        if mesh is not None:  # else single device or DDP: nothing to shard
            from progrow.training.fsdp import data_parallel_mesh, shard_transformer

            shard_transformer(self.model, data_parallel_mesh(mesh))
        if self.compile_options is not None:  # after sharding, as FSDP2 wants it
            compile_in_place(self.model, self.compile_options)

    def configure_optimizers(self) -> Any:
        optimizer = build_adamw(self, self.optim_config)
        cfg = self.optim_config
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, cfg)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_architecture(
            self,
            checkpoint,
            optimizers=self.trainer.optimizers if self._trainer is not None else None,
            flops=self.flops,
            tokens=self.tokens,
            train_seconds=self.train_seconds,
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Before the weights load and the optimizers exist: the checkpoint's (grown) size.
        load_architecture(self, checkpoint)
        entry = checkpoint.get(CHECKPOINT_KEY, {})
        self.flops = float(entry.get("flops", 0.0))
        self.tokens = int(entry.get("tokens", 0))
        self.train_seconds = float(entry.get("train_seconds", 0.0))
