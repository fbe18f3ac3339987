"""The benchmarks' CPU mode runs end to end: ``benchmarks/bench_gpu.py`` at its tiny size."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")


@pytest.fixture(scope="module")
def bench_gpu() -> Iterator[Any]:
    """The script as a module. Importing its ``_common`` quiets Lightning's loggers and
    some warnings for the whole process; both are put back afterwards, so that later
    tests (tests/test_quiet_console.py) still see what Lightning logs."""
    loggers = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    sys.path.insert(0, str(BENCHMARKS))
    try:
        with warnings.catch_warnings():
            import bench_gpu

            yield bench_gpu
    finally:
        sys.path.remove(str(BENCHMARKS))
        for module in ("bench_gpu", "_common"):
            sys.modules.pop(module, None)
        for name, level in loggers.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture(autouse=True)
def _compile_cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The script points inductor's and triton's caches at a new folder; undone after."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the script's mkdtemp goes


def test_bench_gpu_cpu_mode_reports_every_row(bench_gpu: Any, tmp_path: Path) -> None:
    # The "eager" backend (dynamo only) keeps the compiled rows to about a second each.
    argv = ["--device", "cpu", "--size", "tiny", "--compile-backend", "eager"]
    returned = bench_gpu.main([*argv, "--out", str(tmp_path), "--budget-s", "600"])
    payload = json.loads((tmp_path / "cpu_tiny.json").read_text())
    assert payload == json.loads(json.dumps(returned))
    rows = {row["name"]: row for row in payload["rows"]}
    assert list(rows) == [spec.name for spec in bench_gpu.ROWS]
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row.get("traceback"))
        assert row["tokens_per_s"] > 0, name
        assert row["mfu"] is None, name  # no peak is known for a CPU
    # Hugging Face starts from progrow's weights: the same loss on the same batch.
    for arch in ("gpt2", "llama"):
        ours, theirs = rows[f"{arch}/progrow/eager"], rows[f"{arch}/hf/eager"]
        assert ours["loss_step0"] == pytest.approx(theirs["loss_step0"], abs=1e-2)
    for mode in ("eager", "compiled"):
        grown = rows[f"llama/grown/{mode}"]
        assert grown["same_sizes_as_fresh"] is True
        assert grown["fresh"]["tokens_per_s"] > 0
        assert grown["growth_s"] > 0 and grown["cost_steps"] > 0
        assert set(grown["memory_mib"]) == {
            "steady_before", "growth", "first_step_after", "steady_after"
        }  # fmt: skip
    assert rows["llama/grown/compiled"]["graphs_after"] >= 1  # the grown model recompiled
    table = (tmp_path / "cpu_tiny.md").read_text()
    assert table.count("| ok |") == len(rows)


def test_bench_gpu_reports_a_failing_row_and_goes_on(
    bench_gpu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("no Hugging Face today")

    monkeypatch.setattr(bench_gpu, "hf_model", broken)
    argv = ["--device", "cpu", "--size", "tiny", "--rows", "gpt2/*/eager", "--out", str(tmp_path)]
    rows = bench_gpu.main(argv)["rows"]
    assert [r["name"] for r in rows] == ["gpt2/progrow/eager", "gpt2/hf/eager"]
    assert rows[0]["status"] == "ok" and rows[0]["tokens_per_s"] > 0
    assert rows[1]["status"] == "failed: RuntimeError: no Hugging Face today"
    assert "failed: RuntimeError: no Hugging Face today" in (tmp_path / "cpu_tiny.md").read_text()


def test_bench_gpu_skips_rows_past_the_budget(bench_gpu: Any, tmp_path: Path) -> None:
    argv = ["--device", "cpu", "--size", "tiny", "--rows", "llama/grown/*", "--budget-s", "0"]
    rows = bench_gpu.main([*argv, "--out", str(tmp_path)])["rows"]
    assert [r["status"].split(" (")[0] for r in rows] == ["skipped: time budget"] * 2
    assert "tokens_per_s" not in rows[0]


def test_memory_ratio_of_a_window_that_grew_nothing_is_none(bench_gpu: Any) -> None:
    """On CPU a window's peak is RSS above the row's start: 0 when the allocator reuses
    memory the process holds (the suite's process, after other tests), and the ratio is
    then undefined, not a ZeroDivisionError that fails the row."""
    assert bench_gpu._ratio(3.0, 0.0) is None and bench_gpu._ratio(3.0, -1.0) is None
    assert bench_gpu._ratio(3.0, 2.0) == 1.5
