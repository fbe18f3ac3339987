"""``progrow-plan``: the loss fit on synthetic data, the plan's arithmetic, bad input, and
the command end to end on the built-in data with tiny sizes (pilots, cache, outputs)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import math
import os
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from lit_utils import app_overrides

from progrow import GrowthSchedule, TransformerConfig
from progrow.app import pilots, plan_make
from progrow.app.config_values import CONF_DIR
from progrow.app.plan import main
from progrow.app.planning import (
    Curve,
    envelope,
    envelope_schedule,
    follow,
    insist_schedule,
    step_fractions,
)
from progrow.app.scaling import HeldOut, LossFit, curve_loss, fit_loss, loo_curves, loo_fit
from progrow.app.scaling_kaplan import KaplanFit, fit_kaplan
from progrow.app.scaling_kaplan import warm_start as kaplan_warm_start
from progrow.app.settings import RunSettings, model_config
from progrow.flops import steps_for_budget, train_flops_per_token

os.environ.setdefault("WANDB_MODE", "disabled")

# -- the fit --------------------------------------------------------------------------------

#: Known parameters at the scale of the CPU runs (N ~ 1e4..1e6, D ~ 1e5..1e8).
TRUTH = LossFit(E=1.1, A=60.0, B=450.0, alpha=0.38, beta=0.31)


def _grid(truth: LossFit, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    grid_n, grid_d = np.meshgrid(np.geomspace(1e4, 1e6, 4), np.geomspace(1e5, 1e8, 5))
    n, d = grid_n.ravel(), grid_d.ravel()
    loss = truth.loss(n, d) * np.exp(noise * np.random.default_rng(0).standard_normal(n.size))
    return n, d, loss


def test_fit_recovers_known_parameters() -> None:
    n, d, loss = _grid(TRUTH)
    fit = fit_loss(n, d, loss)
    for key in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, key) == pytest.approx(getattr(TRUTH, key), rel=1e-4), key
    assert fit.points == 20 and fit.objective < 1e-12


def test_fit_with_noise_stays_close_and_predicts_held_out_points() -> None:
    """0.3% multiplicative noise: the exponents within 0.03, predictions within 1%."""
    n, d, loss = _grid(TRUTH, noise=0.003)
    fit = fit_loss(n, d, loss)
    assert abs(fit.alpha - TRUTH.alpha) < 0.03 and abs(fit.beta - TRUTH.beta) < 0.03
    assert abs(fit.E / TRUTH.E - 1) < 0.1
    far = np.array([2e6]), np.array([3e8])  # beyond the data, as a plan's budget is
    assert fit.loss(*far) == pytest.approx(TRUTH.loss(*far), rel=0.01)
    held = loo_fit(n, d, loss, fit)
    assert len(held.predicted) == 20 and held.rmse < 0.02, held.to_dict()


def test_loo_is_exact_on_exact_data_and_needs_six_points() -> None:
    n, d, loss = _grid(TRUTH)
    assert loo_fit(n[:8], d[:8], loss[:8]).max_abs < 1e-3
    assert loo_fit(n[:5], d[:5], loss[:5]).predicted == []


@pytest.mark.parametrize(
    ("n", "d", "loss", "match"),
    [
        ([1e4] * 4, [1e5] * 4, [2.0] * 4, "needs at least 5"),
        ([1e4, -1, 1e4, 1e4, 1e4], [1e5] * 5, [2.0] * 5, "must be positive"),
        ([1e4] * 5, [1e5] * 5, [2.0] * 4, "differ in length"),
    ],
)
def test_fit_refuses_bad_points(
    n: list[float], d: list[float], loss: list[float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        fit_loss(n, d, loss)


def test_optimal_params_is_the_minimum_along_6nd() -> None:
    flops = 1e14
    n_star = TRUTH.optimal_params(flops)
    around = [TRUTH.loss(n, flops / (6 * n)) for n in (n_star / 1.2, n_star, n_star * 1.2)]
    assert around[1] < around[0] and around[1] < around[2]


#: The interaction form at the same scale: the gap between sizes opens with the tokens.
KAPLAN = KaplanFit(E=1.0, Nc=3e4, Dc=4e5, alpha_n=0.45, alpha_d=0.28)


def test_kaplan_fit_recovers_known_parameters_and_with_noise_predicts_beyond() -> None:
    n, d, loss = _grid(KAPLAN)  # type: ignore[arg-type]
    fit = fit_kaplan(n, d, loss)
    for key in ("E", "Nc", "Dc", "alpha_n", "alpha_d"):
        assert getattr(fit, key) == pytest.approx(getattr(KAPLAN, key), rel=1e-3), key
    noisy = fit_kaplan(*_grid(KAPLAN, noise=0.003))  # type: ignore[arg-type]
    far = np.array([2e6]), np.array([3e8])
    assert noisy.loss(*far) == pytest.approx(KAPLAN.loss(*far), rel=0.01)
    held = loo_fit(n, d, loss, fit, fit=fit_kaplan, warm=kaplan_warm_start)
    assert len(held.predicted) == 20 and held.max_abs < 1e-3, held.to_dict()
    with pytest.raises(ValueError, match="needs at least 5"):
        fit_kaplan(n[:4], d[:4], loss[:4])


def test_kaplan_gap_between_sizes_opens_with_the_tokens_and_inverts_exactly() -> None:
    """What sets the form apart from the additive one, and what the planner uses of it:
    the loss a size reaches after ``tokens_for_loss`` tokens, the limit with endless data,
    and the optimum along C = 6ND."""
    small, big = 5e4, 5e5
    gaps = [KAPLAN.parameters_effect(small, big, d) for d in (1e5, 1e6, 1e7, 1e8)]
    assert all(a < b for a, b in itertools.pairwise(gaps)), gaps
    assert TRUTH.parameters_effect(small, big, 1e5) == pytest.approx(
        TRUTH.parameters_effect(small, big, 1e8)
    )
    for n_, d_ in ((5e4, 3e6), (5e5, 2e7)):
        assert KAPLAN.tokens_for_loss(n_, KAPLAN.loss(n_, d_)) == pytest.approx(d_, rel=1e-9)
    assert KAPLAN.tokens_for_loss(small, KAPLAN.limit(small)) == math.inf
    flops = 1e14
    n_star = KAPLAN.optimal_params(flops)
    around = [KAPLAN.loss(n, flops / (6 * n)) for n in (n_star / 1.2, n_star, n_star * 1.2)]
    assert around[1] < around[0] and around[1] < around[2]


def test_per_size_curves_interpolate_in_log_flops() -> None:
    line = [(f, 5.0 - 0.5 * math.log(f)) for f in (1e6, 4e6, 1.6e7)]
    assert curve_loss(line, 2e6) == pytest.approx(5.0 - 0.5 * math.log(2e6))
    assert curve_loss(line, 1e8) == pytest.approx(5.0 - 0.5 * math.log(1e8))  # extrapolated
    held = loo_curves({"a": line, "b": line[:2]})
    assert held["a"].max_abs == pytest.approx(0.0, abs=1e-9) and len(held["a"].predicted) == 3
    assert held["b"].predicted == []  # one point left: no line through it


# -- the plan's arithmetic ----------------------------------------------------------------

SEQ, TOKENS = 128, 16 * 128
#: A fit under which this family's envelope runs through all three sizes by 1000 target
#: steps (growths at about 23% and 67% of the steps) and stays at the start at 20.
PLAN_FIT = LossFit(E=0.9, A=120.0, B=80.0, alpha=0.36, beta=0.3)
FAMILY = [
    TransformerConfig(
        vocab_size=256,
        max_seq_len=SEQ,
        d_model=h,
        d_mlp=4 * h,
        n_heads=e,
        d_qk=h // e,
        d_v=h // e,
        n_layers=n,
    )
    for h, e, n in ((64, 2, 2), (96, 3, 3), (128, 4, 4))
]
CURVES = [
    Curve(f"s{i}", c.num_params(), train_flops_per_token(c, SEQ)) for i, c in enumerate(FAMILY)
]
STEP = [c.flops_per_token * TOKENS for c in CURVES]
TARGET_STEP = STEP[-1]


def test_the_envelope_schedule_grows_at_crossings_and_ends_on_the_envelope() -> None:
    budget = 1000 * TARGET_STEP
    plan = envelope_schedule(PLAN_FIT, CURVES, budget, STEP, latest=0.8)
    assert plan.start == 0 and [j for _, j in plan.stages] == [1, 2]
    for (flops, j), before in zip(plan.stages, plan.path(), strict=False):
        assert CURVES[j].loss(PLAN_FIT, flops) == pytest.approx(
            CURVES[before].loss(PLAN_FIT, flops)
        )
        assert CURVES[j].loss(PLAN_FIT, flops * 1.1) < CURVES[before].loss(PLAN_FIT, flops * 1.1)
    best = min(c.loss(PLAN_FIT, budget) for c in CURVES)
    assert plan.loss == pytest.approx(best, rel=1e-9)
    assert envelope(PLAN_FIT, CURVES, [budget])[0][1] == pytest.approx(best)


def test_the_plan_follows_the_interaction_form_and_warns_when_the_forms_disagree() -> None:
    """The planner's arithmetic takes either form; the plan warns, naming both sizes,
    when the form it follows and the other rank the sizes differently at the budget."""
    budget = 3000 * TARGET_STEP
    plan = envelope_schedule(KAPLAN, CURVES, budget, STEP, latest=0.8)
    assert plan.start == 0 and [j for _, j in plan.stages] == [1]
    assert plan.loss == pytest.approx(min(c.loss(KAPLAN, budget) for c in CURVES), rel=1e-9)
    results = [
        pilots.Result(c.label, {}, int(c.params), f, f / c.flops_per_token,
                      float(KAPLAN.loss(c.params, f / c.flops_per_token)), "x")
        for c in CURVES for f in (budget / 100, budget / 30)
    ]  # fmt: skip
    held = HeldOut((0.01,) * len(results))
    models = {"fit": KAPLAN, "other": PLAN_FIT, "loo": held, "curves_loo": held}
    choice = plan_make._model_choice(models, CURVES, budget, results, theirs="s2")
    assert choice["used"] == "kaplan"
    assert "the kaplan form picks s1 at the budget, the chinchilla form s2" in choice["warning"]
    assert plan_make._best(PLAN_FIT, CURVES, budget) == "s2"  # what the plan passes as theirs
    agreed = plan_make._model_choice(models, CURVES, budget, results, theirs="s1")["warning"]
    assert "form picks" not in (agreed or "")


def test_the_plan_warns_when_the_smallest_size_wins_the_largest_pilot_budget() -> None:
    """Every recorded plan that picked too small a size had its largest iso-FLOP slice of
    pilots won by the smallest size in it; the plan says so, naming the size."""
    budget = 3000 * TARGET_STEP
    held = HeldOut((0.01,) * 6)
    models = {"fit": KAPLAN, "other": PLAN_FIT, "loo": held, "curves_loo": held}

    def runs(losses: dict[str, float]) -> list[pilots.Result]:
        return [
            pilots.Result(c.label, {}, int(c.params), f, f / c.flops_per_token,
                          losses[c.label] + (0.5 if f < budget / 50 else 0.0), "x")
            for c in CURVES for f in (budget / 100, budget / 30)
        ]  # fmt: skip

    small_wins = runs({"s0": 2.0, "s1": 2.1, "s2": 2.2})
    warning = plan_make._model_choice(models, CURVES, budget, small_wins, "s1")["warning"]
    assert f"at the largest pilot budget ({budget / 30:.3g} FLOPs)" in warning
    assert "the smallest size run there (s0) ended lowest" in warning
    larger_wins = runs({"s0": 2.1, "s1": 2.0, "s2": 2.2})
    warning = plan_make._model_choice(models, CURVES, budget, larger_wins, "s1")["warning"]
    assert "ended lowest" not in (warning or "")


def test_step_fractions_spend_the_budget_as_the_app_sizes_it() -> None:
    """The growth config's fractions, run with budget.steps of the end size, give the app
    (progrow.flops.steps_for_budget) the planned number of steps: the planned FLOPs."""
    budget = 1000 * TARGET_STEP
    plan = envelope_schedule(PLAN_FIT, CURVES, budget, STEP, latest=0.8)
    fractions, steps = step_fractions(plan, STEP, budget)
    stages = [
        {"step": f, **FAMILY[j].sizes()} for f, (_, j) in zip(fractions, plan.stages, strict=True)
    ]
    got = steps_for_budget(FAMILY[plan.start], stages, budget, TOKENS, SEQ)
    assert got == pytest.approx(steps, abs=1)
    assert all(f <= 0.8 for f in fractions) and fractions == sorted(fractions)


def test_a_short_budget_stays_small_and_insisting_costs_but_beats_the_fixed_target() -> None:
    budget = 20 * TARGET_STEP
    natural = envelope_schedule(PLAN_FIT, CURVES, budget, STEP, latest=0.8)
    assert natural.end == 0 and not natural.stages
    insist = insist_schedule(PLAN_FIT, CURVES, budget, STEP, 0.8, natural, target=2)
    assert insist.end == 2 and len(insist.stages) == 1
    assert insist.loss > natural.loss  # the cost of insisting on an oversized target
    assert insist.loss < CURVES[2].loss(PLAN_FIT, budget)  # but growing beats training it
    assert max(step_fractions(insist, STEP, budget)[0]) <= 0.8
    assert follow(PLAN_FIT, CURVES, insist, budget)[0] == pytest.approx(insist.loss)


# -- the command ------------------------------------------------------------------------------

START = "{d_model: 8, d_mlp: 16, n_heads: 2, d_qk: 4, d_v: 4, n_layers: 1}"
TARGET = "{d_model: 24, d_mlp: 48, n_heads: 2, d_qk: 8, d_v: 8, n_layers: 2}"


def _overrides(cache: Path) -> list[str]:
    """The data and optimizer settings of a few-second app run (seq 16, batch 4)."""
    return [o for o in app_overrides(cache) if o.startswith(("data.", "optim."))]


def _argv(
    root: Path, *extra: str, budget: tuple[str, str] = ("--budget-steps", "600")
) -> list[str]:
    return [
        "--sizes", START, TARGET, "--intermediates", "1", *budget,
        "--pilot-fraction", "0.15", "--pilot-ratio", "2", "--min-pilot-steps", "4",
        "--pilot-budgets", "3", "--scouts", "0", "--pilot-tokens-per-param", "0,inf",
        "--in-process", "--insist-target", "--name", "tiny_plan",
        "--cache", str(root / "pilots"), "--out", str(root / "out"),
        "--conf-dir", str(root / "conf"), *extra, *_overrides(root / "data"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The command run twice: pilots the first time, from the cache the second."""
    root = tmp_path_factory.mktemp("plan")
    out: dict[str, Any] = {"root": root}
    for run in ("first", "second"):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            out[f"{run}_rc"] = main(_argv(root))
        out[run] = buffer.getvalue()
        out[f"{run}_plan"] = json.loads((root / "out" / "plan.json").read_text())
        out[f"{run}_folders"] = sorted(p.name for p in (root / "pilots").iterdir())
    return out


