"""Every Lightning internal progrow uses (progrow/training/lightning_internals.py), against
the installed Lightning: a release that moves or changes one fails here, by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lit_utils import datamodule, lm_module, trainer

from progrow.training import lightning_internals as li


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


class Probe(L.Callback):
    """Reads the internals from inside a fit with gradient accumulation 2."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.processed: list[int] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        self.started.append(li.micro_batches_started_this_epoch(trainer))
        self.processed.append(li.micro_batches_processed(trainer))


def test_the_loop_counters_count_micro_batches(cache: Path, tmp_path: Path) -> None:
    probe = Probe()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1
    )
    fit = trainer(3, [probe, checkpoint], accumulate_grad_batches=2, enable_checkpointing=True)
    module = lm_module(3)
    fit.fit(module, datamodule=datamodule(cache))
    assert probe.started == [1, 2, 3, 4, 5, 6]  # this micro-batch included
    assert probe.processed == [0, 1, 2, 3, 4, 5]  # the ones before it
    assert li.micro_batches_processed(fit) == 6
    assert li.last_saved_step(checkpoint) == 2  # saved at step 2, not at the last (3)
    assert li.last_saved_step(object()) == -1
    (optimizer,) = li.build_optimizers(module)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in module.parameters()
    }
    li.optimizers_to_device([optimizer], torch.device("cpu"))


def test_ddp_start_methods_are_told_apart() -> None:
    from lightning.pytorch.strategies import DDPStrategy

    assert li.ddp_start_method(DDPStrategy()) == "popen"
    assert li.ddp_start_method(DDPStrategy(start_method="spawn")) == "spawn"


class LogAtStep(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.logged: list[dict[str, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.layer(torch.ones(1, 2)).sum()
        self.log("train/x", float(batch_idx))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 1:  # as a signal's stop does: log this step's metrics now
            li.log_step_metrics(self.trainer)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 2)))


class Recording(L.pytorch.loggers.CSVLogger):
    def __init__(self, root: Path, record: list[tuple[int | None, dict[str, float]]]) -> None:
        super().__init__(root)
        self.record = record

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.record.append((step, dict(metrics)))
        super().log_metrics(metrics, step)


def test_step_metrics_can_be_logged_from_a_batch_end_hook(tmp_path: Path) -> None:
    record: list[tuple[int | None, dict[str, float]]] = []
    fit = trainer(2, [], logger=Recording(tmp_path, record), log_every_n_steps=1)
    fit.fit(LogAtStep())
    # Step 1's metrics twice: once by this call, from the hook, once by the loop after it.
    assert [(s, m["train/x"]) for s, m in record] == [(0, 0.0), (1, 1.0), (1, 1.0)]
