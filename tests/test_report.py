"""``progrow-report`` on real runs (a baseline and a growing run) and on synthetic logs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from lit_utils import app_overrides

from progrow.app.report import baseline_notes, main, markdown
from progrow.app.report_compare import crossing, flops_to_reach, pick_baseline, summarize
from progrow.app.runs import RunSummary, read_metrics
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


def test_cli_names_the_plot_after_the_runs_and_never_overwrites_one(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The default plot goes beside the runs with a name saying which runs it compares
    (once ``report.png`` in the first folder, replaced by every later report); an existing
    file is refused with one line naming it, unless ``--force``."""
    png = sweep / "report-0_vs_1.png"
    assert main([str(sweep)]) == 0
    assert f"plot: {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (sweep / "report.png").exists()
    png.write_bytes(b"an earlier report")
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"a file of mine")
    for args, existing in (([str(sweep)], png), ([str(sweep), "-o", str(mine)], mine)):
        assert main(args) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # refused before printing a report
        assert captured.err.splitlines() == [
            f"progrow-report: error: {existing} exists; pass --force to replace it, "
            "--out PATH to write elsewhere or --no-plot"
        ]
    assert png.read_bytes() == b"an earlier report" and mine.read_bytes() == b"a file of mine"
    assert main([str(sweep), "--force"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(sweep / "0"), "--no-plot"]) == 0  # nothing written, nothing refused
    assert not list((sweep / "0").glob("report*.png"))


def test_growth_events_at_the_same_flops_stay_apart() -> None:
    """Two runs growing at the same FLOPs: each run's events are drawn in its own colour,
    with its own dash pattern and marker, the markers on its own curve (so at different
    heights), instead of dotted verticals that overlap into one."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D

    from progrow.app.report_plot import figure

    runs = []
    for name, losses in (("a", [4.0, 3.0, 2.0]), ("b", [5.0, 4.0, 3.5])):
        run = _summary("all_six", 0, 3e9)
        run.name, run.path = name, f"/runs/{name}"
        run.curve = list(zip([1e9, 2e9, 3e9], losses, strict=True))
        run.events = [GrowthEvent(stage=0, step=4, flops=1.5e9), GrowthEvent(1, 8, flops=2e9)]
        runs.append(run)
    fig = figure(runs)
    ax = fig.axes[0]
    styles = []
    for run in runs:
        curve = next(line for line in ax.get_lines() if line.get_label().endswith(f"({run.name})"))
        mine = [a for a in ax.get_children() if a.get_gid() == f"growth-events:{run.name}"]
        assert all(isinstance(a, Line2D) for a in mine)
        assert {to_rgba(a.get_color()) for a in mine} == {to_rgba(curve.get_color())}
        verticals = [a for a in mine if a.get_marker() in ("None", "", None)]
        (markers,) = [a for a in mine if a.get_marker() not in ("None", "", None)]
        assert [float(v.get_xdata()[0]) for v in verticals] == [1.5e9, 2e9]
        (x0, y0), (x1, y1) = run.curve[:2]  # on its own curve (straight on the log axis)
        between = y0 + (y1 - y0) * math.log(1.5e9 / x0) / math.log(x1 / x0)
        assert list(markers.get_ydata()) == pytest.approx([between, y1])
        styles.append(({v.get_linestyle() for v in verticals}, markers.get_marker()))
    assert styles[0][0] != styles[1][0] and styles[0][1] != styles[1][1]
    plt.close(fig)


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
