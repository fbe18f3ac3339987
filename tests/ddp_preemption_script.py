"""Run by tests/test_preemption.py as one of two ranks started from outside (as srun or
torchrun would; Lightning sees ``LOCAL_RANK`` and does not launch processes itself).

In one process group, three fits under DDP: an uninterrupted reference; a run in which only
rank 1 receives SIGUSR1 in the step of the first growth (step 4), so the ranks must agree
to stop; and its resume from the checkpoint written at the signal. Then the same three
under FSDP2, whose checkpoints are folders of shards (the interrupted run replaces the
ModelCheckpoint's ``last.ckpt`` folder). Each rank saves what it saw to ``OUT/rank{r}.pt``.
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).parent))
from lit_utils import SendSignal, datamodule, growth, lm_module, params, trainer

from progrow.training import FitInterrupted, PreemptionCallback
from progrow.training.fsdp import GrowableModelParallelStrategy

MAX_STEPS = 10
SIGNAL_STEP = 4  # the first growth stage (lit_utils.TWO_STAGES)


def fit(out: Path, callbacks: list[L.Callback], ckpt_path: str | None = None) -> L.LightningModule:
    module = lm_module(MAX_STEPS, seed=0 if ckpt_path is None else 123)
    strategy = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60))
    trainer(MAX_STEPS, callbacks, devices=2, strategy=strategy).fit(
        module, datamodule=datamodule(out / "cache"), ckpt_path=ckpt_path
    )
    return module


def fsdp_fit(
    out: Path, name: str, callbacks: list[L.Callback], ckpt_path: str | None = None
) -> dict[str, torch.Tensor]:
    """A fit under FSDP2 with sharded checkpoints every 2 steps (and last.ckpt) in
    ``out/name``; returns the full (gathered) parameters."""
    strategy = GrowableModelParallelStrategy(
        data_parallel_size=2,
        tensor_parallel_size=1,
        save_distributed_checkpoint=True,
        timeout=timedelta(seconds=60),
    )
    checkpoint = ModelCheckpoint(
        dirpath=out / name, every_n_train_steps=2, save_top_k=-1, save_last=True
    )
    module = lm_module(MAX_STEPS, seed=0 if ckpt_path is None else 123)
    trainer(
        MAX_STEPS,
        [*callbacks, checkpoint],
        devices=2,
        strategy=strategy,
        enable_checkpointing=True,
    ).fit(module, datamodule=datamodule(out / "cache"), ckpt_path=ckpt_path)
    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
        for k, v in module.state_dict().items()
    }


def fsdp_runs(out: Path) -> dict[str, Any]:
    reference = fsdp_fit(out, "fsdp_reference", [growth()])
    stopped: dict[str, Any] = {}
    try:
        sender = SendSignal(SIGNAL_STEP, signal.SIGUSR1, rank=1)
        fsdp_fit(out, "fsdp", [sender, growth(), PreemptionCallback(requeue=False)])
    except FitInterrupted as err:
        stopped = {"signum": err.signum, "step": err.step, "ckpt_path": err.ckpt_path}
    last = out / "fsdp" / "last.ckpt"
    resumed = fsdp_fit(out, "fsdp_resumed", [growth(), PreemptionCallback()], ckpt_path=str(last))
    return {"reference": reference, "stopped": stopped, "resumed": resumed}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    reference = params(fit(out, [growth()]))
    ckpt = out / "ckpt" / "last.ckpt"
    stopped: dict[str, Any] = {}
    try:
        fit(
            out,
            [
                SendSignal(SIGNAL_STEP, signal.SIGUSR1, rank=1),
                growth(),
                PreemptionCallback(ckpt, requeue=False),
            ],
        )
    except FitInterrupted as err:
        stopped = {"signum": err.signum, "step": err.step, "ckpt_path": err.ckpt_path}
    resumed = params(fit(out, [growth(), PreemptionCallback()], ckpt_path=str(ckpt)))
    fsdp = fsdp_runs(out)
    torch.save(
        {"reference": reference, "stopped": stopped, "resumed": resumed, "fsdp": fsdp},
        out / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
