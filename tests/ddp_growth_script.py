"""Run by tests/test_ddp.py: 2-process CPU DDP (gloo) with two growth stages.

Each rank saves its final parameters and growth events to ``OUT/rank{r}.pt``. Lightning
re-executes this script for rank 1, so it takes its arguments from the command line.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

sys.path.insert(0, str(Path(__file__).parent))
from lit_utils import TINY_MODEL, Rows, datamodule, growth, lm_module
from lit_utils import trainer as cpu_trainer
from torch.utils.data import DataLoader

from progrow.training import lm_loss
from progrow.training.architecture import find_transformer


def rank_dependent_loss(pl_module: L.LightningModule, batch: torch.Tensor) -> torch.Tensor:
    """The probe loss, plus 1 on rank 1 once grown: a jump only one rank sees."""
    model = find_transformer(pl_module)
    jump = pl_module.global_rank == 1 and model.config.d_mlp > TINY_MODEL["d_mlp"]
    return lm_loss(model, batch) + (1.0 if jump else 0.0)


class CountTokens(L.Callback):
    """The input tokens this rank actually trains on (to check the logged global count)."""

    def __init__(self) -> None:
        self.tokens = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        self.tokens += batch[:, :-1].numel()


def main(out: Path, find_unused: bool) -> None:
    torch.set_num_threads(1)
    module = lm_module(10)
    # The find_unused run also trains from a plain DataLoader (no probe_batch(); the
    # distributed sampler gives each rank other batches) with a probe loss that jumps on
    # rank 1 only: every rank must probe rank 0's batch and decide on rank 0's numbers.
    seen = CountTokens()
    cb = growth(loss_fn=rank_dependent_loss) if find_unused else growth()
    rows = torch.randint(0, 256, (64, 17), generator=torch.Generator().manual_seed(0))
    plain_loader = DataLoader(Rows(rows), batch_size=4)
    strategy = DDPStrategy(
        process_group_backend="gloo",
        timeout=timedelta(seconds=60),  # a rank that never joins fails fast instead of hanging
        find_unused_parameters=find_unused,
    )
    trainer = cpu_trainer(10, [cb, seen], devices=2, strategy=strategy)
    if find_unused:
        trainer.fit(module, train_dataloaders=plain_loader)
    else:
        trainer.fit(module, datamodule=datamodule(out / "cache"))
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    torch.save(
        {
            "params": state,
            "events": [e.to_dict() for e in cb.events],
            "config": module.model.config.to_dict(),
            "tokens": module.tokens,
            "flops": module.flops,
            "tokens_seen": seen.tokens,
            "probe": cb._probe,
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), find_unused=sys.argv[2] == "1")
