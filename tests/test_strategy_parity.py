"""Differential test of the app's *default* growth config across strategies: the same run
under FSDP2 (``trainer=fsdp_cpu``) and DDP (``trainer=ddp_cpu``), 2 gloo processes each,
agrees with one device (``trainer=cpu trainer.accumulate_grad_batches=2``: the same
windows per optimizer step) at every logged learning rate, every validation, every
growth probe and in the final parameters.

Tolerances come from float32 reduction order (a gradient averaged across ranks vs.
accumulated in one process): 1e-5 relative on losses and learning rates, 1e-4 absolute
on parameters after 32 AdamW steps. A width-scaled LR applied with the pre-growth width,
as FSDP2 once did, is off by 1.5x.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import checkout_env, run_process_groups

from progrow.offline import load_checkpoint

STEPS = 32
COMMON = [
    "experiment=quick",  # the default model, growth and data; a small data subset
    f"trainer.max_steps={STEPS}",
    "trainer.val_check_interval=8",
    "trainer.log_every_n_steps=1",
    "data.val_batches=2",
]
RUNS = {
    # val_check_interval counts micro-batches: 16 here are 8 optimizer steps, as there
    "one_device": [
        "trainer=cpu",
        "trainer.accumulate_grad_batches=2",
        "trainer.val_check_interval=16",
    ],
    "ddp": ["trainer=ddp_cpu"],
    "fsdp": ["trainer=fsdp_cpu"],
}
#: The growth-tax levers that draw random values (shrink-and-perturb, noise on the new
#: entries) or scale the LR per group after growth: under DDP every rank must draw the
#: same values (DDP averages gradients, never parameters: ranks that drew differently
#: would train different models from then on, silently).
LEVERS = [
    "growth.shrink_perturb={shrink: 0.8, noise: 0.01}",
    "growth.new_noise=0.01",
    "growth.rewarmup_steps=4",
    "growth.lr_fan_in_exponent=1",
    "growth.lr_width_exponent=0",
]
RUNS |= {
    "one_device_levers": [*RUNS["one_device"], *LEVERS],
    "ddp_levers": ["trainer=ddp_cpu", *LEVERS],
}
TIMEOUT_S = 240


def _metrics(run: Path) -> dict[str, dict[int, float]]:
    """Every logged value by column and step (the CSV log of the run)."""
    (path,) = run.glob("csv/version_*/metrics.csv")
    out: dict[str, dict[int, float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if (
                    value
                    and key not in ("step", "epoch")
                    and not key.startswith(("time/", "throughput/"))
                ):
                    out.setdefault(key, {})[int(row["step"])] = float(value)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("parity")
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **checkout_env()}
    env.setdefault("PROGROW_CACHE", str(root / "cache"))
    found = {}
    for name, overrides in RUNS.items():
        folder = root / name
        argv = [
            sys.executable,
            "-m",
            "progrow.train",
            *COMMON,
            *overrides,
            f"hydra.run.dir={folder}",
        ]
        (output,) = run_process_groups([(argv, env)], TIMEOUT_S, f"app run {name}")
        summary = json.loads((folder / "summary.json").read_text())
        found[name] = {
            "summary": summary,
            "metrics": _metrics(folder),
            "final": load_checkpoint(summary["last_ckpt"])["state_dict"],
            "output": output,
        }
    return found


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "ddp_levers"])
def test_default_growth_matches_one_device(runs: dict[str, dict[str, Any]], strategy: str) -> None:
    one = runs["one_device_levers" if strategy.endswith("_levers") else "one_device"]
    other = runs[strategy]
    events = [(e["step"], e["sizes"]) for e in one["summary"]["events"]]
    assert len(events) == 3  # the default schedule's three stages
    assert events == [(e["step"], e["sizes"]) for e in other["summary"]["events"]]
    for mine, theirs in zip(one["summary"]["events"], other["summary"]["events"], strict=True):
        for key in ("loss_before", "loss_after"):
            assert theirs[key] == pytest.approx(mine[key], rel=1e-5), (strategy, mine["step"], key)
    # train/loss is one rank's micro-batch under DDP: not the same quantity; skip it.
    columns = [c for c in one["metrics"] if c.startswith(("lr-", "val/"))]
    assert any(c.startswith("lr-") for c in columns) and "val/loss" in columns
    for column in columns:
        want, got = one["metrics"][column], other["metrics"].get(column, {})
        assert got.keys() == want.keys(), (strategy, column)
        for step, value in want.items():
            assert got[step] == pytest.approx(value, rel=1e-5), (strategy, column, step)
    assert one["final"].keys() == other["final"].keys()
    for name, value in one["final"].items():
        if value.is_floating_point():
            torch.testing.assert_close(other["final"][name], value, rtol=0, atol=1e-4, msg=name)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_multi_process_runs_print_no_lightning_noise(
    runs: dict[str, dict[str, Any]], strategy: str
) -> None:
    """No sync_dist or DistributedSampler warnings in a 2-process run of the default
    config (tests/test_quiet_console.py lists the noise)."""
    from test_quiet_console import _noise

    assert _noise(runs[strategy]["output"]) == [], runs[strategy]["output"][-3000:]


def test_the_levers_took_effect(runs: dict[str, dict[str, Any]]) -> None:
    """The lever runs are not the default run again: shrink-and-perturb and the noise
    change the function at each growth (the probe moves), and the parameters end apart."""
    plain, levers = runs["one_device"], runs["one_device_levers"]
    assert all(abs(e["loss_delta"]) > 1e-3 for e in levers["summary"]["events"])
    assert all(abs(e["loss_delta"]) < 1e-4 for e in plain["summary"]["events"])
    name = "model.blocks.0.attn.q.weight"
    assert not torch.allclose(plain["final"][name], levers["final"][name], atol=1e-3)
