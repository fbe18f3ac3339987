"""The training application end to end: in-process runs through ``progrow.train.train``,
the CLI and a multirun as subprocesses, exact resume, W&B offline, and bad configurations
that fail before training without touching earlier runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from lit_utils import app_overrides
from omegaconf import DictConfig

from progrow.app import ConfigError
from progrow.app.train import CONF_DIR, train

REPO = CONF_DIR.parent
MAX_STEPS = 20  # all_six grows at steps 4, 8 and 12


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def tiny(cache: Path, max_steps: int = MAX_STEPS) -> list[str]:
    """Overrides for a run of a few seconds (shared by in-process and CLI runs)."""
    return [*app_overrides(cache, max_steps=max_steps), "trainer.log_every_n_steps=2"]


def compose_run(out: Path, cache: Path, *overrides: str, max_steps: int = MAX_STEPS) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*tiny(cache, max_steps), *overrides])
    cfg.paths.output_dir = str(out)
    return cfg


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "progrow.train", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def state(ckpt: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def full_run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted growing run (the default schedule, all six expansions)."""
    out = tmp_path_factory.mktemp("full")
    return train(compose_run(out, cache))


def test_train_grows_logs_and_checkpoints(full_run: dict[str, Any]) -> None:
    out = Path(full_run["output_dir"])
    assert full_run["growth"] == "all_six"
    assert [e["step"] for e in full_run["events"]] == [4, 8, 12]
    assert all(abs(e["loss_delta"]) < 1e-4 for e in full_run["events"])
    assert full_run["params"] > full_run["params_start"]
    assert full_run["global_step"] == MAX_STEPS
    assert full_run["val_loss"] is not None and 0 < full_run["val_loss"] < 10
    assert full_run["flops"] > 0 and full_run["tokens"] == MAX_STEPS * 4 * 16
    assert (out / "csv" / "version_0" / "metrics.csv").is_file()
    hparams = (out / "csv" / "version_0" / "hparams.yaml").read_text()
    assert "fingerprint" in hparams and "all_six" in hparams
    assert {p.name for p in (out / "checkpoints").iterdir()} == {
        "step_10.ckpt",
        "step_20.ckpt",
        "last.ckpt",
    }
    assert json.loads((out / "summary.json").read_text())["val_loss"] == full_run["val_loss"]