def test_plan_prints_the_recommendation_and_writes_a_runnable_schedule(
    planned: dict[str, Any],
) -> None:
    assert planned["first_rc"] == 0, planned["first"]
    lines = planned["first"].splitlines()
    rec = [ln for ln in lines if ln.startswith("recommendation: ")]
    assert len(rec) == 1, lines
    # --insist-target: the schedule ends at the target, from a smaller size of the family
    grows = r"recommendation: grow with this schedule: (size1|interp1) -> size2 at "
    assert re.match(grows, rec[0]), rec[0]
    assert "pilots used 15.0% of the budget" in rec[0]
    for part in ("(a) compute-optimal fixed size:", "(b) target size2", "(c) envelope:",
                 "(d) schedule on the envelope:", "fit (kaplan): L = ",
                 "check (chinchilla): L = ", "leave-one-out error: kaplan rmse"):  # fmt: skip
        assert any(ln.startswith(part) for ln in lines), part
    root = planned["root"]
    path = root / "conf" / "growth" / "tiny_plan.yaml"
    written = yaml.safe_load(path.read_text())
    assert written["name"] == "tiny_plan" and written["stages"]
    plan = planned["first_plan"]
    begin = next(f for f in plan["family"] if f["label"] == plan["insist"]["start"])
    start = TransformerConfig(vocab_size=256, max_seq_len=16, **yaml.safe_load(START))
    start = start.replace(**begin["dims"])
    schedule = GrowthSchedule(written["stages"], max_steps=plan["insist"]["max_steps"])
    end = schedule.validate_for(start, plan["insist"]["max_steps"])
    assert end.sizes() == {**start.sizes(), **yaml.safe_load(TARGET), "n_kv_heads": 2}
    # as printed: Hydra finds growth=tiny_plan in --conf-dir, the app accepts it
    command = next(ln for ln in lines if ln.startswith("run: ")).removeprefix("run: ")
    args = shlex.split(command)
    assert args[:5] == [
        "python",
        "-m",
        "progrow.train",
        "--config-dir",
        str((root / "conf").resolve()),
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*args[5:], f"hydra.searchpath=[file://{args[4]}]"])
    cfg.paths.output_dir = str(root / "unused")
    settings = RunSettings.from_config(cfg)
    assert settings.growth.name == "tiny_plan" and settings.budget_steps == 600
    settings.growth.schedule.validate_for(model_config(settings, 256, 16))


