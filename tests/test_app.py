"""The training application end to end: in-process runs through ``progrow.train.train``,
the CLI and a multirun as subprocesses, exact resume, W&B offline, and bad configurations
that fail before training without touching earlier runs."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import REPO, checkout_env
from hydra import compose, initialize_config_dir
from lit_utils import app_overrides
from omegaconf import DictConfig

from progrow.app import ConfigError, RunSettings
from progrow.app.report import main as report_main
from progrow.app.report_compare import summarize
from progrow.app.runs import read_metrics
from progrow.app.settings import model_config
from progrow.app.train import CONF_DIR, train
from progrow.config import TransformerConfig
from progrow.flops import train_flops_per_token

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
    """``python -m progrow.train ARGS`` in ``cwd``, importing this checkout's progrow."""
    full_env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "HYDRA_FULL_ERROR": "1",
        **checkout_env(),
        **(env or {}),
    }
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
    resumed = train(compose_run(tmp_path, cache, "ckpt_path=auto"))
    assert resumed["resumed_from"] == str(ckpts / "last.ckpt")
    assert resumed["last_ckpt"] == str(ckpts / "last-v1.ckpt")  # the copied file is kept
    assert resumed["val_loss"] == full_run["val_loss"]
    assert resumed["flops"] == full_run["flops"]
    assert [e["step"] for e in resumed["events"]] == [4, 8, 12]
    expected, got = state(full_run["last_ckpt"]), state(resumed["last_ckpt"])
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_resume_with_a_changed_config_is_refused_naming_each_change(
    full_run: dict[str, Any], cache: Path, tmp_path: Path
) -> None:
    """Resuming under another data subset, schedule, model, length or seed would silently
    continue another experiment; it is refused before training, naming every change."""
    ckpt = Path(full_run["ckpt_dir"]) / "step_10.ckpt"
    changed = ["data.max_bytes=150000", "growth=width_first", "model.n_heads=1", "seed=1"]
    cfg = compose_run(tmp_path, cache, f"ckpt_path={ckpt}", *changed, max_steps=24)
    with pytest.raises(ConfigError) as info:
        train(cfg)
    message = str(info.value)
    assert "resume_allow_changes=true" in message
    for change in (
        r"data fingerprint \w+ -> \w+",
        r"growth schedule all_six \[4: .*\] -> width_first \[",
        r"model n_heads 2 -> 1",
        r"max_steps 20 -> 24",
        r"seed 0 -> 1",
    ):
        assert re.search(change, message), (change, message)
    assert not (tmp_path / "csv").exists() and not (tmp_path / "checkpoints").exists()


