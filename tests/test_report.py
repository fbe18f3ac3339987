"""``progrow-report`` on real runs (a baseline and a growing run) and on synthetic logs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from lit_utils import app_overrides

from progrow.app.report import (
    RunSummary,
    baseline_notes,
    crossing,
    flops_to_reach,
    main,
    markdown,
    pick_baseline,
    read_metrics,
    summarize,
)
from progrow.app.train import CONF_DIR, train
from progrow.events import GrowthEvent

os.environ.setdefault("WANDB_MODE", "disabled")


def _run(out: Path, cache: Path, *overrides: str) -> dict[str, Any]:
    tiny = app_overrides(cache, val_every=5)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*tiny, *overrides])
    cfg.paths.output_dir = str(out)
    (out / ".hydra").mkdir(parents=True)  # what Hydra writes for CLI runs
    (out / ".hydra" / "config.yaml").write_text(f"seed: 0\ngrowth:\n  name: {cfg.growth.name}\n")
    return train(cfg)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed-size baseline at the final size and a growing run with more steps."""
    root = tmp_path_factory.mktemp("sweep")
    cache = tmp_path_factory.mktemp("cache")
    _run(root / "0", cache, "model=small", "growth=none", "trainer.max_steps=10")
    _run(root / "1", cache, "growth=all_six", "trainer.max_steps=40")
    return root


def test_summarize_finds_both_runs_and_computes_the_saving(sweep: Path) -> None:
    base, grown = summarize([sweep])
    assert (base.growth, grown.growth) == ("none", "all_six")
    assert base.is_baseline and len(grown.events) == 3 and not base.events
    assert grown.baseline == base.path
    assert base.final_val_loss is not None and grown.flops and base.flops
    assert grown.flops_to_baseline is not None, "the longer growing run reaches the baseline"
    expected = 100 * (1 - grown.flops_to_baseline / base.curve[-1][0])
    assert grown.saving_pct == pytest.approx(expected)
    assert grown.wall_s is not None and grown.wall_s > 0
    flops = [e.flops for e in grown.events]
    assert all(f is not None for f in flops) and flops == sorted(flops)  # type: ignore[type-var]


def test_cli_prints_table_and_writes_png(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    png = sweep / "cmp.png"
    assert main([str(sweep), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "all_six" in out and "(baseline)" in out and "%" in out
    assert png.is_file() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_json_and_markdown(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep), "--json", "--no-plot"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["growth"] for r in payload["runs"]] == ["none", "all_six"]
    assert payload["runs"][1]["saving_pct"] is not None
    assert "6N + 6·L·H·(Q+V)·(T+1)/2" in payload["flops_convention"]
    assert main([str(sweep), "--markdown", "--no-plot", "--baseline", str(sweep / "0")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| run | growth |") and "\nFLOPs: training FLOPs, 6N + " in out


def test_missing_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert main([str(tmp_path), "--no-plot"]) == 1


def test_flops_to_reach_interpolates() -> None:
    curve = [(1.0, 5.0), (2.0, 4.0), (4.0, 2.0)]
    assert flops_to_reach(curve, 5.0) == 1.0
    assert flops_to_reach(curve, 3.0) == 3.0
    assert flops_to_reach(curve, 1.0) is None


SMALL = {"d_model": 64, "n_layers": 2}


def _summary(growth: str, seed: int, flops: float, sizes: dict[str, int] = SMALL) -> RunSummary:
    return RunSummary(
        name=growth,
        path=f"/{growth}/{seed}/{flops}",
        growth=growth,
        seed=seed,
        final_val_loss=1.0,
        flops=flops,
        tokens=None,
        wall_s=None,
        curve=[(flops, 1.0)],
        sizes=dict(sizes),
    )


def test_baseline_matches_seed_else_most_flops() -> None:
    bases = [_summary("none", 0, 10.0), _summary("none", 1, 5.0), _summary("none", 2, 20.0)]
    assert pick_baseline(_summary("x", 1, 1.0), bases) is bases[1]
    assert pick_baseline(_summary("x", 7, 1.0), bases) is bases[2]


def test_a_fixed_size_run_is_not_its_own_baseline() -> None:
    base = _summary("none", 0, 10.0)
    assert pick_baseline(base, [base]) is None
    other = _summary("none", 0, 20.0)
    assert pick_baseline(base, [base, other]) is other


def test_crossing_keeps_nothing_from_an_earlier_baseline() -> None:
    """Measured again against a baseline it never reaches (e.g. the start-size reference
    against the target), a run reports no saving, not the one of its first comparison."""
    run = _summary("none", 0, 10.0, sizes={"d_model": 8, "n_layers": 1})
    run.curve, run.final_val_loss = [(5.0, 2.0), (10.0, 1.5)], 1.5
    run.time_curve = [(1.0, 2.0), (2.0, 1.5)]
    easy = _summary("none", 0, 10.0)
    easy.final_val_loss, easy.time_curve = 2.0, [(4.0, 2.0)]
    crossing(run, easy)
    assert run.saving_pct == pytest.approx(50.0) and run.time_saving_pct == pytest.approx(75.0)
    hard = _summary("none", 0, 10.0)
    hard.final_val_loss, hard.time_curve = 1.0, [(4.0, 1.0)]
    crossing(run, hard)
    assert run.baseline == hard.path
    assert (run.flops_to_baseline, run.saving_pct) == (None, None)
    assert (run.time_to_baseline, run.time_saving_pct) == (None, None)


def test_only_a_fixed_size_run_of_the_final_size_is_a_baseline(
    capsys: pytest.CaptureFixture,
) -> None:
    """A fixed-size run smaller than where the growing run ends (a sweep of
    ``growth=none,width_first`` from model=tiny) is no baseline: the report says so
    instead of reporting a saving against it."""
    tiny = {"d_model": 32, "n_layers": 1}
    grown = _summary("width_first", 0, 1.0)
    assert pick_baseline(grown, [_summary("none", 0, 5.0, sizes=tiny)]) is None
    grown.events = [GrowthEvent(stage=0, step=1)]
    fake_none = _summary("none", 0, 5.0)
    fake_none.events = [GrowthEvent(stage=0, step=2)]  # called "none" but it grew: not fixed-size
    assert pick_baseline(grown, [fake_none]) is None
    assert [n.split(":")[0] for n in baseline_notes([grown])] == ["width_first"]
    assert "no fixed-size run (growth=none) of its final size (d_model=64 n_layers=2)" in (
        markdown([grown])
    )


def test_resumed_attempts_are_merged(tmp_path: Path) -> None:
    """version_1 (a resume from step 4) replaces version_0's rows from step 4 on."""
    for version, rows in ((0, [(2, 3.0), (4, 2.5), (6, 2.4)]), (1, [(4, 2.6), (8, 2.0)])):
        folder = tmp_path / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        lines = ["step,val/loss,compute/flops"] + [f"{s},{v},{s * 10}" for s, v in rows]
        (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    merged = read_metrics(tmp_path)
    assert [(r["step"], r["val/loss"]) for r in merged] == [(2, 3.0), (4, 2.6), (8, 2.0)]
