"""Growth under FSDP2 (GrowableModelParallelStrategy) on CPU: 2 gloo processes, one run
of several fits (tests/fsdp_growth_script.py).

Checks: every rank holds bitwise the same full parameters right after each growth and at
the end; the grown parameters are really sharded; the probe loss is preserved; resuming
from a sharded (distributed) checkpoint before, between and after the growth stages, and
from a full checkpoint, ends bitwise where the uninterrupted run ends; so does resuming
from a full FSDP checkpoint grown offline (progrow-grow) at the first stage's step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import checkout_env, run_process_groups
from lit_utils import TWO_STAGES, datamodule, growth, lm_module

from progrow.checkpoint_files import CHECKPOINT_FORMAT
from progrow.offline import grow_checkpoint, load_checkpoint

SCRIPT = Path(__file__).parent / "fsdp_growth_script.py"
TIMEOUT_S = 300
RUNS = ("full_run", "sharded_2", "sharded_6", "sharded_10", "full_format", "full_6", "offline_4")


@pytest.fixture(scope="module")
def fsdp_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **checkout_env()}
    # Its own process group, so a hang is ended by killing both ranks.
    run_process_groups([([sys.executable, str(SCRIPT), str(out)], env)], TIMEOUT_S, "FSDP run")
    return out


@pytest.fixture(scope="module")
def ranks(fsdp_out: Path) -> list[dict]:
    return [torch.load(fsdp_out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), f"{what}: {key}"


def test_growth_under_fsdp_keeps_ranks_identical_and_sharded(ranks: list[dict]) -> None:
    run0, run1 = ranks[0]["full_run"], ranks[1]["full_run"]
    for step in (4, 8):
        assert_same(run0["after_growth"][step], run1["after_growth"][step], f"step {step}")
    assert_same(run0["final"], run1["final"], "final")
    assert run0["config"]["n_layers"] == 3 and run0["config"]["d_model"] == 12
    assert [e["step"] for e in run0["events"]] == [4, 8]
    assert all(abs(e["loss_delta"]) <= 1e-5 for e in run0["events"])
    # The second stage splits (init="split"): no zero column in W_O after its d_v growth.
    w_o = run0["after_growth"][8]["model.blocks.0.attn.o.weight"]
    assert not (w_o == 0).all(dim=0).any()
    # The grown model is sharded again: the ranks' pieces of every tensor add up to it.
    local0, local1 = (rank["full_run"]["local"] for rank in ranks)
    assert "model.blocks.2.mlp.fc.weight" in local0  # a layer added by growth
    assert local0.keys() == local1.keys()
    for name, (own, full) in local0.items():
        assert 0 < own < full and own + local1[name][0] == full, name


def unsharded_checkpoint(before: dict) -> dict:
    """The state gathered right before the first growth (step 4), as the full checkpoint
    the offline path grows."""
    return {
        "state_dict": before["params"],
        "optimizer_states": [before["optimizer"]["state_dict"]],
        "global_step": 4,
        "progrow": {
            "format": CHECKPOINT_FORMAT,
            "model_config": lm_module(12).model.config.to_dict(),
            "optimizer_params": [before["optimizer"]["names"]],
        },
    }


def test_sharded_growth_equals_unsharded_growth(ranks: list[dict]) -> None:
    """The state gathered right before the first growth, grown unsharded (the offline
    path: plain tensors, the same surgery), equals what the sharded growth produced."""
    run = ranks[0]["full_run"]
    before = run["before_growth"]
    checkpoint = unsharded_checkpoint(before)
    stage0 = {k: v for k, v in TWO_STAGES[0].items() if k != "step"}
    expected = grow_checkpoint(checkpoint, stage0, seed=0)
    assert_same(expected["state_dict"], run["after_growth"][4], "parameters")
    got = run["optimizer_after_growth"]
    assert got["names"] == expected["progrow"]["optimizer_params"][0]
    want_state = expected["optimizer_states"][0]["state"]
    assert got["state_dict"]["state"].keys() == want_state.keys()
    for index, state in want_state.items():
        assert_same(state, got["state_dict"]["state"][index], f"optimizer state {index}")


def test_sharded_growth_with_the_levers_equals_unsharded_growth(ranks: list[dict]) -> None:
    """shrink_perturb, new_noise and optimizer_state="reset_old" under FSDP2: every rank
    grows as the unsharded (offline) path does, and the run ends the same on both ranks."""
    from fsdp_growth_script import LEVER_PERTURB

    run = ranks[0]["levers"]
    assert_same(run["final"], ranks[1]["levers"]["final"], "final")
    before = run["before_growth"]
    checkpoint = unsharded_checkpoint(before)
    stage0 = {k: v for k, v in TWO_STAGES[0].items() if k != "step"}
    expected = grow_checkpoint(
        checkpoint, stage0, seed=0, optimizer_state="reset_old", **LEVER_PERTURB
    )
    assert_same(expected["state_dict"], run["after_growth"][4], "parameters")
    assert not torch.equal(
        run["after_growth"][4]["model.blocks.0.attn.q.weight"],
        ranks[0]["full_run"]["after_growth"][4]["model.blocks.0.attn.q.weight"],
    )  # shrunk and perturbed
    got = run["optimizer_after_growth"]["state_dict"]["state"]
    want = expected["optimizer_states"][0]["state"]
    assert got.keys() == want.keys()
    for index, state in want.items():
        assert_same(state, got[index], f"optimizer state {index}")
    assert any(float(state["step"]) == 0 for state in want.values())  # reset ones
    assert [e["step"] for e in run["events"]] == [4, 8]


@pytest.mark.parametrize("run", RUNS[1:])
def test_resume_under_fsdp_is_bitwise_exact(ranks: list[dict], run: str) -> None:
    expected = ranks[0]["full_run"]["final"]
    for rank in ranks:
        assert_same(rank[run]["final"], expected, run)
        assert [e["step"] for e in rank[run]["events"]] == [4, 8]


def _by_name(optimizer: dict, names: list[list[str]]) -> dict[str, dict[str, torch.Tensor]]:
    """An optimizer state dict's moments by parameter name: the ids it keys them by are
    labels (positions in the groups, or in the module's parameters), not a layout."""
    ids = [i for group in optimizer["param_groups"] for i in group["params"]]
    flat = [name for group in names for name in group]
    return {flat[k]: optimizer["state"][i] for k, i in enumerate(ids) if i in optimizer["state"]}


def test_a_sharded_checkpoint_reads_as_the_full_one(fsdp_out: Path) -> None:
    """One device reads a sharded FSDP2 folder: the same tensors and optimizer state as
    the full-format checkpoint of the same step (the two runs are bitwise equal), and
    progrow-grow grows it exactly as it grows the full file."""
    sharded = load_checkpoint(fsdp_out / "sharded" / "step=6.ckpt")
    full = load_checkpoint(fsdp_out / "fullfmt" / "step=6.ckpt")
    assert_same(sharded["state_dict"], full["state_dict"], "parameters")
    assert sharded["global_step"] == full["global_step"] == 6
    timing = ("train_seconds",)  # wall time differs between the two runs
    drop = lambda entry: {k: v for k, v in entry.items() if k not in timing}  # noqa: E731
    assert drop(sharded["progrow"]) == drop(full["progrow"])
    (names,) = full["progrow"]["optimizer_params"]
    got, want = (_by_name(c["optimizer_states"][0], names) for c in (sharded, full))
    assert got.keys() == want.keys() and len(want) == sum(len(g) for g in names)
    for name, state in want.items():
        assert_same(state, got[name], f"optimizer state of {name}")
    sizes = {k: v for k, v in TWO_STAGES[0].items() if k != "step"}
    files = (fsdp_out / "sharded" / "step=4.ckpt", fsdp_out / "fullfmt" / "step=4.ckpt")
    grown = [grow_checkpoint(load_checkpoint(p), sizes, seed=0) for p in files]
    assert_same(grown[0]["state_dict"], grown[1]["state_dict"], "grown parameters")
    (names,) = grown[1]["progrow"]["optimizer_params"]
    got, want = (_by_name(c["optimizer_states"][0], names) for c in grown)
    assert got.keys() == want.keys() and len(want) == sum(len(g) for g in names)
    for name, state in want.items():
        assert_same(state, got[name], f"grown optimizer state of {name}")


def test_a_checkpoint_resumed_on_another_world_size_is_refused(fsdp_out: Path) -> None:
    """The full FSDP2 checkpoint of 2 processes on one device: refused, naming both world
    sizes, instead of continuing another part of the data stream (per-rank position)."""
    trainer = L.Trainer(
        max_steps=12,
        accelerator="cpu",
        devices=1,
        callbacks=[growth()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    with pytest.raises(ValueError, match=r"written by 2 process\(es\), resumed on 1"):
        trainer.fit(
            lm_module(12),
            datamodule=datamodule(fsdp_out / "cache"),
            ckpt_path=str(fsdp_out / "fullfmt" / "step=6.ckpt"),
        )
