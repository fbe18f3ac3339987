"""The callback at the Lightning boundary: batch shapes, launchers, optimizer order,
checkpoints without a prior fit, LR re-warmup."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lit_utils import TINY_MODEL, growth, trainer
from torch.utils.data import DataLoader, Dataset, TensorDataset

from progrow import Transformer, TransformerConfig
from progrow.training import lm_loss

STAGES = [{"step": 2, "d_mlp": 16, "d_model": 10}, {"step": 4, "n_layers": 2}]


def token_rows(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, TINY_MODEL["max_seq_len"] + 1),
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip


class DictRows(Dataset):
    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


class BatchModule(L.LightningModule):
    """A user's module whose batches are tuples (TensorDataset) or dicts (HF style)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Transformer(TransformerConfig(**TINY_MODEL))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        tokens = batch["input_ids"] if isinstance(batch, dict) else batch[0]
        return lm_loss(self.model, tokens)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


@pytest.mark.parametrize("shape", ["tuple", "dict"])
def test_default_probe_reads_tuple_and_dict_batches(shape: str) -> None:
    rows = token_rows()
    data = TensorDataset(rows) if shape == "tuple" else DictRows(rows)
    torch.manual_seed(0)
    module = BatchModule()
    cb = growth(STAGES)
    trainer(6, [cb]).fit(module, DataLoader(data, batch_size=4))
    assert [e["step"] for e in cb.events] == [2, 4]
    assert all(abs(e["loss_delta"]) <= 1e-5 for e in cb.events)
    assert all(3.0 < e["loss_before"] < 7.0 for e in cb.events)  # a real next-token loss


class FailIfStepped(L.Callback):
    def on_before_optimizer_step(self, *args: Any) -> None:
        raise AssertionError("an optimizer step ran although the probe batch is unusable")


@pytest.mark.parametrize(
    "batch",
    [
        {"tokens": torch.zeros(4, 17, dtype=torch.long)},  # no input_ids
        (torch.randn(4, 17),),  # floats: not token ids
    ],
    ids=["dict_without_input_ids", "float_tuple"],
)
def test_unusable_batch_without_loss_fn_fails_at_the_first_batch(batch: Any) -> None:
    class Module(BatchModule):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.model.tok_emb.weight.sum()

    rows: Any = [batch] * 8  # a list is a fine map-style dataset
    with pytest.raises(ValueError, match=r"probe batch is .*Pass loss_fn="):
        trainer(6, [growth(STAGES), FailIfStepped()]).fit(
            Module(), DataLoader(rows, batch_size=None)
        )


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_spawn_launchers_are_refused_at_setup(strategy: str) -> None:
    cpu_trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=10,
                            logger=False, enable_checkpointing=False)  # fmt: skip
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match=r"start_method=.*Use strategy='ddp'"):
        growth(STAGES).setup(cpu_trainer, BatchModule(), "fit")


def test_popen_ddp_passes_the_strategy_check() -> None:
    cpu_trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=10,
                            logger=False, enable_checkpointing=False)  # fmt: skip
    torch.manual_seed(0)
    growth(STAGES).setup(cpu_trainer, BatchModule(), "fit")
