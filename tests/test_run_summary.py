"""``summary.json`` as a typed record (:class:`RunRecord`): what the app writes and
returns, what the report reads, and the refusal of any other schema."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from lit_utils import app_overrides
from omegaconf import DictConfig, OmegaConf

from progrow.app import ConfigError
from progrow.app.report import main
from progrow.app.run_summary import SUMMARY_FILE, SUMMARY_SCHEMA, RunRecord, SummaryError
from progrow.app.runs import load_run
from progrow.app.train import CONF_DIR, train
from progrow.events import GrowthEvent

os.environ.setdefault("WANDB_MODE", "disabled")

#: The keys of summary.json (and of the dict ``train`` returns).
KEYS = {
    "schema", "growth", "seed", "val_loss", "events", "flops", "budget_flops", "tokens",
    "train_s", "max_steps", "params_start", "sizes_start", "params", "sizes", "global_step",
    "wall_s", "wall_s_total", "fit_s", "output_dir", "ckpt_dir", "last_ckpt", "log_dirs",
    "loggers", "resumed_from", "fingerprint", "report_dir", "hf_export", "compile",
}  # fmt: skip
MAX_STEPS = 10  # all_six grows three times


def _record() -> RunRecord:
    """A record with every nested part filled (events, a lost W&B service, compile stats)."""
    event = GrowthEvent(stage=0, step=4, params_before=10, params=20, sizes={"d_model": 16},
                        loss_before=2.5, loss_after=2.25, seconds=0.1, flops=1e6)  # fmt: skip
    return RunRecord(
        growth="all_six", seed=3, val_loss=2.0, events=[event], flops=2e6, budget_flops=None,
        tokens=640, train_s=1.5, max_steps=10, params_start=10, sizes_start={"d_model": 8},
        params=20, sizes={"d_model": 16}, global_step=10, wall_s=3.0, wall_s_total=5.0,
        fit_s=2.0, output_dir="/r", ckpt_dir="/r/checkpoints", last_ckpt="/r/last.ckpt",
        log_dirs=["/r/csv", "/r/wandb"],
        loggers=[{"logger": "csv", "dir": "/r/csv"},
                 {"logger": "wandb", "dir": "/r/wandb", "lost_at_step": 7, "error": "E()"}],
        resumed_from=None, fingerprint="abc", report_dir="/r", hf_export=None,
        compile=[{"step": 0, "sizes": {"d_model": 8}, "graphs": 1, "first_step_s": 0.5}],
    )  # fmt: skip


def test_round_trip_through_the_json_file(tmp_path: Path) -> None:
    record = _record()
    data = record.to_dict()
    assert set(data) == KEYS and data["schema"] == SUMMARY_SCHEMA == 1
    assert next(iter(data)) == "schema", "first in the file"
    assert RunRecord.from_dict(json.loads(json.dumps(data))) == record
    path = tmp_path / SUMMARY_FILE
    record.write(path)
    assert RunRecord.read(path) == record
    assert json.loads(path.read_text()) == data
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.val_loss = 1.0  # type: ignore[misc]


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "run" / SUMMARY_FILE
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path


def test_a_summary_without_schema_is_refused_naming_the_file_and_schemas(
    tmp_path: Path,
) -> None:
    old = {k: v for k, v in _record().to_dict().items() if k != "schema"}
    path = _write(tmp_path, old)
    with pytest.raises(SummaryError) as refused:
        RunRecord.read(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: no 'schema' key")
    assert "reads summary schema 1 only" in message
    assert "ckpt_path=auto" in message and "move it away" in message  # how to regenerate
    assert isinstance(refused.value, ValueError)


@pytest.mark.parametrize("found", [2, 0, "1", True, None])
def test_another_schema_is_refused_naming_both(tmp_path: Path, found: Any) -> None:
    path = _write(tmp_path, {**_record().to_dict(), "schema": found})
    with pytest.raises(SummaryError, match="move it away") as refused:
        RunRecord.read(path)
    assert str(refused.value).startswith(
        f"{path}: summary schema {found!r}; this progrow reads summary schema 1 only."
    )


def test_unknown_and_missing_keys_are_refused_naming_them(tmp_path: Path) -> None:
    data = _record().to_dict()
    del data["fit_s"]
    path = _write(tmp_path, {**data, "wall_s_max": 1.0})
    with pytest.raises(SummaryError) as refused:
        RunRecord.read(path)
    assert str(refused.value).startswith(
        f"{path}: not a summary of schema 1: missing keys ['fit_s'], unknown keys ['wall_s_max']"
    )
    bad_event = {**_record().to_dict(), "events": [{"stage": 0, "step": 1, "oops": 1}]}
    with pytest.raises(
        SummaryError, match=r"^x.json: events: unknown growth event field\(s\) \['oops'\]"
    ):
        RunRecord.from_dict(bad_event, "x.json")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_file_that_is_no_summary_is_refused_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / SUMMARY_FILE
    path.write_text(text)
    with pytest.raises(SummaryError, match=f"^{re.escape(str(path))}: not "):
        RunRecord.read(path)


# -- the app writes it, the report reads it ------------------------------------------------


def _config(out: Path, cache: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*app_overrides(cache, max_steps=MAX_STEPS, val_every=5),
                                          *overrides])  # fmt: skip
    cfg.paths.output_dir = str(out)
    return cfg


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def app_run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A growing run folder as the CLI leaves it (``.hydra/config.yaml`` included), and
    what ``train`` returned."""
    out = tmp_path_factory.mktemp("run")
    cfg = _config(out, cache)
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return out, train(cfg)


