"""Growth at a larger target (0.87M parameters): the tables of experiments/README.md,
section "Growth at 0.87M parameters".

    python experiments/scale.py --budget long     # runs what the table needs, writes it
    python experiments/scale.py --budget short
    python experiments/scale.py --budget long --table-only   # rewrite from finished runs

The target is ``model=scale_target`` (d_model 128, d_mlp 512, 4 heads, d_qk = d_v = 32,
4 layers); growing runs start at ``model=scale_start`` (half of every width, 2 layers:
1/7 of the parameters) and follow ``growth=scale_{early,two_stage,late}``. Every growing
run spends the training FLOPs of ``--budget`` steps of the target (batch 16 x 128
tokens). Fixed-size baselines of the target run at several budgets, each with its own LR
schedule over its own length, so that the saving can be read two ways (see
:mod:`progrow.app.isoloss`): the in-run crossing of the equal-budget baseline's final
loss, and the baseline compute needed to reach the growing run's final loss
(iso-loss, interpolated in log-FLOPs between baselines of the same LR schedule and seed).

Selection flags (``--lrs``, ``--seeds``, ``--schedules``, ``--placements``, ``--runs``)
run a subset; the table always shows every run that has finished. Jobs are cached per
folder under ``experiments/runs/scale/`` like experiments/run.py's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import RESULTS, RUNS, mean_sd, pct, run_all  # the sibling runner's job cache

from progrow.app.isoloss import iso_loss_flops
from progrow.app.report_compare import crossing, summarize
from progrow.app.report_plot import plot
from progrow.app.runs import RunSummary

#: budget name -> steps of the target whose training FLOPs every run of the table spends.
BUDGETS = {"short": 1000, "long": 3000}
#: Target-size baselines, in target steps; each table uses those within 0.5x-1.5x of its
#: budget (the long table: 1500..4500, the short one: 500..1500 plus 2000 and 3000).
BASELINE_STEPS = (500, 1000, 1500, 2000, 3000, 4500)
SCHEDULES = ("two_stage", "early", "late")
#: schedule -> when its two stages fire (fractions of the run's steps): first to
#: 96/384/3 heads/24/24/3 layers, then to the target.
SCHEDULE_TEXT = {"two_stage": "0.2 and 0.45", "early": "0.1 and 0.25", "late": "0.35 and 0.65"}
#: placement -> overrides: where the expansions put their factors / how new entries start.
#: Each pins every option it is about, so a later change of the app's defaults does not
#: change what a cached folder name means.
_FLAT_LR = "growth.lr_width_exponent=0"
PLACEMENTS = {
    "readers": ["growth.hidden_factor_at=readers", _FLAT_LR],
    "gains": ["growth.hidden_factor_at=gains", _FLAT_LR],
    "split": ["growth.hidden_factor_at=readers", "growth.init=split", _FLAT_LR],
    # readers, with the narrow early sizes at (128 / d_model) times the scheduled LR.
    "lrwidth": ["growth.hidden_factor_at=readers", "growth.lr_width_exponent=1.0"],
}
#: placement -> what its rows mean (the table's legend).
PLACEMENT_TEXT = {
    "readers": "the hidden factor on the readers, new entries zero, the scheduled LR at every size",
    "gains": "as readers, with the hidden factor on the norm gains (the paper's placement)",
    "split": "readers, with `init=split` (no zero blocks: copied units, split outputs)",
    "lrwidth": "readers, with the narrow sizes at (128 / d_model) times the scheduled LR "
    "(`growth.lr_width_exponent=1`)",
}
LRS = ("wsd", "cosine")
LR_TEXT = {
    "wsd": "warmup, constant, linear decay over the last 20%",
    "cosine": "warmup, cosine decay over the run",
}
VAL_EVERY = 100


def lr_dir(lr: str) -> Path:
    return RUNS / "scale" / lr


def common(lr: str, seed: int, steps: int) -> list[str]:
    return [
        f"optim.schedule={lr}",
        f"seed={seed}",
        f"budget.steps={steps}",
        "budget.model=null",
        f"trainer.val_check_interval={VAL_EVERY}",
    ]


def baseline_job(lr: str, seed: int, steps: int) -> tuple[Path, list[str]]:
    overrides = ["model=scale_target", "growth=none", *common(lr, seed, steps)]
    return lr_dir(lr) / f"base_{steps}_s{seed}", overrides


def growth_job(
    budget: str, lr: str, seed: int, schedule: str, placement: str
) -> tuple[Path, list[str]]:
    overrides = [
        "model=scale_start",
        f"growth=scale_{schedule}",
        *PLACEMENTS[placement],
        *common(lr, seed, BUDGETS[budget]),
    ]
    return lr_dir(lr) / f"{budget}_{schedule}_{placement}_s{seed}", overrides


def start_job(budget: str, lr: str, seed: int) -> tuple[Path, list[str]]:
    """The start size trained at the same FLOPs without growing: a reference point."""
    target = "{d_model: 128, d_mlp: 512, n_heads: 4, d_qk: 32, d_v: 32, n_layers: 4}"
    overrides = [
        "model=scale_start",
        "growth=none",
        *common(lr, seed, BUDGETS[budget]),
        f"budget.model={target}",  # the FLOPs of the target's steps, not the start size's
    ]
    return lr_dir(lr) / f"{budget}_start_s{seed}", overrides


#: budget -> the baselines its table interpolates between (the short budget's growing runs
#: may reach losses the 1x baseline needs 2-3x the compute for).
BASELINES = {"short": (500, 1000, 1500, 2000, 3000), "long": (1500, 2000, 3000, 4500)}


def select_jobs(args: argparse.Namespace) -> dict[Path, list[str]]:
    """The jobs of ``args.budget``'s table that the selection flags keep, most important
    first: the equal-budget baseline and the main growth schedule of every seed and LR
    schedule, then the other baselines, then the other schedules and placements."""
    budget = args.budget
    ordered: list[tuple[Path, list[str]]] = []
    steps = BUDGETS[budget]
    for seed in args.seeds:
        for lr in args.lrs:
            if "baselines" in args.runs:
                ordered.append(baseline_job(lr, seed, steps))
            if "growth" in args.runs and SCHEDULES[0] in args.schedules:
                ordered += [
                    growth_job(budget, lr, seed, SCHEDULES[0], p)
                    for p in args.placements
                    if p == "readers"
                ]
    for seed in args.seeds:
        for lr in args.lrs:
            if "baselines" in args.runs:
                ordered += [baseline_job(lr, seed, s) for s in BASELINES[budget] if s != steps]
            if "growth" in args.runs:
                ordered += [
                    growth_job(budget, lr, seed, schedule, p)
                    for schedule in args.schedules
                    for p in args.placements
                ]
            if "start" in args.runs:
                ordered.append(start_job(budget, lr, seed))
    return dict(ordered)  # later duplicates keep the first position


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--lrs", nargs="+", choices=LRS, default=list(LRS))
    parser.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES))
    parser.add_argument("--placements", nargs="+", choices=sorted(PLACEMENTS),
                        default=list(PLACEMENTS))  # fmt: skip
    parser.add_argument("--runs", nargs="+", choices=["baselines", "growth", "start"],
                        default=["baselines", "growth", "start"])  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time")
    parser.add_argument("--table-only", action="store_true", help="run nothing")
    parser.add_argument(
        "--lr-check", action="store_true", help="instead: the WSD baseline at other peak LRs"
    )
    args = parser.parse_args()
    if args.lr_check:
        lr_check(args.budget, args.seeds, args.jobs, run=not args.table_only)
        return
    if not args.table_only:
        jobs = select_jobs(args)
        print(f"{len(jobs)} jobs ({sum((p / 'summary.json').is_file() for p in jobs)} done)")
        run_all(jobs, args.jobs)
    write_table(args.budget)


#: Peak learning rates of the LR check, besides the app's 3e-3 that every table uses.
CHECK_LRS = ("1.5e-3", "6e-3")


def lr_check(budget: str, seeds: list[int], parallel: int, *, run: bool) -> None:
    """Is the tables' peak LR (3e-3) a fair one for the target? The equal-budget WSD
    baseline at half and twice that LR; writes experiments/results/scale_lr_check_<budget>.md."""
    steps = BUDGETS[budget]

    def folder(peak: str, seed: int) -> Path:
        return RUNS / "scale" / "lr_check" / f"base_{steps}_lr{peak}_s{seed}"

    jobs = {
        folder(peak, seed): [*baseline_job("wsd", seed, steps)[1], f"optim.lr={peak}"]
        for seed in seeds
        for peak in CHECK_LRS
    }
    if run:
        run_all(jobs, parallel)
    lines = [
        f"The fixed target at the **{budget}** budget ({steps} steps, WSD) by peak learning "
        "rate; every table uses 3e-3.",
        "",
        "| peak LR | seed | final val loss |",
        "|---|---|---|",
    ]
    for seed in seeds:
        found = {"3e-3": baseline_job("wsd", seed, steps)[0]}
        found |= {peak: folder(peak, seed) for peak in CHECK_LRS}
        for peak, path in sorted(found.items(), key=lambda kv: float(kv[0])):
            summary = path / "summary.json"
            if summary.is_file():
                loss = json.loads(summary.read_text())["val_loss"]
                lines.append(f"| {peak} | {seed} | {loss:.4f} |")
    (RESULTS / f"scale_lr_check_{budget}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _label(name: str) -> str:
    """Row label of a run folder name without its seed (``long_two_stage_readers``)."""
    stem = name.rsplit("_s", 1)[0]
    if stem.startswith("base_"):
        return f"fixed target, {stem[5:]} steps"
    if stem.endswith("_start"):
        return "fixed start size (reference)"
    schedule, _, placement = stem.split("_", 1)[1].rpartition("_")
    return f"grow {schedule}, {placement}"


def _order(folder: Path) -> tuple[int, int, int, str]:
    """Table order: baselines by budget, the start-size reference, then the growing runs
    by schedule and placement (as listed in SCHEDULES and PLACEMENTS)."""
    stem = folder.name.rsplit("_s", 1)[0]
    if stem.startswith("base_"):
        return 0, int(stem[5:]), 0, folder.name
    if stem.endswith("_start"):
        return 1, 0, 0, folder.name
    schedule, _, placement = stem.split("_", 1)[1].rpartition("_")
    known = list(PLACEMENTS)
    return 2, SCHEDULES.index(schedule), known.index(placement), folder.name


def _point(run: RunSummary) -> tuple[float, float]:
    """``(FLOPs, final val loss)`` of a finished run (both logged by every job)."""
    if run.flops is None or run.final_val_loss is None:
        raise RuntimeError(f"{run.path}: no FLOPs or validation loss logged")
    return run.flops, run.final_val_loss


def table_rows(budget: str, lr: str) -> tuple[list[dict[str, Any]], list[RunSummary]]:
    """One row per configuration of ``budget``'s table under LR schedule ``lr``, over the
    seeds that finished: the report's in-run crossing against the equal-budget baseline,
    and the iso-loss compute against the seed's own ladder of baselines."""
    folder = lr_dir(lr)
    ladder_names = {f"base_{s}" for s in BASELINES[budget]}
    done = sorted((p.parent for p in folder.glob("*/summary.json")), key=_order)
    mine = [p for p in done if p.name.rsplit("_s", 1)[0] in ladder_names
            or p.name.startswith(f"{budget}_")]  # fmt: skip
    if not mine:
        return [], []
    runs = {Path(r.path).name: r for r in summarize(mine)}
    budget_flops = {r.seed: _point(r)[0] for n, r in runs.items()
                    if n.startswith(f"base_{BUDGETS[budget]}_")}  # fmt: skip
    for name, run in runs.items():  # the start-size reference: against its seed's target
        target = runs.get(f"base_{BUDGETS[budget]}_s{run.seed}")
        if name.startswith(f"{budget}_start_") and target is not None:
            crossing(run, target)
    groups: dict[str, list[Any]] = {}
    for name, run in runs.items():
        groups.setdefault(_label(name), []).append(run)
    rows = []
    for label, group in groups.items():
        iso = []
        for run in group:
            points = [_point(r) for n, r in runs.items()
                      if n.rsplit("_s", 1)[0] in ladder_names and r.seed == run.seed]  # fmt: skip
            ratio: float | str | None = None
            if len(points) >= 2 and run.seed in budget_flops:
                found = iso_loss_flops(points, _point(run)[1])
                base = budget_flops[run.seed]
                if found.flops is not None:
                    ratio = found.flops / base
                elif found.bound is not None:  # outside the ladder: a bound, as ">1.50"
                    side = ">" if found.outside == "better" else "<"
                    ratio = f"{side}{found.bound / base:.2f}"
            iso.append(ratio)
        rows.append({
            "run": label,
            "seeds": [r.seed for r in group],
            "final_val_loss": [r.final_val_loss for r in group],
            "flops": [r.flops for r in group],
            "wall_s": [r.wall_s for r in group],
            "crossing_saving_pct": [r.saving_pct for r in group],
            "crossing_time_saving_pct": [r.time_saving_pct for r in group],
            "iso_compute_x_budget": iso,
        })  # fmt: skip
    return rows, list(runs.values())


