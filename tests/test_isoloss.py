"""Iso-loss compute (progrow.app.isoloss) and how the report uses it with a ladder of
fixed-size baselines at several budgets."""

from __future__ import annotations

import math

import pytest

from progrow.app.isoloss import IsoLoss, iso_loss_flops, saving_pct
from progrow.app.report import markdown
from progrow.app.report_compare import compare, pick_baseline
from progrow.app.runs import RunSummary

SIZES = {"d_model": 64, "n_layers": 2}


def test_interpolates_linearly_in_log_flops() -> None:
    """Between budgets 1e12 (loss 2.0) and 4e12 (loss 1.0), loss 1.25 lies 3/4 of the way
    in log-FLOPs: 1e12 * 4**0.75."""
    points = [(4e12, 1.0), (1e12, 2.0), (8e12, 0.9)]  # any order
    iso = iso_loss_flops(points, 1.25)
    assert iso.outside == "" and iso.flops == pytest.approx(1e12 * 4**0.75, rel=1e-12)
    assert iso_loss_flops(points, 2.0).flops == pytest.approx(1e12)
    assert iso_loss_flops(points, 0.9).flops == pytest.approx(8e12)
    assert iso_loss_flops(points, 0.95).flops == pytest.approx(math.sqrt(4e12 * 8e12))


def test_outside_the_ladder_says_which_side() -> None:
    points = [(1e12, 2.0), (2e12, 1.5)]
    assert iso_loss_flops(points, 1.4) == IsoLoss(None, "better", 2e12)
    assert iso_loss_flops(points, 2.1) == IsoLoss(None, "worse", 1e12)
    assert saving_pct(IsoLoss(None, "better", 2e12), 1e12) is None
    assert saving_pct(IsoLoss(4e12), 3e12) == pytest.approx(25.0)
    assert saving_pct(IsoLoss(2e12), 3e12) == pytest.approx(-50.0)


def test_noisy_ladder_uses_the_first_bracket() -> None:
    """A final loss that goes up with compute (noise) still gives an answer: the first
    bracketing pair from the smallest budget."""
    iso = iso_loss_flops([(1.0, 2.0), (2.0, 1.0), (4.0, 1.2)], 1.1)
    assert iso.flops == pytest.approx(2 ** (0.9))


@pytest.mark.parametrize(
    "points",
    [[(1e12, 2.0)], [(1e12, 2.0), (1e12, 1.0)], [(0.0, 2.0), (1e12, 1.0)],
     [(1e12, float("nan")), (2e12, 1.0)]],
)  # fmt: skip
def test_bad_ladders_are_refused(points: list[tuple[float, float]]) -> None:
    with pytest.raises(ValueError, match="points="):
        iso_loss_flops(points, 1.0)


def _run(growth: str, flops: float, loss: float, seed: int = 0, lr: str = "wsd") -> RunSummary:
    return RunSummary(
        name=f"{growth}-{flops:g}-{lr}-{seed}",
        path=f"/{growth}/{flops}/{lr}/{seed}",
        growth=growth,
        seed=seed,
        final_val_loss=loss,
        flops=flops,
        tokens=None,
        wall_s=None,
        # a curve that ends at the final loss; the growing run passes 1.5 on its way
        curve=[(flops / 2, loss + 0.5), (flops, loss)],
        sizes=dict(SIZES),
        lr_schedule=lr,
    )


def test_report_reads_iso_loss_off_a_ladder_of_its_own_seed_and_schedule() -> None:
    """Baselines at 0.5x, 1x, 2x of the growing run's budget (wsd, seed 0) plus decoys of
    another seed and another LR schedule: the in-run crossing uses the equal-compute wsd
    baseline of seed 0, the iso-loss only the seed-0 wsd ladder."""
    ladder = [_run("none", 0.5e12, 1.6), _run("none", 1e12, 1.5), _run("none", 2e12, 1.3)]
    decoys = [_run("none", 1e12, 1.0, seed=1), _run("none", 1e12, 1.0, lr="cosine"),
              _run("none", 4e12, 0.5, lr="cosine")]  # fmt: skip
    grown = _run("two_stage", 1e12, 1.4)
    compare([*decoys, *ladder, grown])
    assert pick_baseline(grown, [*decoys, *ladder]) is ladder[1]
    assert grown.baseline == ladder[1].path
    expected = 1e12 * 2**0.5  # loss 1.4: half-way between 1.5 (1e12) and 1.3 (2e12)
    assert grown.iso_flops == pytest.approx(expected)
    assert grown.iso_saving_pct == pytest.approx(100 * (1 - 1e12 / expected))
    assert f"{expected:.3e}" in markdown([*ladder, grown])


def test_report_says_when_a_run_beats_every_baseline() -> None:
    ladder = [_run("none", 1e12, 1.5), _run("none", 2e12, 1.3)]
    grown = _run("two_stage", 1e12, 1.2)
    compare([*ladder, grown])
    assert grown.iso_flops is None and grown.iso_saving_pct is None
    assert grown.iso_note == "below every baseline's final loss: needs > 2.000e+12"
    assert grown.iso_note in markdown([*ladder, grown])


def test_one_budget_gives_no_iso_loss() -> None:
    base, grown = _run("none", 1e12, 1.5), _run("two_stage", 1e12, 1.4)
    compare([base, grown])
    assert grown.saving_pct is not None and grown.iso_flops is None
    assert grown.iso_note is not None and "2+ budgets" in grown.iso_note