def test_plan_json_has_the_fit_the_plan_and_the_pilots(planned: dict[str, Any]) -> None:
    plan = planned["first_plan"]
    for key in ("budget", "family", "pilots", "fit", "curves_loo", "model", "compute_optimal",
                "target", "envelope", "schedule", "insist", "recommendation", "plot"):  # fmt: skip
        assert key in plan, key
    assert [s["label"] for s in plan["family"]] == ["size1", "interp1", "size2"]
    assert plan["budget"]["target_steps"] == pytest.approx(600)
    pilots_ = plan["pilots"]
    assert pilots_["count"] == 9 and pilots_["ran"] == 9 and pilots_["source"] == "pilots"
    assert pilots_["fraction"] == pytest.approx(0.15, rel=0.05)
    fit = plan["fit"]
    assert fit["form"] == "kaplan"  # the default form; the additive one is the check
    assert all(math.isfinite(fit[k]) and fit[k] > 0 for k in ("E", "Nc", "Dc"))
    assert fit["loo"]["predicted"] == 9 and math.isfinite(fit["loo"]["rmse"])
    other = plan["other_form"]
    assert other["form"] == "chinchilla" and other["loo"]["predicted"] == 9
    assert all(math.isfinite(other[k]) and other[k] > 0 for k in ("E", "A", "B"))
    assert other["best_at_budget"] in {"size1", "interp1", "size2"}
    assert plan["model"]["used"] == "kaplan"
    assert plan["recommendation"]["kind"] == "grow"
    assert plan["insist"]["end"] == "size2" and plan["target"]["label"] == "size2"
    assert plan["insist"]["loss"] < plan["target"]["loss"]
    png = Path(plan["plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.parent == Path(plan["json"]).parent


def test_a_second_invocation_runs_no_pilot(planned: dict[str, Any]) -> None:
    assert planned["second_rc"] == 0
    assert "(9 cached, 0 to run)" in planned["second"]
    assert planned["second_plan"]["pilots"]["ran"] == 0
    assert planned["second_folders"] == planned["first_folders"]  # no new run folder
    assert not any(".failed-" in name for name in planned["second_folders"])
    assert planned["second_plan"]["insist"] == planned["first_plan"]["insist"]


def test_runs_given_instead_of_pilots(
    planned: dict[str, Any], capsys: pytest.CaptureFixture
) -> None:
    root = planned["root"]
    out = root / "from_runs"
    rc = main(_argv(root, "--runs", str(root / "pilots"), "--out", str(out), "--name", "from_runs"))
    assert rc == 0, capsys.readouterr().err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["pilots"]["source"] == "--runs" and plan["pilots"]["count"] == 9
    assert {r["label"] for r in plan["pilots"]["runs"]} == {"size1", "interp1", "size2"}
    assert plan["fit"]["E"] == pytest.approx(planned["first_plan"]["fit"]["E"], rel=1e-6)


def test_a_subprocess_pilot_equals_the_in_process_one(
    planned: dict[str, Any], tmp_path: Path
) -> None:
    """The default launcher (one ``python -m progrow.train`` per pilot) ends where the
    in-process one did: same job, same final loss and FLOPs."""
    from progrow.app.family import build_family, recipe

    root = planned["root"]
    rec = recipe(_overrides(root / "data"), None)
    family = build_family([START, TARGET], None, 1, rec)
    ladder = pilots.LadderSettings(
        fraction=0.15, budgets=3, ratio=2, min_steps=4, tokens_per_param=(0, math.inf)
    )
    budget = planned["first_plan"]["budget"]["flops"]
    jobs = pilots.plan_pilots(family, budget, rec, root / "pilots", ladder)
    job = next(j for j in jobs if j.size.label == "size2")  # the target's shortest pilot
    cached = pilots.read_run(job.folder, "size2")
    assert cached is not None, "the planner ran this very job"
    moved = dataclasses.replace(job, folder=tmp_path / job.folder.name)
    pilots._subprocess(moved, tmp_path / "pilot.log")
    again = pilots.read_run(moved.folder, "size2")
    assert again is not None, (tmp_path / "pilot.log").read_text()[-2000:]
    assert again.val_loss == pytest.approx(cached.val_loss, abs=1e-6)
    assert again.flops == cached.flops == pytest.approx(job.flops)


# -- bad input ------------------------------------------------------------------------------


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("progrow-plan: error: ") and err.count("\n") == 1, err
    return err


def test_a_budget_below_the_pilots_compute_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    err = _error(capsys, _argv(tmp_path, budget=("--budget-steps", "10")))
    assert "--budget-steps=10" in err and "too small for the pilots" in err
    err = _error(capsys, _argv(tmp_path, budget=("--budget", "1e5")))
    assert "--budget=100000: too small for the pilots" in err
    assert not (tmp_path / "pilots").exists(), "refused before any pilot ran"


def test_a_budget_below_the_given_runs_is_refused_naming_it(
    planned: dict[str, Any], capsys: pytest.CaptureFixture
) -> None:
    root = planned["root"]
    argv = _argv(root, "--runs", str(root / "pilots"), budget=("--budget", "1e6"))
    err = _error(capsys, argv)
    assert "--budget=1e+06" in err and "not above the compute of the runs given" in err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (["--pilot-fraction", "2"], "--pilot-fraction=2: must be a number in (0, 1]"),
        (["--jobs", "0"], "--jobs=0: must be an integer in [1, inf]"),
        (["--jobs", "2"], "--jobs=2: --in-process runs one pilot at a time"),
        (["--budget", "1e12"], "give the budget as --budget FLOPS or --budget-steps N"),
        (["--name", "../x"], "--name=../x: use letters"),
        (["--sizes", "no_such_model", TARGET], "--sizes no_such_model: no model config"),
        (["--sizes", "{d_model: 0}", TARGET], "sizes must be positive integers"),
        (["--sizes", START, "{d_model: 24, d_mlp: 8}"], "growth never shrinks a dimension"),
        (["--growth", "no_such_schedule"], "--growth no_such_schedule: no schedule"),
        (["model.d_model=16"], "'model.d_model=16': progrow-plan sets model itself"),
        (["budget.steps=5"], "'budget.steps=5': progrow-plan sets budget itself"),
        (["optim.lr=-1"], "optim: optim.lr must be > 0, got -1"),
        (["optim.lrr=1"], "optim.lrr: no such key in the config; did you mean optim.lr?"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture, change: list[str], expected: str
) -> None:
    err = _error(capsys, [*_argv(tmp_path), *change])
    assert expected in err
    assert not (tmp_path / "pilots").exists()


def test_a_summary_of_another_schema_is_refused_naming_the_file(tmp_path: Path) -> None:
    """A pilot (or --runs folder) whose summary.json an earlier progrow wrote (no schema)
    is refused with one message naming it, not read with guessed keys."""
    run = tmp_path / "old_pilot"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"val_loss": 2.0, "flops": 1e9}))
    with pytest.raises(pilots.PlanError, match=rf"{run / 'summary.json'}: no 'schema' key"):
        pilots.read_run(run)
    with pytest.raises(pilots.PlanError, match="delete its folder"):
        pilots.read_runs([str(tmp_path)])


