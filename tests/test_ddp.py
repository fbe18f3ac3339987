"""Growth under DDP on CPU (gloo, 2 processes): both ranks grow, and stay identical."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import checkout_env, run_process_groups
from lit_utils import SEQ_LEN, TINY_MODEL, TWO_STAGES

from progrow import GROWABLE_DIMS, TransformerConfig
from progrow.flops import train_flops_per_token

SCRIPT = Path(__file__).parent / "ddp_growth_script.py"
TIMEOUT_S = 240


def run_ddp(out: Path, find_unused: bool) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **checkout_env()}
    argv = [sys.executable, str(SCRIPT), str(out), "1" if find_unused else "0"]
    run_process_groups([(argv, env)], TIMEOUT_S, "DDP run")


def check_compute_counts(ranks: list[dict[str, Any]]) -> None:
    """Every rank logs the tokens of all ranks together (10 steps x batch 4 x 16 tokens x
    2 ranks), which is what the ranks actually trained on, and the FLOPs of those tokens
    at the size of each step."""
    seen = sum(rank["tokens_seen"] for rank in ranks)
    assert seen == 10 * 4 * SEQ_LEN * 2
    config = TransformerConfig(**TINY_MODEL)
    expected, step = 0.0, 0
    for stage in [*TWO_STAGES, {"step": 10}]:
        expected += (
            (stage["step"] - step) * 4 * SEQ_LEN * 2 * train_flops_per_token(config, SEQ_LEN)
        )
        sizes = {k: v for k, v in stage.items() if k in GROWABLE_DIMS}
        config, step = config.replace(**sizes), stage["step"]
    for rank in ranks:
        assert rank["tokens"] == seen
        assert rank["flops"] == pytest.approx(expected, rel=1e-12)


# find_unused_parameters=True is the trap: without re-wrapping it raises no error, the
# grown parameters are simply never all-reduced and the ranks drift apart. That run also
# trains from a plain DataLoader with a probe loss that jumps on rank 1 only (see the
# script): without collective decisions rank 1 raises and rank 0 hangs.
@pytest.mark.parametrize("find_unused", [False, True], ids=["default", "find_unused"])
def test_ddp_growth_keeps_ranks_identical(tmp_path: Path, find_unused: bool) -> None:
    run_ddp(tmp_path, find_unused)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for rank in ranks:
        assert [e["step"] for e in rank["events"]] == [4, 8]
        assert rank["config"]["n_layers"] == 3 and rank["config"]["d_model"] == 12
        assert all(abs(e["loss_delta"]) <= 1e-5 for e in rank["events"])
    check_compute_counts(ranks)
    # One probe batch and one set of growth numbers on every rank (rank 0's).
    assert torch.equal(ranks[0]["probe"], ranks[1]["probe"])
    drop = {"seconds"}
    assert [{k: v for k, v in e.items() if k not in drop} for e in ranks[0]["events"]] == [
        {k: v for k, v in e.items() if k not in drop} for e in ranks[1]["events"]
    ]
    a, b = ranks[0]["params"], ranks[1]["params"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs across ranks"