def test_resume_auto_is_bitwise_exact(
    full_run: dict[str, Any], cache: Path, tmp_path: Path
) -> None:
    """A job killed after its step-10 checkpoint and relaunched with ckpt_path=auto into the
    same folder ends exactly where the uninterrupted run did."""
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    shutil.copy(Path(full_run["ckpt_dir"]) / "step_10.ckpt", ckpts / "last.ckpt")
    resumed = train(compose_run(tmp_path, cache, "ckpt_path=auto", "model.d_model=40"))
    assert resumed["resumed_from"] == str(ckpts / "last.ckpt")
    assert resumed["last_ckpt"] == str(ckpts / "last-v1.ckpt")  # the copied file is kept
    assert resumed["val_loss"] == full_run["val_loss"]
    assert resumed["flops"] == full_run["flops"]
    assert [e["step"] for e in resumed["events"]] == [4, 8, 12]
    expected, got = state(full_run["last_ckpt"]), state(resumed["last_ckpt"])
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_resume_from_explicit_checkpoint_into_new_folder(
    full_run: dict[str, Any], cache: Path, tmp_path: Path
) -> None:
    ckpt = Path(full_run["ckpt_dir"]) / "step_10.ckpt"
    resumed = train(compose_run(tmp_path, cache, f"ckpt_path={ckpt}"))
    assert resumed["val_loss"] == full_run["val_loss"]


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["trainer.max_steps=0"], ConfigError, r"trainer\.max_steps=0"),
        (["trainer=gpu"], ConfigError, r"trainer\.accelerator='gpu'"),
        (["trainer.devices=64"], ConfigError, r"trainer\.devices=64"),
        (["trainer.num_nodes=0"], ConfigError, r"trainer\.num_nodes=0"),
        (["growth.stages=[{step:0.5,d_mlp:-3}]"], ConfigError, r"growth\.stages.*d_mlp.*-3"),
        (["model=small"], ConfigError, r"growth\.stages.*d_mlp=128 is below"),
        (["data=text"], ConfigError, r"data\.path=\?\?\?"),
        (["data=text", "data.path=/no/such/corpus"], FileNotFoundError, r"data\.path='/no/such"),
        (["ckpt_path=/no/such.ckpt"], ConfigError, r"ckpt_path='/no/such\.ckpt'"),
        (["optim.lr=-1"], ConfigError, r"optim\.lr must be > 0, got -1"),
        (["growth.on_loss_jump=explode"], ConfigError, r"on_loss_jump.*'explode'"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_config_fails_before_training_and_leaves_earlier_run_untouched(
    overrides: list[str],
    error: type[Exception],
    match: str,
    full_run: dict[str, Any],
    cache: Path,
    tmp_path: Path,
) -> None:
    if overrides == ["trainer=gpu"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    earlier = Path(full_run["output_dir"])
    before = tree_digest(earlier)
    with pytest.raises(error, match=match):
        train(compose_run(tmp_path / "new", cache, *overrides))
    assert not (tmp_path / "new" / "csv").exists()  # failed before any logger wrote
    assert not (tmp_path / "new" / "checkpoints").exists()
    assert tree_digest(earlier) == before


def test_fresh_start_into_a_folder_with_checkpoints_is_refused(
    full_run: dict[str, Any], cache: Path
) -> None:
    earlier = Path(full_run["output_dir"])
    before = tree_digest(earlier)
    with pytest.raises(ConfigError, match=r"already holds 3 checkpoint\(s\).*ckpt_path=auto"):
        train(compose_run(earlier, cache))
    older = Path(full_run["ckpt_dir"]) / "step_10.ckpt"
    with pytest.raises(ConfigError, match=r"holds later checkpoints"):
        train(compose_run(earlier, cache, f"ckpt_path={older}"))
    assert tree_digest(earlier) == before


def test_cli_run_and_failed_cli_run_get_their_own_folders(cache: Path, tmp_path: Path) -> None:
    """`python -m progrow.train` works; two launches get two folders; a bad one fails with
    the key in its message and leaves the good one alone."""
    env = {"PROGROW_LOG_DIR": str(tmp_path / "logs")}
    good = run_cli(*tiny(cache, max_steps=10), "growth=width_first", cwd=tmp_path, env=env)
    assert good.returncode == 0, good.stderr[-3000:]
    assert "final val/loss" in good.stdout and "growth events" in good.stdout
    runs = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    before = tree_digest(runs[0])
    bad = run_cli(*tiny(cache), "trainer.devices=64", cwd=tmp_path, env=env)
    assert bad.returncode != 0
    assert "trainer.devices=64" in bad.stderr
    runs_after = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs_after) == 2 and runs[0] in runs_after
    assert tree_digest(runs[0]) == before


def test_multirun_basic_launcher(cache: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        *tiny(cache, max_steps=10),
        "growth=none,width_first",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [s["growth"] for s in summaries] == ["none", "width_first"]
    assert len(summaries[1]["events"]) == 2 and not summaries[0]["events"]


@pytest.mark.slow
def test_multirun_submitit_local_launcher(cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "hydra/launcher=local",
        *tiny(cache, max_steps=10),
        "growth=late",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["growth"] == "late" and len(summary["events"]) == 1
    assert list((sweep / ".submitit").iterdir())


@pytest.mark.slow
def test_ddp_cpu_two_processes(cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli(
        *tiny(cache, max_steps=10), "trainer=ddp_cpu", f"hydra.run.dir={run}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["events"]) == 3 and summary["tokens"] == 10 * 2 * 4 * 16


def test_wandb_offline_run_writes_files(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = train(compose_run(tmp_path, cache, "logger=wandb", max_steps=10))
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs, "no offline W&B run folder"
    assert list(runs[0].glob("*.wandb"))
    assert (tmp_path / "wandb-run-id").is_file()
    assert (Path(result["log_dirs"][0]) / "metrics.csv").is_file()  # CSV alongside W&B


@pytest.mark.parametrize("growth", ["none", "all_six"])
def test_compute_budget_gives_equal_flops(cache: Path, tmp_path: Path, growth: str) -> None:
    # budget.steps=12 of model=small: the baseline takes 12 steps, a run growing from
    # model=tiny more (cheaper early steps), and both spend the same FLOPs.
    model = "small" if growth == "none" else "tiny"
    cfg = compose_run(
        tmp_path / growth, cache, f"model={model}", f"growth={growth}", "budget.steps=12",
        "budget.model={d_model: 64, d_mlp: 256, n_heads: 4, d_qk: 16, d_v: 16, n_layers: 2}",
    )  # fmt: skip
    summary = train(cfg)
    if growth == "none":
        assert summary["global_step"] == 12
    else:
        assert summary["global_step"] > 12 and len(summary["events"]) == 3
    assert summary["flops"] == pytest.approx(summary["budget_flops"], rel=0.05)


def test_compute_budget_needs_fractional_stages(cache: Path, tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, cache, "budget.steps=12", "growth.stages=[{step: 5, d_mlp: 128}]")
    with pytest.raises(ConfigError, match=r"budget.steps=12: growth stage 0: step=5 must be"):
        train(cfg)


def test_compute_budget_needs_a_device_count(cache: Path, tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, cache, "budget.steps=12", "trainer.devices=auto")
    with pytest.raises(ConfigError, match=r"budget.steps=12 with trainer.devices='auto'"):
        train(cfg)
