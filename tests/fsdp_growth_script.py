"""Run by tests/test_fsdp.py: growth under FSDP2 (ModelParallelStrategy, CPU, gloo, 2
processes), then exact resume from sharded and full checkpoints.

Several fits run in the same two processes (Lightning re-executes this script for rank 1
at the first fit; later fits reuse the process group). Each rank writes what it saw to
``OUT/rank{r}.pt``: the full parameters after each growth and at the end of every run, the
growth events, and how the grown parameters are sharded.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.distributed.tensor import DTensor

from progrow.training.fsdp import GrowableModelParallelStrategy

sys.path.insert(0, str(Path(__file__).parent))
from lit_utils import TWO_STAGES, datamodule, growth, lm_module

from progrow.offline import grow_checkpoint_file

MAX_STEPS = 12  # stages at steps 4 and 8 (lit_utils.TWO_STAGES)
#: The second stage grows by exact copies (init="split"): split values drawn under FSDP2.
STAGES = [TWO_STAGES[0], {**TWO_STAGES[1], "init": "split"}]
#: The growth-tax levers under FSDP2: the first stage perturbs the grown model, the
#: optimizer state of changed parameters restarts, each weight's LR follows its fan-in.
LEVER_PERTURB: dict[str, Any] = {"shrink_perturb": {"shrink": 0.8, "noise": 0.2}, "new_noise": 0.01}
LEVER_STAGES = [{**STAGES[0], **LEVER_PERTURB}, STAGES[1]]
LEVERS = dict(optimizer_state="reset_old", lr_fan_in_exponent=1.0, rewarmup_steps=2,
              rewarmup_from=0.5)  # fmt: skip


def full_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter gathered to a full tensor (a collective: all ranks call it)."""
    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
        for k, v in module.state_dict().items()
    }


def full_optimizer(module: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """The optimizer as a plain ``state_dict()`` of full tensors, with its parameter names
    (a collective: all ranks call it)."""
    names = {id(p): n for n, p in module.named_parameters()}
    order = [p for group in optimizer.param_groups for p in group["params"]]
    state = {
        i: {k: (v.full_tensor() if isinstance(v, DTensor) else v).clone() for k, v in
            optimizer.state[p].items()}
        for i, p in enumerate(order)
        if optimizer.state.get(p)
    }  # fmt: skip
    groups, start = [], 0
    for group in optimizer.param_groups:
        ids = list(range(start, start + len(group["params"])))
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        start += len(ids)
    names_per_group = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    return {"state_dict": {"state": state, "param_groups": groups}, "names": names_per_group}


class BeforeGrowth(L.Callback):
    """Gathers parameters and optimizer state right before the first growth (runs
    before GrowthCallback), for an unsharded reference of that growth."""

    def __init__(self) -> None:
        self.saved: dict[str, Any] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        if trainer.global_step == 4 and not self.saved:
            self.saved = {
                "params": full_params(pl_module),
                "optimizer": full_optimizer(pl_module, trainer.optimizers[0]),
            }


class AfterGrowth(L.Callback):
    """Gathers the full parameters right after each growth (runs after GrowthCallback)."""

    def __init__(self) -> None:
        self.params: dict[int, dict[str, torch.Tensor]] = {}
        self.optimizer: dict[str, Any] = {}
        self.local: dict[str, tuple[int, int]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        if trainer.global_step in (4, 8) and trainer.global_step not in self.params:
            self.params[trainer.global_step] = full_params(pl_module)
            if trainer.global_step == 4:
                self.optimizer = full_optimizer(pl_module, trainer.optimizers[0])
            self.local = {
                name: (p.to_local().numel(), p.numel())
                for name, p in pl_module.named_parameters()
                if isinstance(p, DTensor)
            }


def fit(
    out: Path, name: str, *, distributed: bool, ckpt_path: Path | None = None, levers: bool = False
) -> dict:
    strategy = GrowableModelParallelStrategy(
        data_parallel_size=2,
        tensor_parallel_size=1,
        save_distributed_checkpoint=distributed,
        timeout=timedelta(seconds=60),  # a rank that never joins fails fast
    )
    before, after = BeforeGrowth(), AfterGrowth()
    cb = growth(LEVER_STAGES, **LEVERS) if levers else growth(STAGES)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=out / name, every_n_train_steps=2, save_top_k=-1, filename="{step}"
    )
    trainer = L.Trainer(
        max_steps=MAX_STEPS,
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        callbacks=[before, cb, after, ckpt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    optim = {"fan_in_groups": True} if levers else None
    module = lm_module(MAX_STEPS, seed=0 if ckpt_path is None else 123, optim=optim)
    trainer.fit(
        module,
        datamodule=datamodule(out / "cache"),
        ckpt_path=None if ckpt_path is None else str(ckpt_path),
    )
    return {
        "final": full_params(module),
        "after_growth": after.params,
        "before_growth": before.saved,
        "optimizer_after_growth": after.optimizer,
        "local": after.local,
        "events": [e.to_dict() for e in cb.events],
        "config": module.model.config.to_dict(),
    }


def main(out: Path) -> None:
    """Runs: the uninterrupted one; resumes from its sharded checkpoints at steps 2, 6
    and 10; a run writing full checkpoints and a resume from its step 6; a resume from
    its step-4 checkpoint grown offline (single process, no Lightning); a run with the
    growth-tax levers."""
    torch.set_num_threads(1)
    runs = {"full_run": fit(out, "sharded", distributed=True)}
    for step in (2, 6, 10):  # before, between and after the two stages
        runs[f"sharded_{step}"] = fit(
            out, f"resume{step}", distributed=True, ckpt_path=out / "sharded" / f"step={step}.ckpt"
        )
    runs["full_format"] = fit(out, "fullfmt", distributed=False)
    runs["full_6"] = fit(
        out, "resume_full", distributed=False, ckpt_path=out / "fullfmt" / "step=6.ckpt"
    )
    # The first stage grown offline from the full checkpoint written just before it.
    rank = torch.distributed.get_rank()
    if rank == 0:
        stage0 = {k: v for k, v in TWO_STAGES[0].items() if k != "step"}
        grow_checkpoint_file(out / "fullfmt" / "step=4.ckpt", out / "offline4.ckpt", stage0)
    torch.distributed.barrier()
    runs["offline_4"] = fit(
        out, "resume_offline", distributed=True, ckpt_path=out / "offline4.ckpt"
    )
    runs["levers"] = fit(out, "levers", distributed=True, levers=True)
    torch.save(runs, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