def _iso_text(values: list[float | str | None]) -> str:
    """Mean ± sd of the baseline compute for the loss, in multiples of the budget; a
    bound (``>1.50x``: better than the largest baseline) where the loss is outside the
    ladder."""
    got = [v for v in values if isinstance(v, float)]
    parts = [mean_sd(got, ".2f") + "x"] if got else []
    parts += [f"{v}x" for v in values if isinstance(v, str)]
    return ", ".join(parts) or "-"


def _fraction(ratio: float | str | None) -> str | None:
    """The compute fraction ``1 / ratio`` as text (a bound flips: ``>1.50`` -> ``<0.67``)."""
    if ratio is None:
        return None
    if isinstance(ratio, float):
        return f"{1 / ratio:.2f}"
    return f"{'<' if ratio[0] == '>' else '>'}{1 / float(ratio[1:]):.2f}"


def _meets(fraction: str | None, limit: float) -> bool:
    """Met only when known to be: ``<0.80`` against 0.75 is undetermined, so not met."""
    if fraction is None or fraction.startswith(">"):
        return False
    return float(fraction.lstrip("<")) <= limit


def _goal(rows: list[dict[str, Any]], budget: str) -> str:
    """Whether the best growing configuration (lowest mean final loss) meets the issue's
    goal on every seed: the equal-budget baseline's final loss with <= 75% (long) or
    <= 50% (short) of its compute, read both ways."""
    limit = {"long": 0.75, "short": 0.50}[budget]
    grown = [r for r in rows if r["run"].startswith("grow")]
    if not grown:
        return "no growing run finished"
    best = min(grown, key=lambda r: statistics.mean(r["final_val_loss"]))
    iso = [_fraction(v) for v in best["iso_compute_x_budget"]]
    cross = [None if v is None else f"{1 - v / 100:.2f}" for v in best["crossing_saving_pct"]]

    def verdict(fracs: list[str | None]) -> str:
        ok = all(_meets(f, limit) for f in fracs)
        return f"{', '.join(f or '-' for f in fracs)} ({'met' if ok else 'not met'})"

    return (
        f"Goal (issue 8): the best growing run here, **{best['run']}**, needs this fraction "
        f"of the baseline's compute for the baseline's final loss, per seed (goal <= "
        f"{limit:.2f}): iso-loss {verdict(iso)}; in-run crossing {verdict(cross)}."
    )