def test_the_app_returns_what_it_writes_and_the_report_reads_it(
    app_run: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = app_run
    assert set(summary) == KEYS and summary["schema"] == SUMMARY_SCHEMA
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary
    record = RunRecord.read(out / SUMMARY_FILE)
    assert record.to_dict() == summary and len(record.events) == 3
    assert record.wall_s_total == record.wall_s, "the folder's first launch"
    run = load_run(out)
    assert (run.growth, run.seed, run.lr_schedule) == ("all_six", 0, "cosine")
    assert run.final_val_loss == summary["val_loss"] == run.curve[-1][1]
    assert (run.flops, run.tokens) == (summary["flops"], MAX_STEPS * 4 * 16)
    assert run.wall_s == summary["wall_s_total"] and run.sizes == summary["sizes"]
    assert run.events == record.events


def test_an_old_summary_is_refused_by_the_report_and_the_app_and_regenerated(
    app_run: tuple[Path, dict[str, Any]],
    cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """A summary of another schema is never mixed in: the report and a relaunch into its
    folder refuse it (the relaunch before any training); moved away, the run reads from its
    logs, and rerunning it with ``ckpt_path=auto``, as the message says, writes a new one,
    whose ``wall_s_total`` adds up the launches that finished there."""
    run = tmp_path / "run"
    shutil.copytree(app_run[0], run)
    summary_file = run / SUMMARY_FILE
    old = {k: v for k, v in app_run[1].items() if k != "schema"}
    summary_file.write_text(json.dumps(old))
    with pytest.raises(SummaryError, match=f"^{re.escape(str(summary_file))}: no 'schema' key"):
        load_run(run)
    assert main([str(run), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"progrow-report: error: {summary_file}: no 'schema' key")
    before = sorted(p.name for p in run.rglob("*"))
    cfg = _config(run, cache, "ckpt_path=auto")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(summary_file))}: no 'schema' key"):
        train(cfg)
    assert sorted(p.name for p in run.rglob("*")) == before, "refused before any work"

    summary_file.rename(run / "summary.old.json")
    unfinished = load_run(run)  # as a run still in progress: its CSV log and hparams
    assert unfinished.growth == "all_six" and unfinished.wall_s is None
    assert [e.step for e in unfinished.events] == [e["step"] for e in old["events"]]
    assert unfinished.final_val_loss == old["val_loss"]

    again = train(cfg)
    assert again["global_step"] == MAX_STEPS and again["resumed_from"] is not None
    assert again["wall_s_total"] == again["wall_s"]
    third = train(cfg)
    assert third["wall_s_total"] == pytest.approx(again["wall_s_total"] + third["wall_s"])
    assert load_run(run).wall_s == third["wall_s_total"]