def test_resume_with_a_changed_config_when_asked(
    full_run: dict[str, Any], cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = Path(full_run["ckpt_dir"]) / "step_10.ckpt"
    cfg = compose_run(tmp_path, cache, f"ckpt_path={ckpt}", "seed=1", "resume_allow_changes=true")
    resumed = train(cfg)
    assert resumed["global_step"] == MAX_STEPS and resumed["seed"] == 1
    assert "changed config (resume_allow_changes=true): seed 0 -> 1" in caplog.text
    # its checkpoints now carry the new identity: resuming them with seed=1 is accepted
    again = compose_run(tmp_path / "again", cache, f"ckpt_path={resumed['last_ckpt']}", "seed=1")
    assert train(again)["global_step"] == MAX_STEPS


def test_cli_resume_refuses_changed_training_settings_before_any_work(
    full_run: dict[str, Any], cache: Path, tmp_path: Path
) -> None:
    """Another batch size, learning rate or accumulation would silently continue another
    training than the checkpoint's: `progrow-train` refuses it in one line naming each key
    with both values (exit 2), leaves no run folder and the earlier run untouched."""
    earlier = Path(full_run["output_dir"])
    before = tree_digest(earlier)
    ckpt = Path(full_run["ckpt_dir"]) / "step_10.ckpt"
    changed = ["data.batch_size=8", "optim.lr=0.001", "trainer.accumulate_grad_batches=2"]
    new_run = tmp_path / "new"
    result = run_cli(
        *tiny(cache),
        f"ckpt_path={ckpt}",
        *changed,
        f"hydra.run.dir={new_run}",
        cwd=tmp_path,
        env={"HYDRA_FULL_ERROR": ""},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"progrow-train: error: ckpt_path={ckpt}: "), line
    for change in (
        "data.batch_size 4 -> 8",
        "optim.lr 0.003 -> 0.001",
        "trainer.accumulate_grad_batches 1 -> 2",
        "resume_allow_changes=true",
    ):
        assert change in line, (change, line)
    assert not new_run.exists()
    assert tree_digest(earlier) == before


@pytest.mark.parametrize(
    ("override", "change"),
    [
        ("optim.betas=[0.9,0.99]", "optim.betas [0.9, 0.95] -> [0.9, 0.99]"),
        ("optim.weight_decay=0.0", "optim.weight_decay 0.1 -> 0.0"),
        ("optim.schedule=wsd", "optim.schedule cosine -> wsd"),
        ("optim.warmup_steps=5", "optim.warmup_steps 3 -> 5"),
        ("trainer.precision=bf16-mixed", "trainer.precision 32-true -> bf16-mixed"),
        ("trainer.gradient_clip_val=null", "trainer.gradient_clip_val 1.0 -> null"),
        ("+trainer.gradient_clip_algorithm=value", "gradient_clip_algorithm null -> value"),
        ("growth.rewarmup_steps=2", "growth.rewarmup_steps 0 -> 2"),
        ("trainer=ddp_cpu", "processes 1 -> 2"),
    ],
    ids=lambda v: v.split("=")[0] if "=" in v else None,
)
def test_every_setting_of_a_step_is_part_of_the_run_identity(
    override: str, change: str, cache: Path, tmp_path: Path
) -> None:
    """Each key of the registry is recorded as the run trains with it (the config's value,
    or the default of what reads it) and a change of it is named with both values."""
    from progrow.app.resume import check_resume, run_identity

    model = TransformerConfig(vocab_size=256, max_seq_len=16)

    def identity(*overrides: str) -> dict[str, Any]:
        settings = RunSettings.from_config(compose_run(tmp_path, cache, *overrides))
        return run_identity(settings, model, "data")

    ckpt = tmp_path / "saved.ckpt"
    torch.save({"progrow_run": identity()}, ckpt)
    with pytest.raises(ConfigError) as info:
        check_resume(str(ckpt), identity(override), allow_changes=False)
    assert change in str(info.value), str(info.value)
    allowed = check_resume(str(ckpt), identity(override), allow_changes=True)
    assert any(change in line for line in allowed), allowed


def test_resume_with_changed_training_settings_when_asked_logs_each(
    full_run: dict[str, Any], cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = Path(full_run["ckpt_dir"]) / "step_10.ckpt"
    changed = ["data.batch_size=8", "optim.lr=0.001", "trainer.accumulate_grad_batches=2"]
    allowed = compose_run(
        tmp_path, cache, f"ckpt_path={ckpt}", *changed, "resume_allow_changes=true"
    )
    assert train(allowed)["global_step"] == MAX_STEPS
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for change in (
        "data.batch_size 4 -> 8",
        "optim.lr 0.003 -> 0.001",
        "trainer.accumulate_grad_batches 1 -> 2",
    ):
        assert f"resuming with a changed config (resume_allow_changes=true): {change}" in warned


def test_resume_allowed_under_a_moved_schedule_reaches_the_growth_callback(
    full_run: dict[str, Any], cache: Path, tmp_path: Path
) -> None:
    """A longer run moves the fractional stages already grown (steps 4 and 8): allowed,
    the growth callback continues with a warning naming both schedules (not an error)."""
    ckpt = Path(full_run["ckpt_dir"]) / "step_10.ckpt"
    cfg = compose_run(
        tmp_path, cache, f"ckpt_path={ckpt}", "resume_allow_changes=true", max_steps=30
    )
    with pytest.warns(UserWarning, match=r"differs in a stage already grown: stage 0 \(step 6\)"):
        resumed = train(cfg)
    assert resumed["global_step"] == 30


def test_resume_from_explicit_checkpoint_into_new_folder(
    full_run: dict[str, Any], cache: Path, tmp_path: Path
) -> None:
    ckpt = Path(full_run["ckpt_dir"]) / "step_10.ckpt"
    resumed = train(compose_run(tmp_path, cache, f"ckpt_path={ckpt}"))
    assert resumed["val_loss"] == full_run["val_loss"]


def test_resume_keeps_the_runs_placement_or_refuses(cache: Path, tmp_path: Path) -> None:
    """A run placed on the gains resumes bitwise with its own placement (its d_model stage
    at step 12 is still ahead); the default readers is a change of schedule, refused
    unless allowed, and then ends elsewhere."""
    gains = train(compose_run(tmp_path / "gains", cache, "growth.hidden_factor_at=gains"))
    ckpt = Path(gains["ckpt_dir"]) / "step_10.ckpt"
    same = ["growth.hidden_factor_at=gains", f"ckpt_path={ckpt}"]
    resumed = train(compose_run(tmp_path / "resumed", cache, *same))
    assert resumed["val_loss"] == gains["val_loss"]
    expected, got = state(gains["last_ckpt"]), state(resumed["last_ckpt"])
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    refused = r"12: .*hidden_factor_at=gains\].*hidden_factor_at=readers"
    with pytest.raises(ConfigError, match=refused):
        train(compose_run(tmp_path / "refused", cache, f"ckpt_path={ckpt}"))
    allowed = compose_run(
        tmp_path / "readers", cache, f"ckpt_path={ckpt}", "resume_allow_changes=true"
    )
    assert train(allowed)["val_loss"] != gains["val_loss"]


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
        (["data=text", "data.path=/no/such/corpus"], ConfigError, r"data\.path='/no/such"),
        (["data.seq_len=0"], ConfigError, r"data: data\.seq_len must be a positive int, got 0"),
        (["ckpt_path=/no/such.ckpt"], ConfigError, r"ckpt_path='/no/such\.ckpt'"),
        (["optim.lr=-1"], ConfigError, r"optim\.lr must be > 0, got -1"),
        (["growth.on_loss_jump=explode"], ConfigError, r"on_loss_jump.*'explode'"),
        (["growth.lr_width_exponent=-1"], ConfigError, r"growth: lr_width_exponent.*got -1"),
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


def test_subprocesses_import_this_checkout(tmp_path: Path) -> None:
    env = {**os.environ, **checkout_env()}
    code = "import progrow; print(progrow.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert Path(out.stdout.strip()) == REPO / "progrow" / "__init__.py", out.stderr


def test_cli_run_console_log_and_failed_launches(cache: Path, tmp_path: Path) -> None:
    """`python -m progrow.train`: a clean console (each Lightning line once, no advert or
    deprecation warning, a step progress bar), a command-line schedule labelled as such,
    the summary in train.log; a bad value and a YAML typo each fail with one line on
    stderr, leave no run folder and leave the good run alone."""
    env = {"PROGROW_LOG_DIR": str(tmp_path / "logs"), "HYDRA_FULL_ERROR": ""}
    overrides = [o for o in tiny(cache, max_steps=10) if "progress_bar" not in o]
    schedule = "growth.stages=[{step: 4, d_mlp: 128}]"
    good = run_cli(*overrides, schedule, cwd=tmp_path, env=env)
    assert good.returncode == 0, good.stderr[-3000:]
    console = good.stdout + good.stderr
    assert "final val/loss" in good.stdout and "growth events" in good.stdout
    for line in ("Seed set to 0", "GPU available", "`Trainer.fit` stopped"):
        assert console.count(line) == 1, (line, console)
    for noise in ("litlogger", "LeafSpec", "Epoch 0/", "v_num", "srun"):
        assert noise not in console, (noise, console)
    assert "train steps" in console  # the progress bar counts steps
    runs = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    summary = json.loads((run / "summary.json").read_text())
    hparams = yaml.safe_load((run / "csv" / "version_0" / "hparams.yaml").read_text())
    assert summary["growth"] == hparams["growth"]["name"] == "custom"
    assert "growth=custom" in good.stdout and summarize([run])[0].growth == "custom"
    log = (run / "train.log").read_text()
    assert "Seed set to 0" in log and "final val/loss" in log and "growth events" in log
    before = tree_digest(run)

    bad = run_cli(*tiny(cache), "trainer.devices=64", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"progrow-train: error: trainer.devices=64: this machine has {os.cpu_count()} CPU "
        "core(s) (one process per device)"
    ]
    extra = tmp_path / "extra" / "growth"
    extra.mkdir(parents=True)
    (extra / "typo.yaml").write_text("name: typo\nstages:\n  - {step: 0.5, d_mlp: 128\n")
    typo = run_cli("--config-dir", str(tmp_path / "extra"), "growth=typo", cwd=tmp_path, env=env)
    assert typo.returncode == 2
    lines = typo.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(
        r"progrow-train: error: YAML syntax error in .*typo", lines[0]
    )
    assert sorted((tmp_path / "logs" / "train" / "runs").iterdir()) == runs  # no empty folder
    assert tree_digest(run) == before


def test_multirun_basic_launcher(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
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
    # each job's hint names the sweep folder, whose report compares all jobs
    assert re.findall(r"report: progrow-report (\S+)", result.stdout) == [str(sweep)] * 2
    # growth=none here is the starting (tiny) size: no baseline for the growing run
    fixed, grown = summarize([sweep])
    assert fixed.is_baseline and grown.baseline is None and grown.saving_pct is None
    assert report_main([str(sweep), "--no-plot", "--markdown"]) == 0
    assert "1: no baseline: no fixed-size run (growth=none) of its final size" in (
        capsys.readouterr().out
    )


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


@pytest.mark.slow
def test_fsdp_cpu_two_processes_grow_and_resume(cache: Path, tmp_path: Path) -> None:
    """trainer=fsdp_cpu: growth under FSDP2 through the app, then ckpt_path=auto resumes
    from the sharded (folder) checkpoint of the grown model, in the same run folder."""
    run = tmp_path / "run"
    args = [*tiny(cache, max_steps=10), "trainer=fsdp_cpu", f"hydra.run.dir={run}"]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["events"]) == 3 and summary["tokens"] == 10 * 2 * 4 * 16
    assert (run / "checkpoints" / "last.ckpt" / "meta.pt").is_file()  # sharded: a folder
    longer = ["trainer.max_steps=12", "resume_allow_changes=true", "ckpt_path=auto"]
    again = run_cli(*args, *longer, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["global_step"] == 12 and resumed["sizes"] == summary["sizes"]


def test_wandb_offline_run_writes_files(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline_wandb(tmp_path, monkeypatch)
    result = train(compose_run(tmp_path, cache, "logger=wandb", max_steps=10))
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs, "no offline W&B run folder"
    assert list(runs[0].glob("*.wandb"))
    assert (tmp_path / "wandb-run-id").is_file()
    assert (Path(result["log_dirs"][0]) / "metrics.csv").is_file()  # CSV alongside W&B
    # Each folder is labelled with its logger (the console's "logs" row reads these).
    assert [entry["logger"] for entry in result["loggers"]] == ["csv", "wandb"]
    assert [entry["dir"] for entry in result["loggers"]] == result["log_dirs"]


def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_tensorboard_logger_writes_events_next_to_the_csv(cache: Path, tmp_path: Path) -> None:
    """logger=tensorboard: a growing run writes TensorBoard event files (the growth
    metrics among them) beside the CSV log the report reads, each folder labelled."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(compose_run(tmp_path, cache, "logger=tensorboard", max_steps=10))
    assert [entry["logger"] for entry in result["loggers"]] == ["csv", "tensorboard"]
    events = list(Path(result["loggers"][1]["dir"]).glob("events.out.tfevents.*"))
    assert events, result["loggers"]
    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert {"train/loss", "val/loss", "growth/loss_delta", "compute/flops"} <= set(tags), tags
    assert len(result["events"]) == 3  # all_six grows at 20%, 40% and 60% of the run


def test_wandb_without_an_account_is_one_config_error(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logger=wandb with no API key and no WANDB_MODE (a new user's first try): one
    ConfigError naming logger=wandb and the ways to run without an account, before
    training, not W&B's traceback."""
    wandb = pytest.importorskip("wandb")
    wandb.teardown()  # a fresh process's W&B: no settings kept from earlier tests' runs
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SILENT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no W&B settings
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    try:
        with pytest.raises(ConfigError, match=r"logger=wandb: W&B could not start its run: "
                           r"No API key.*WANDB_MODE=offline.*logger=csv"):  # fmt: skip
            train(compose_run(tmp_path / "run", cache, "logger=wandb"))
    finally:
        wandb.teardown()  # the next test's W&B starts from its own settings again
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_training_outlives_the_wandb_service(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """wandb-core dies mid-run (here at the validation of step 10): W&B's next log call
    raises, and the run must go on to its end, the CSV log complete, with one warning
    that says from which step W&B recorded nothing, and the summary saying so too."""
    offline_wandb(tmp_path, monkeypatch)
    kill = ["+callbacks.kill_wandb._target_=lit_utils.KillWandbCore",
            "+callbacks.kill_wandb.step=10"]  # fmt: skip
    summary = train(compose_run(tmp_path, cache, "logger=wandb", *kill))
    assert summary["global_step"] == MAX_STEPS
    steps = [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r]
    assert steps == list(range(1, MAX_STEPS, 2)), steps  # log_every_n_steps=2: none lost
    lost = [r.getMessage() for r in caplog.records if "W&B records nothing more" in r.getMessage()]
    assert len(lost) == 1 and "at step 10" in lost[0] and "Connection" in lost[0], lost
    wandb_entry = summary["loggers"][1]
    assert wandb_entry["logger"] == "wandb" and wandb_entry["lost_at_step"] == 10


def test_sigterm_during_validation_with_wandb_gone_saves_and_stops(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``scancel`` reaches wandb-core and the trainer at once; here while the trainer
    validates (after the step's stop check, so W&B's validation log call meets the dead
    service): the stop still happens at the next step, with its checkpoint."""
    offline_wandb(tmp_path, monkeypatch)
    kill = ["+callbacks.kill_wandb._target_=lit_utils.KillWandbCore",
            "+callbacks.kill_wandb.step=10", "+callbacks.kill_wandb.signum=15"]  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        train(compose_run(tmp_path, cache, "logger=wandb", *kill))
    assert "stopped by SIGTERM at step 11" in str(stopped.value)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 11


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
    # The FLOPs counted during training are exactly those of the sizes trained at each
    # step (16 tokens x batch 4 per step) ...
    tokens_per_step, seq_len = 4 * 16, 16
    start = model_config(RunSettings.from_config(cfg), vocab_size=256, seq_len=seq_len)
    assert start.sizes() == summary["sizes_start"]
    sizes, steps = [start], [0]
    for event in summary["events"]:
        sizes.append(sizes[-1].replace(**event["sizes"]))
        steps.append(event["step"])
    steps.append(summary["global_step"])
    per_step = [train_flops_per_token(c, seq_len) * tokens_per_step for c in sizes]
    expected = sum(
        f * (b - a) for f, (a, b) in zip(per_step, itertools.pairwise(steps), strict=True)
    )
    assert summary["flops"] == pytest.approx(expected, rel=1e-9)
    # ... and the step count is the integer that comes closest to the budget: one step
    # more or fewer (at the final size) would be further from it.
    gap = abs(summary["flops"] - summary["budget_flops"])
    assert gap <= (per_step[-1] + sum(b - a for a, b in itertools.pairwise(per_step))) / 2
    if growth == "none":
        assert summary["flops"] == pytest.approx(summary["budget_flops"], rel=1e-12)


def test_compute_budget_needs_fractional_stages(cache: Path, tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, cache, "budget.steps=12", "growth.stages=[{step: 5, d_mlp: 128}]")
    with pytest.raises(ConfigError, match=r"budget.steps=12: growth stage 0: step=5 must be"):
        train(cfg)


def test_compute_budget_needs_a_device_count(cache: Path, tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, cache, "budget.steps=12", "trainer.devices=auto")
    with pytest.raises(ConfigError, match=r"budget.steps=12 with trainer.devices='auto'"):
        train(cfg)


def test_llama_experiment_grows_all_seven_to_its_target(cache: Path, tmp_path: Path) -> None:
    """experiment=llama: a Llama-style model (SwiGLU, RoPE, multi-query) grown through
    every dimension, n_kv_heads included, ends at model=llama_target's architecture."""
    result = train(compose_run(tmp_path, cache, "experiment=llama", max_steps=10))
    assert result["growth"] == "llama"
    assert [e["step"] for e in result["events"]] == [2, 4, 6]
    assert all(abs(e["loss_delta"]) < 1e-4 for e in result["events"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        target_cfg = compose("train", overrides=[*tiny(cache, 10), "model=llama_target"])
    target_cfg.paths.output_dir = str(tmp_path / "unused")
    target = model_config(RunSettings.from_config(target_cfg), 256, 16)
    assert result["sizes"] == target.sizes()
    assert result["sizes_start"]["n_kv_heads"] == 1 and result["sizes"]["n_kv_heads"] == 2
    assert result["params"] == target.num_params()


def test_ctrl_c_saves_says_where_and_auto_resumes_bitwise(
    full_run: dict[str, Any], cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C during step 7 (between the step-0 start and the step-10 checkpoint): the run
    saves last.ckpt at step 8 and prints where and how to continue; ckpt_path=auto first
    says it starts fresh, then resumes from that checkpoint and ends where the
    uninterrupted run did."""
    ctrl_c = ["+callbacks.ctrl_c._target_=lit_utils.SendSignal", "+callbacks.ctrl_c.step=7"]
    with pytest.raises(SystemExit) as stopped:
        train(compose_run(tmp_path, cache, "ckpt_path=auto", *ctrl_c, "+callbacks.ctrl_c.signum=2"))
    assert stopped.value.code == 130
    printed = capsys.readouterr().out
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"ckpt_path=auto: no checkpoint in {tmp_path / 'checkpoints'}; starting" in printed
    assert f"Stopped by SIGINT at step 8; checkpoint saved: {last}" in printed
    assert f"Continue with: python -m progrow.train hydra.run.dir={tmp_path} ckpt_path=auto" in (
        printed
    )
    assert torch.load(last, weights_only=False)["global_step"] == 8
    assert {p.name for p in last.parent.iterdir()} == {"last.ckpt"}

    resumed = train(compose_run(tmp_path, cache, "ckpt_path=auto"))
    assert f"ckpt_path=auto: resuming from {last}" in capsys.readouterr().out
    assert resumed["resumed_from"] == str(last)
    assert [e["step"] for e in resumed["events"]] == [4, 8, 12]
    assert resumed["val_loss"] == full_run["val_loss"]
    expected, got = state(full_run["last_ckpt"]), state(resumed["last_ckpt"])
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key

    # One CSV run continued: the two attempts' train/loss rows are the uninterrupted run's,
    # the stopping step's included.
    def train_losses(run: Path) -> list[tuple[float, float]]:
        return [(r["step"], r["train/loss"]) for r in read_metrics(run) if "train/loss" in r]

    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["version_0", "version_1"]
    assert train_losses(tmp_path) == train_losses(Path(full_run["output_dir"]))


def test_compile_runs_the_default_schedule_compiled(
    full_run: dict[str, Any], cache: Path, tmp_path: Path
) -> None:
    """``compile=...``: the default schedule, compiled (aot_eager: no code generation on
    CPU), ends where the eager run ends, and the summary lists one compile per size."""
    summary = train(compose_run(tmp_path, cache, "compile={backend: aot_eager}"))
    assert full_run["compile"] is None
    stats = summary["compile"]
    assert [s["step"] for s in stats] == [0, 4, 8, 12]
    assert [s["sizes"] for s in stats[1:]] == [e["sizes"] for e in summary["events"]]
    assert all(1 <= s["graphs"] <= 2 and s["first_step_s"] > 0 for s in stats), stats
    assert summary["val_loss"] == pytest.approx(full_run["val_loss"], abs=1e-4)


def test_compile_options_are_checked_by_the_app(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"compile=\{'bakend': 'inductor'\}"):
        RunSettings.from_config(compose_run(tmp_path, cache, "compile={bakend: inductor}"))


def test_wandb_run_is_finished_before_a_requeue_and_continued_after(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGUSR1 in a SLURM job with logger=wandb: the W&B run is finished (its history
    written to disk by wandb-core) before scontrol is asked to requeue, since SLURM's
    SIGTERM at the requeue ends wandb-core; the next attempt continues the same W&B run."""
    pytest.importorskip("wandb")
    from test_preemption import fake_scontrol, fake_slurm_job
    from wandb_records import record_types, trainer_steps

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    calls = fake_scontrol(tmp_path, monkeypatch, "RUNNING")
    # At the requeue, keep a copy of the W&B run file as it is on disk at that moment.
    snapshot = tmp_path / "at_requeue"
    script = tmp_path / "bin" / "scontrol"
    script.write_text(
        script.read_text().replace(
            "exit 0\n",
            f'[ "$1" = requeue ] && mkdir -p {snapshot} && '
            f"cp {tmp_path}/wandb/offline-run-*/run-*.wandb {snapshot}/\nexit 0\n",
        )
    )
    fake_slurm_job(monkeypatch)
    usr1 = ["+callbacks.usr1._target_=lit_utils.SendSignal", "+callbacks.usr1.step=7",
            "+callbacks.usr1.signum=10"]  # fmt: skip
    common = ["logger=wandb", "ckpt_path=auto", "trainer.log_every_n_steps=1"]
    with pytest.raises(SystemExit):
        train(compose_run(tmp_path, cache, *common, *usr1))
    assert calls.read_text().splitlines() == ["show job -o 4242", "requeue 4242"]
    assert (
        torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8
    )
    (first,) = list(tmp_path.rglob("offline-run-*"))
    # Every trained step was on disk when the requeue was asked for (logged as steps
    # 0-7, the last one included) and the run had ended (its exit record written).
    assert set(trainer_steps(snapshot)) == set(range(8))
    assert "exit" in record_types(snapshot)
    assert set(trainer_steps(first)) == set(range(8))
    result = train(compose_run(tmp_path, cache, *common))
    assert result["global_step"] == MAX_STEPS
    runs = sorted(tmp_path.rglob("offline-run-*"))
    run_id = (tmp_path / "wandb-run-id").read_text().strip()
    # The run id is in each attempt's run file (folder names get a "-1" suffix when two
    # attempts start in the same second).
    assert len(runs) == 2 and all(list(r.glob(f"run-{run_id}.wandb")) for r in runs)
    (second,) = [r for r in runs if r != first]
    assert set(trainer_steps(second)) == set(range(8, MAX_STEPS))  # one run, no gap