def test_per_size_error_with_two_pilots_per_size_says_why_there_is_none() -> None:
    """--pilot-budgets 2 leaves no pilot of a size's curve to hold out: the line says so
    instead of printing nan."""
    from progrow.app.plan_report import _curves_error

    none = {"rmse": math.nan, "max_abs": math.nan, "predicted": 0}
    assert _curves_error(none).startswith("not computable (a size needs 3 pilots")
    some = {"rmse": 0.01, "max_abs": 0.02, "predicted": 6}
    assert _curves_error(some) == "rmse 0.0100 (max 0.0200, 6 runs)"


# -- the ladder: an iso-FLOP slice per rung, in a window of tokens per parameter ----------


def _ladder_case() -> tuple[list[float], list[float], int, float]:
    """Sizes of 1k to 16k parameters (doubling), 100 tokens per step, 6 FLOPs per
    parameter and token; a budget of 3000 steps of the largest."""
    params = [1e3 * 2**i for i in range(5)]
    tokens_per_step = 100
    step = [6 * p * tokens_per_step for p in params]
    return params, step, tokens_per_step, 3000 * step[-1]


def test_the_ladder_keeps_each_pilot_in_the_window_and_spends_the_share() -> None:
    params, step, tps, budget = _ladder_case()
    ladder = pilots.LadderSettings(fraction=0.15, budgets=4, ratio=3, min_steps=20)
    rungs = pilots.ladder_rungs(step, params, tps, budget, ladder)
    assert len(rungs) == 4
    assert [b.flops / a.flops for a, b in itertools.pairwise(rungs)] == pytest.approx([3] * 3)
    seen = set()
    for rung in rungs:
        for i in rung.sizes:
            steps = round(rung.flops / step[i])
            assert steps >= 20 and 3 <= steps * tps / params[i] <= 100, (rung, i)
            seen.add((rung.flops, i))
    # the window bites: the largest size is not at the lowest rung, the smallest not at the top
    assert 4 not in rungs[0].sizes and 0 not in rungs[-1].sizes
    # and every size inside it at a rung runs there
    for rung in rungs:
        inside = {i for i in range(5) if 3 <= rung.flops / step[i] * tps / params[i] <= 100}
        assert set(rung.sizes) == {i for i in inside if round(rung.flops / step[i]) >= 20}
    # within the share, and the highest such ladder: 1% higher rungs would spend more
    # (a size enters the window there), so it spends what it can, not always all of it
    cost = sum(r.flops * len(r.sizes) for r in rungs)
    assert 0.5 * 0.15 * budget < cost <= 0.15 * budget * (1 + 1e-9)
    higher = pilots._rungs(rungs[0].flops * 1.01, step, params, tps, ladder)
    assert sum(r.flops * len(r.sizes) for r in higher) > 0.15 * budget
    # no window, 10x the budget (the largest size's lowest rung then has 20 steps or
    # more): every size at every rung, spending exactly the share
    everyone = dataclasses.replace(ladder, tokens_per_param=(0, math.inf))
    rungs = pilots.ladder_rungs(step, params, tps, 10 * budget, everyone)
    assert all(r.sizes == (0, 1, 2, 3, 4) for r in rungs)
    assert sum(r.flops * 5 for r in rungs) == pytest.approx(1.5 * budget, rel=1e-6)


