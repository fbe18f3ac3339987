"""Growth under DDP on CPU (gloo, 2 processes): both ranks grow, and stay identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import checkout_env

SCRIPT = Path(__file__).parent / "ddp_growth_script.py"
TIMEOUT_S = 240


def run_ddp(out: Path, find_unused: bool) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **checkout_env()}
    # A new session, so a hang is ended by killing the whole process group (both ranks).
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), "1" if find_unused else "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"DDP run did not finish in {TIMEOUT_S} s (killed its process group)")
    assert proc.returncode == 0, output.decode()[-4000:]


# find_unused_parameters=True is the trap: without re-wrapping it raises no error, the
# grown parameters are simply never all-reduced and the ranks drift apart.
@pytest.mark.parametrize("find_unused", [False, True], ids=["default", "find_unused"])
def test_ddp_growth_keeps_ranks_identical(tmp_path: Path, find_unused: bool) -> None:
    run_ddp(tmp_path, find_unused)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for rank in ranks:
        assert [e["step"] for e in rank["events"]] == [4, 8]
        assert rank["config"]["n_layers"] == 3 and rank["config"]["d_model"] == 12
        assert all(abs(e["loss_delta"]) <= 1e-5 for e in rank["events"])
    a, b = ranks[0]["params"], ranks[1]["params"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs across ranks"
