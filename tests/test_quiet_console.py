"""What the app prints besides its own lines: no warnings that say nothing about the run
(resumes, final and preemption checkpoints, DDP validation, W&B), and the one that does
(an uneven validation split) in progrow's words."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import checkout_env
from hydra import compose, initialize_config_dir
from lit_utils import app_overrides, datamodule, lm_module, trainer

from progrow.app.console import check_val_split
from progrow.app.train import CONF_DIR, train
from progrow.training.preemption import save_checkpoint_atomically

NOISE = (
    "exists and is not empty",  # ModelCheckpoint, resuming into its own folder
    "The dirpath has changed",  # ModelCheckpoint, resuming into a new folder
    "`weights_only` was not set",  # trainer.save_checkpoint without weights_only
    "sync_dist=True",  # epoch-level self.log under DDP/FSDP
    "DistributedSampler",  # trainer.validate under DDP/FSDP
    "anonymous setting has no effect",  # W&B, from Lightning's WandbLogger
)


def _noise(text: str) -> list[str]:
    return [n for n in NOISE if n in text]


def _run(out: Path, cache: Path, *overrides: str, max_steps: int = 12) -> dict[str, Any]:
    # checkpoints every 10 steps, 12 steps: the final state is saved by the app itself
    tiny = app_overrides(cache, max_steps=max_steps, val_every=4)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*tiny, "growth=none", *overrides])
    cfg.paths.output_dir = str(out)
    return train(cfg)


def test_resumes_and_final_checkpoints_print_no_lightning_noise(
    tmp_path: Path,
    recwarn: pytest.WarningsRecorder,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    """A run whose last step is not a checkpoint step (the app saves it), its resume into
    a new folder, and a longer resume of that one into its own folder (ckpt_path=auto)."""
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO)
    first = _run(tmp_path / "first", cache)
    assert first["last_ckpt"] is not None and first["global_step"] == 12
    step_10 = Path(first["ckpt_dir"]) / "step_10.ckpt"
    second = _run(tmp_path / "second", cache, f"ckpt_path={step_10}")
    assert second["resumed_from"] == str(step_10) and second["global_step"] == 12
    longer = ["ckpt_path=auto", "resume_allow_changes=true"]
    third = _run(tmp_path / "second", cache, *longer, max_steps=16)
    assert third["resumed_from"] is not None and third["global_step"] == 16
    captured = capsys.readouterr()
    warned = "\n".join(str(w.message) for w in recwarn)
    assert _noise(warned + caplog.text + captured.out + captured.err) == []


def test_preemption_checkpoint_logs_no_weights_only_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpoint written on Ctrl-C, SIGTERM or SIGUSR1."""
    caplog.set_level(logging.INFO)
    fit = trainer(2, [], root=tmp_path)
    fit.fit(lm_module(2), datamodule=datamodule(tmp_path / "cache"))
    save_checkpoint_atomically(fit, tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt").is_file()
    assert _noise(caplog.text) == []


def test_uneven_validation_split_is_named_in_one_line() -> None:
    assert check_val_split(8, 2) is None and check_val_split(8, None) is None
    assert check_val_split(3, 1) is None
    assert check_val_split(3, 2) == (
        "data.val_batches=3 does not split over 2 processes: validation repeats 1 "
        "batch(es), which count twice in val/loss; use a multiple of 2"
    )


@pytest.mark.slow  # the default suite checks the same in test_strategy_parity's DDP/FSDP runs
def test_ddp_run_prints_no_sync_dist_or_sampler_warnings(tmp_path: Path) -> None:
    """trainer=ddp_cpu: 10 steps, validations every 4, so the app validates once more at
    the end (trainer.validate); data.val_batches=2 splits evenly over the 2 processes."""
    run = tmp_path / "run"
    args = [*app_overrides(tmp_path / "cache", max_steps=10, val_every=4), "growth=none"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", **checkout_env()}
    result = subprocess.run(
        [sys.executable, "-m", "progrow.train", *args, "trainer=ddp_cpu", f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["global_step"] == 10
    assert _noise(result.stdout + result.stderr) == [], result.stdout + result.stderr


def test_wandb_offline_run_prints_no_anonymous_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """W&B's own warning about the ``anonymous`` argument Lightning always passes."""
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    from progrow.app.wandb_extras import define_compute_axis, finish

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    logger = WandbLogger(project="progrow-test", save_dir=str(tmp_path), offline=True)
    define_compute_axis([logger])
    finish([logger], failed=False)
    assert list(tmp_path.rglob("offline-run-*")), "no W&B run was started"
    captured = capfd.readouterr()
    assert _noise(captured.out + captured.err) == [], captured.err