def test_a_ladder_without_five_pilots_in_the_window_is_refused_naming_the_budget() -> None:
    params, step, tps, _ = _ladder_case()
    ladder = pilots.LadderSettings(fraction=0.1, budgets=4, min_steps=20)
    with pytest.raises(pilots.PlanError) as err:
        pilots.ladder_rungs(step, params, tps, 20 * step[-1], ladder, "--budget-steps=20")
    text = str(err.value)
    assert text.startswith("--budget-steps=20: too small for the pilots within")
    assert "between 3 and 100 tokens per parameter (--pilot-tokens-per-param)" in text


def test_scouts_halve_the_parameters_below_the_start_and_grow_into_it(tmp_path: Path) -> None:
    from progrow.app import family as fam

    rec = fam.recipe(_overrides(tmp_path / "data"), None)
    start = fam.build_family([START, TARGET], None, 0, rec)[0]
    scouts = fam.scouts(start, 3, rec)
    assert [s.label for s in scouts] == ["scout1", "scout2", "scout3"]
    chain = [*reversed(scouts), start]
    fam._check_growable(chain)  # each grows into the next, the last into the start
    for small, big in itertools.pairwise(chain):
        assert 0.3 < small.params / big.params < 0.8, (small.dims, big.dims)
        assert small.dims["n_heads"] == big.dims["n_heads"]
        assert small.dims["n_layers"] == big.dims["n_layers"]
    assert scouts[0].dims["d_model"] == round(8 / math.sqrt(2))
    # nothing left to shrink: no scout
    floor = fam.build_family(
        ["{d_model: 2, d_mlp: 2, n_heads: 1, d_qk: 2, d_v: 2, n_layers: 1}", TARGET], None, 0, rec
    )[0]
    assert fam.scouts(floor, 2, rec) == []


