"""Exact resume across growth: stopped before, between and after the two growth stages,
a resumed run ends with bitwise the parameters of the uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lit_utils import assert_bitwise_equal, datamodule, growth, lm_module, params, trainer

from progrow import LMModule

MAX_STEPS = 12  # stages at steps 4 and 8 (lit_utils.TWO_STAGES)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module", params=[1, 2], ids=["accumulate1", "accumulate2"])
def uninterrupted(
    request: pytest.FixtureRequest, cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, Path, dict[str, torch.Tensor], LMModule]:
    """One full run, checkpointing every 2 optimizer steps (mid-epoch: the data stream is
    infinite, so the epoch never ends and a plain DataLoader would restart it)."""
    accumulate = request.param
    ckpt_dir = tmp_path_factory.mktemp(f"ckpt{accumulate}")
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1, filename="{step}"
    )
    module = lm_module(MAX_STEPS)
    trainer(
        MAX_STEPS, [growth(), ckpt], enable_checkpointing=True, accumulate_grad_batches=accumulate
    ).fit(module, datamodule=datamodule(cache))
    return accumulate, ckpt_dir, params(module), module


@pytest.mark.parametrize("resume_step", [2, 6, 10], ids=["before", "between", "after"])
def test_resume_is_bitwise_exact(
    uninterrupted: tuple[int, Path, dict[str, torch.Tensor], LMModule],
    cache: Path,
    resume_step: int,
) -> None:
    accumulate, ckpt_dir, expected, full = uninterrupted
    cb = growth()
    # Built at the STARTING size with a different init: everything must come from the ckpt.
    module = lm_module(MAX_STEPS, seed=123)
    trainer(MAX_STEPS, [cb], accumulate_grad_batches=accumulate).fit(
        module, datamodule=datamodule(cache), ckpt_path=str(ckpt_dir / f"step={resume_step}.ckpt")
    )
    assert module.model.config == full.model.config
    assert_bitwise_equal(params(module), expected)
    assert module.flops == full.flops and module.tokens == full.tokens
    assert [e.step for e in cb.events] == [4, 8]


def test_load_from_checkpoint_returns_grown_model(
    uninterrupted: tuple[int, Path, dict[str, torch.Tensor], LMModule],
) -> None:
    _, ckpt_dir, _, full = uninterrupted
    loaded = LMModule.load_from_checkpoint(ckpt_dir / f"step={MAX_STEPS}.ckpt")
    assert loaded.model.config == full.model.config
    assert loaded.model.config.n_layers == 3
    tokens = torch.randint(0, 256, (2, 16))
    full.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(tokens), full(tokens), rtol=0, atol=0)
    assert loaded.flops == full.flops > 0
