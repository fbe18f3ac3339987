"""The app's step progress bar (``progrow.app.progress``): global step / max_steps, also
after a resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from lit_utils import app_overrides, datamodule, lm_module, trainer

from progrow.app.progress import StepProgressBar
from progrow.app.train import CONF_DIR, train


class _Watch(L.Callback):
    """After each training batch: the bar's ``completed/total`` and whether it already
    reads as finished (rich then freezes the elapsed time and shows 0:00:00 remaining)."""

    def __init__(self, bar: StepProgressBar) -> None:
        self.bar = bar
        self.seen: list[tuple[int, float | None, bool]] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        task = self.bar.train_progress_bar
        self.seen.append((int(task.completed), task.total, task.finished))


def _fit(
    max_steps: int, accumulate: int, root: Path, cache: Path, ckpt_path: Path | None = None
) -> _Watch:
    bar = StepProgressBar(leave=True)
    watch = _Watch(bar)  # after the bar: it sees the bar's update of the same batch
    fit = trainer(
        max_steps,
        [bar, watch],
        root=root,
        enable_progress_bar=True,
        accumulate_grad_batches=accumulate,
    )
    fit.fit(lm_module(max_steps), datamodule=datamodule(cache), ckpt_path=ckpt_path)
    if ckpt_path is None:
        fit.save_checkpoint(root / "mid.ckpt")
    return watch


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_resumed_bar_counts_global_steps_to_max_steps(
    accumulate: int, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Resumed at step 4 of 8 (mid-epoch: the stream is one endless epoch), the bar goes
    4/8 -> 8/8 (optimizer steps, also with gradient accumulation), and is finished only at
    the last step. Lightning's own count read batches-of-the-epoch / steps-left (5/4 to
    8/4 here) and was finished from the first resumed step on (remaining 0:00:00)."""
    cache = tmp_path / "cache"
    fresh = _fit(4, accumulate, tmp_path, cache)
    assert [s[:2] for s in fresh.seen[accumulate - 1 :: accumulate]] == [
        (1, 4),
        (2, 4),
        (3, 4),
        (4, 4),
    ]
    resumed = _fit(8, accumulate, tmp_path, cache, ckpt_path=tmp_path / "mid.ckpt")
    steps = resumed.seen[accumulate - 1 :: accumulate]
    assert steps == [(5, 8, False), (6, 8, False), (7, 8, False), (8, 8, True)]
    bars = [line for line in capsys.readouterr().out.splitlines() if "train steps" in line]
    assert bars and "8/8" in bars[-1], bars


@pytest.mark.parametrize("bar", ["default", "null"])
def test_progress_bar_null_means_no_bar(
    bar: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``callbacks.progress_bar=null`` (the experiment configs' way to keep sweep output
    clean) leaves no bar at all: before, Lightning put its own back (``Epoch 0/-2``,
    ``v_num``). The default config shows the step bar (the check sees a bar at all)."""
    overrides = [
        o
        for o in app_overrides(tmp_path / "cache", max_steps=2, val_every=2)
        if "progress" not in o
    ]
    if bar == "null":
        overrides.append("callbacks.progress_bar=null")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "growth=none"])
    cfg.paths.output_dir = str(tmp_path / "run")
    assert train(cfg)["global_step"] == 2
    captured = capsys.readouterr()
    console = captured.out + captured.err
    if bar == "default":
        assert "train steps" in console and "it/s" in console, console
    else:
        assert "train steps" not in console and "it/s" not in console, console
    assert "Epoch 0" not in console and "v_num" not in console, console