def test_the_default_ladder_runs_scouts_in_the_window_and_recommends_a_family_size(
    tmp_path: Path,
) -> None:
    """The command with no ladder flag at all: scouts below the start run as pilots
    (fit data, never recommended), every pilot inside the default window of 3 to 100
    tokens per parameter, 10% of the budget."""
    data = [o for o in _overrides(tmp_path / "data") if not o.startswith("data.batch_size")]
    argv = [
        "--sizes", START, TARGET, "--budget-steps", "1000", "--in-process",
        "--cache", str(tmp_path / "pilots"), "--out", str(tmp_path / "out"),
        "--conf-dir", str(tmp_path / "conf"), *data, "data.batch_size=32",
    ]  # fmt: skip
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0, buffer.getvalue()
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    runs = plan["pilots"]["runs"]
    family = {f["label"] for f in plan["family"]}
    scouts = [r for r in runs if r["label"].startswith("scout")]
    assert {r["label"] for r in scouts} == {"scout1", "scout2", "scout3"}
    assert not any(r["in_family"] for r in scouts)
    assert all(r["in_family"] for r in runs if r not in scouts)
    assert {r["label"] for r in runs} - {r["label"] for r in scouts} <= family
    assert all(3 <= r["tokens"] / r["params"] <= 100 for r in runs), runs
    assert plan["pilots"]["fraction"] == pytest.approx(0.1, rel=0.05)
    assert plan["compute_optimal"]["label"] in family
    assert plan["recommendation"]["kind"] in {"grow", "fixed"}
    assert "scout" in buffer.getvalue().split("\n")[0]  # the family line names them