def write_table(budget: str) -> None:
    """experiments/results/scale_<budget>.md and .json from every finished run."""
    steps = BUDGETS[budget]
    lines = [
        f"Target 0.87M parameters (d_model 128, d_mlp 512, 4 heads, d_qk = d_v = 32, 4 "
        f"layers); growing runs start at 0.12M (64/256/2/16/16, 2 layers). Budget "
        f"**{budget}**: the training FLOPs of {steps} steps of the target (batch 16 x 128 "
        "tokens of stdlib bytes). Mean ± sd over seeds. Crossing: FLOPs (time) at which the "
        "run's validation loss first reaches the equal-budget baseline's final loss, saving "
        "vs the baseline's. Iso-loss: the compute a fixed target run (its own LR schedule "
        "over its own length) needs to end at the run's final loss, interpolated in "
        "log-FLOPs between the baselines listed, in multiples of the budget (>1: growth "
        "saved 1 - 1/x of it). Schedules: two stages (to 96/384/3/24/24, 3 layers, then the "
        "target) at "
        + "; ".join(f"*{k}*: {v}" for k, v in SCHEDULE_TEXT.items())
        + " of the run's steps. Growing runs: "
        + "; ".join(f"*{k}*: {v}" for k, v in PLACEMENT_TEXT.items())
        + ".",
    ]
    payload: dict[str, Any] = {"budget_steps": steps, "tables": {}}
    for lr in LRS:
        rows, runs = table_rows(budget, lr)
        if not rows:
            continue
        png = RESULTS / f"scale_{budget}_{lr}.png"
        plot([r for r in runs if r.seed == 0], png)
        payload["tables"][lr] = rows
        lines += [
            "",
            f"**{lr}** LR schedule ({LR_TEXT[lr]}):",
            "",
            "| run | seeds | final val loss | vs 1x baseline | crossing: FLOPs saving "
            "| crossing: time saving | iso-loss compute | training s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        base = {s: v for r in rows if r["run"] == f"fixed target, {steps} steps"
                for s, v in zip(r["seeds"], r["final_val_loss"], strict=True)}  # fmt: skip
        for row in rows:
            diffs = [v - base[s] for s, v in zip(row["seeds"], row["final_val_loss"],
                                                 strict=True) if s in base]  # fmt: skip
            grow = row["run"].startswith("grow") or row["run"].startswith("fixed start")
            lines.append(
                f"| {row['run']} | {len(row['seeds'])} | {mean_sd(row['final_val_loss'], '.4f')} "
                f"| {mean_sd(diffs, '+.4f') if grow else '-'} "
                f"| {pct(row['crossing_saving_pct'], len(row['seeds'])) if grow else '-'} "
                f"| {pct(row['crossing_time_saving_pct'], len(row['seeds'])) if grow else '-'} "
                f"| {_iso_text(row['iso_compute_x_budget']) if grow else '-'} "
                f"| {mean_sd([w for w in row['wall_s'] if w], '.0f')} |"
            )
        lines += ["", _goal(rows, budget), "", f"![seed 0, {lr}]({png.name})"]
    hours = sum(w for rows in payload["tables"].values() for r in rows for w in r["wall_s"] if w)
    payload["job_hours"] = hours / 3600
    lines += [
        "",
        f"Jobs of this table: {hours / 3600:.1f} CPU-core hours (one thread each; "
        "the baselines at 2000 and 3000 steps are shared with the other budget's table).",
    ]
    markdown = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"scale_{budget}.md").write_text(markdown)
    (RESULTS / f"scale_{budget}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
