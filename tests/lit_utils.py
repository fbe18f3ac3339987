"""Helpers for tests that run ``lightning.Trainer``: tiny data, modules and trainers."""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset

from progrow import GrowthCallback, LMModule
from progrow.events import GrowthEvent
from progrow.training import LMDataModule

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
os.environ.setdefault("WANDB_MODE", "disabled")

SEQ_LEN = 16

TINY_MODEL: dict[str, Any] = dict(
    vocab_size=256,
    max_seq_len=SEQ_LEN,
    d_model=8,
    d_mlp=12,
    n_heads=2,
    d_qk=3,
    d_v=3,
    n_layers=1,
    norm_eps=1e-3,
)

# Two stages touching all six dimensions, the second inserting layers between old ones.
TWO_STAGES: list[dict[str, Any]] = [
    {"step": 4, "d_mlp": 20, "d_model": 12, "n_heads": 3},
    {"step": 8, "n_layers": 3, "d_qk": 5, "d_v": 4, "layer_positions": "interleave"},
]


class Rows(Dataset):
    """``(T + 1)`` token rows: batches are plain ``(B, T + 1)`` tensors."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]


def datamodule(cache_dir: Path, *, batch_size: int = 4, seed: int = 0) -> LMDataModule:
    return LMDataModule(
        source="stdlib",
        seq_len=SEQ_LEN,
        batch_size=batch_size,
        val_batches=2,
        seed=seed,
        cache_dir=cache_dir,
        max_bytes=200_000,
    )


def lm_module(
    max_steps: int, seed: int = 0, optim: dict[str, Any] | None = None, **model: Any
) -> LMModule:
    """A tiny LMModule; ``optim`` overrides its OptimConfig fields (e.g. the schedule)."""
    torch.manual_seed(seed)
    return LMModule(
        {**TINY_MODEL, **model},
        {
            "lr": 1e-2,
            "warmup_steps": 3,
            "max_steps": max_steps,
            "weight_decay": 0.1,
            **(optim or {}),
        },
    )


def trainer(
    max_steps: int,
    callbacks: list[L.Callback],
    root: Path | None = None,
    **kwargs: Any,
) -> L.Trainer:
    options: dict[str, Any] = dict(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    if root is not None:
        options["default_root_dir"] = str(root)
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)


def growth(stages: list[dict[str, Any]] = TWO_STAGES, **kwargs: Any) -> GrowthCallback:
    kwargs.setdefault("loss_tolerance", 1e-5)
    kwargs.setdefault("on_loss_jump", "raise")
    return GrowthCallback(stages, seed=0, **kwargs)


class SendSignal(L.Callback):
    """Sends ``signum`` to this process at the start of optimizer step ``step`` (before a
    growth callback listed after it grows at that step); on ``rank`` only if given.

    Usable from an app config: ``+callbacks.signal._target_=lit_utils.SendSignal``.
    """

    def __init__(self, step: int, signum: int, rank: int | None = None) -> None:
        self.step, self.signum, self.rank, self.sent = step, signum, rank, False

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.sent or trainer.global_step != self.step:
            return
        if self.rank is None or self.rank == trainer.global_rank:
            self.sent = True
            os.kill(os.getpid(), self.signum)


def child_pids(name: str) -> list[int]:
    """The pids of this process's children whose command name contains ``name``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        comm, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        if name in comm and int(rest.split()[1]) == os.getpid():
            pids.append(int(stat.parent.name))
    return pids


class KillWandbCore(L.Callback):
    """Ends this process's ``wandb-core`` with SIGTERM (what SLURM's ``scancel`` does to
    it) at the start of validation at step ``step``, waits until it is gone, then sends
    ``signum`` to this process if given: the signal lands during validation, after the
    step's stop check (``+callbacks.kill_wandb._target_=lit_utils.KillWandbCore``)."""

    def __init__(self, step: int, signum: int | None = None) -> None:
        self.step, self.signum, self.killed = step, signum, False

    def on_validation_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.killed or trainer.global_step != self.step:
            return
        self.killed = True
        pids = child_pids("wandb-core")
        assert pids, "no wandb-core child process"
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        if self.signum is not None:
            os.kill(os.getpid(), self.signum)


class Throttle(L.Callback):
    """Sleeps after every training batch of a fresh start (not of a resumed fit), so that
    a signal sent from outside lands in the middle of the first attempt of a run of a few
    dozen steps and the resumed attempt finishes quickly
    (``+callbacks.throttle._target_=lit_utils.Throttle``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.ckpt_path is None:
            time.sleep(self.seconds)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), f"{key} differs: {(a[key] - b[key]).abs().max()}"


def app_overrides(cache: Path, *, max_steps: int | None = None, val_every: int = 10) -> list[str]:
    """Hydra overrides for an app run of a few seconds (tiny data, no progress bar)."""
    steps = [] if max_steps is None else [f"trainer.max_steps={max_steps}"]
    return [
        *steps,
        f"trainer.val_check_interval={val_every}",
        "data.seq_len=16",
        "data.batch_size=4",
        "data.val_batches=2",
        "data.max_bytes=200000",
        f"data.cache_dir={cache}",
        "callbacks.model_checkpoint.every_n_train_steps=10",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
        "optim.warmup_steps=3",
        "logger=csv",
    ]


def measured(event: GrowthEvent) -> GrowthEvent:
    """``event``, checked to carry both probe losses and the delta (in-loop events do)."""
    assert event.loss_before is not None and event.loss_after is not None, event
    assert event.loss_delta is not None and event.params is not None, event
    assert event.params_before is not None, event
    return event


def small_delta(event: GrowthEvent, tolerance: float = 1e-5) -> bool:
    """Whether the probe loss barely moved across ``event`` (it must have been measured)."""
    delta = measured(event).loss_delta
    assert delta is not None
    return abs(delta) <= tolerance
