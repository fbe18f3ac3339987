"""progrow's checkpoint format version: every reader refuses another version, naming it.

A 0.x package has no upgrade path for checkpoints: an older (or newer) checkpoint is
refused with one clear message wherever it enters (the app's resume, Lightning's
``load_from_checkpoint``/``fit(ckpt_path=...)``, offline growth and ``progrow-grow``),
before any work is done, and the file itself is left as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lit_utils import app_overrides, datamodule, lm_module, trainer
from omegaconf import DictConfig

from progrow import LMModule
from progrow.app import ConfigError
from progrow.app.grow import main as grow_main
from progrow.app.train import CONF_DIR, train
from progrow.checkpoint_files import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_KEY,
    check_format,
    load_checkpoint,
)
from progrow.offline import grow_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished app run of 10 steps (its folder; checkpoints in ``checkpoints/``)."""
    out = tmp_path_factory.mktemp("run")
    train(compose_run(out, out / "cache"))
    return out


def compose_run(out: Path, cache: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*app_overrides(cache, max_steps=10), *overrides])
    cfg.paths.output_dir = str(out)
    return cfg


def with_format(src: Path, dst: Path, version: Any) -> Path:
    """A copy of checkpoint ``src`` whose progrow entry has format ``version`` (``None``:
    no format key, as checkpoints were before they carried one)."""
    checkpoint = torch.load(src, weights_only=False)
    entry = checkpoint[CHECKPOINT_KEY]
    assert entry["format"] == CHECKPOINT_FORMAT  # what this progrow writes
    if version is None:
        del entry["format"]
    else:
        entry["format"] = version
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, dst)
    return dst


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("version", "shown"), [(None, "format none"), (0, "format 0"), (2, "format 2")]
)
def test_check_format_names_the_source_and_both_versions(version: Any, shown: str) -> None:
    entry: dict[str, Any] = {} if version is None else {"format": version}
    with pytest.raises(ValueError, match=rf"^x\.ckpt: progrow checkpoint {shown}.*reads format 1"):
        check_format({CHECKPOINT_KEY: entry}, "x.ckpt")
    check_format({CHECKPOINT_KEY: {"format": CHECKPOINT_FORMAT}}, "x.ckpt")
    check_format({"state_dict": {}}, "x.ckpt")  # not progrow's: left to its reader


@pytest.mark.parametrize("version", [None, 0])
def test_app_resume_refuses_another_format_before_any_work(
    run: Path, tmp_path: Path, version: Any
) -> None:
    """``ckpt_path=auto`` finds the run's last checkpoint; of another format, the launch
    stops with a ConfigError naming it, and writes nothing (the checkpoint unchanged, no
    new log version)."""
    out = tmp_path / "again"
    ckpt = with_format(
        run / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt", version
    )
    before = digest(ckpt)
    cfg = compose_run(out, run / "cache", "trainer.max_steps=12", "ckpt_path=auto")
    with pytest.raises(ConfigError, match=rf"ckpt_path={ckpt}: progrow checkpoint format"):
        train(cfg)
    assert digest(ckpt) == before
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]


def test_app_resume_of_a_checkpoint_without_run_identity_needs_allow_changes(
    run: Path, tmp_path: Path
) -> None:
    """A progrow checkpoint not written by the app (no run identity) cannot be checked
    against the launch: refused, unless resume_allow_changes=true."""
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    del checkpoint["progrow_run"]
    out = tmp_path / "own"
    (out / "checkpoints").mkdir(parents=True)
    torch.save(checkpoint, out / "checkpoints" / "last.ckpt")
    resume = ["trainer.max_steps=12", "ckpt_path=auto"]
    with pytest.raises(ConfigError, match="records no run of the app"):
        train(compose_run(out, run / "cache", *resume))
    summary = train(compose_run(out, run / "cache", *resume, "resume_allow_changes=true"))
    assert summary["global_step"] == 12


def test_lightning_load_refuses_another_format(run: Path, tmp_path: Path) -> None:
    """LMModule's on_load_checkpoint (load_from_checkpoint, fit/validate with ckpt_path)
    refuses before the state dict is read."""
    old = with_format(run / "checkpoints" / "last.ckpt", tmp_path / "old.ckpt", None)
    with pytest.raises(ValueError, match="progrow checkpoint format none"):
        LMModule.load_from_checkpoint(old, weights_only=False)
    fit: L.Trainer = trainer(max_steps=12, callbacks=[])
    with pytest.raises(ValueError, match="progrow checkpoint format none"):
        fit.fit(
            lm_module(12), datamodule=datamodule(run / "cache"), ckpt_path=old, weights_only=False
        )


def test_offline_growth_refuses_another_format(run: Path, tmp_path: Path) -> None:
    old = with_format(run / "checkpoints" / "last.ckpt", tmp_path / "old.ckpt", 0)
    with pytest.raises(ValueError, match=rf"checkpoint '{old}': progrow checkpoint format 0"):
        load_checkpoint(old)
    with pytest.raises(ValueError, match="progrow checkpoint format 0"):
        grow_checkpoint(torch.load(old, weights_only=False), {"d_mlp": 64})
    # The CLI: one line on stderr, exit 2, nothing written.
    out = tmp_path / "grown.ckpt"
    assert grow_main([str(old), "--d_mlp", "64", "-o", str(out)]) == 2
    assert not out.exists()


def test_a_sharded_checkpoint_of_another_format_is_refused_before_its_shards_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sharded (FSDP2) folder: the format is read from its meta.pt, and an old one is
    refused before the shards are consolidated (the expensive part)."""
    import torch.distributed.checkpoint as dcp
    import torch.distributed.checkpoint.format_utils as format_utils

    folder = tmp_path / "last.ckpt"
    dcp.save({"state_dict": {"w": torch.zeros(2)}}, checkpoint_id=str(folder), no_dist=True)
    torch.save({CHECKPOINT_KEY: {"model_config": {}}, "global_step": 3}, folder / "meta.pt")

    def never(*args: Any) -> None:
        raise AssertionError("the shards were consolidated before the format was checked")

    monkeypatch.setattr(format_utils, "dcp_to_torch_save", never)
    with pytest.raises(ValueError, match=rf"checkpoint '{folder}': progrow checkpoint format none"):
        load_checkpoint(folder)
