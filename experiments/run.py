"""Run the experiments of experiments/README.md and write their tables.

    python experiments/run.py compare --budget short   # growth vs baseline, equal FLOPs
    python experiments/run.py compare --budget long    # the same, 3x the compute
    python experiments/run.py moment                   # what to do with Adam at growth
    python experiments/run.py diag                     # growth at step 0 vs a fresh model
    python experiments/run.py placement --dim d_model  # where the hidden factor sits
    python experiments/run.py placement --dim d_qk     # where the key/query factor sits

Each job is one ``python -m progrow.train experiment=compare ...`` process (one torch
thread each, ``--jobs`` at a time) writing to ``experiments/runs/<table>/<run>/`` (not
committed). A job whose folder already holds a ``summary.json`` is not run again, so an
interrupted table resumes; a folder left by a failed job is moved aside, never deleted.
Results (Markdown, JSON, PNG) go to ``experiments/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "experiments" / "runs"
RESULTS = ROOT / "experiments" / "results"

#: budget name -> (steps of the final-size model whose FLOPs every run gets, val interval)
BUDGETS = {"short": (1000, 50), "long": (3000, 150)}

#: run name -> overrides. All end at model=small's size except the `start` reference.
COMPARE = {
    "baseline": ["model=small", "growth=none"],
    "start_size": ["model=tiny", "growth=none"],
    "width_first": ["model=tiny", "growth=width_first"],
    "depth_first": ["model=tiny", "growth=depth_first"],
    "all_six": ["model=tiny", "growth=all_six"],
    "late": ["model=tiny", "growth=late"],
    "early": ["model=tiny", "growth=early"],
    # all_six without the hidden expansion (the one that slows training, see `diag`):
    # starts at the final d_model, grows the other five dimensions at the same fractions.
    "no_hidden": [
        "model=tiny",
        "model.d_model=64",
        "growth.name=no_hidden",
        "growth.stages=[{step: 0.2, d_mlp: 128, n_heads: 4}, {step: 0.4, d_qk: 16, d_v: 16},"
        " {step: 0.6, d_mlp: 256, n_layers: 2, layer_positions: interleave}]",
    ],
}

#: The growth-moment variants, all on growth=all_six with the short budget.
MOMENT = {
    "zero_step_kept": [],
    "rewarmup_50": ["growth.rewarmup_steps=50"],
    "bias_corrected": ["growth.new_moments=bias_corrected"],
    # The same three with Adam's b2 = 0.999, where zero new moments with a kept step make
    # the first updates of new entries ~3.2x too large instead of ~0.45x (b2 = 0.95).
    "zero_step_kept_b2_0.999": ["optim.betas=[0.9,0.999]"],
    "rewarmup_50_b2_0.999": ["optim.betas=[0.9,0.999]", "growth.rewarmup_steps=50"],
    "bias_corrected_b2_0.999": ["optim.betas=[0.9,0.999]", "growth.new_moments=bias_corrected"],
}


def run_job(folder: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """One training process; returns its summary.json."""
    summary = folder / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    if folder.exists():
        folder.rename(folder.with_name(f"{folder.name}.failed-{int(time.time())}"))
    folder.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "progrow.train",
        "experiment=compare",
        *overrides,
        f"hydra.run.dir={folder}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    started = time.perf_counter()
    log = folder.parent / f"{folder.name}.log"
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not summary.is_file():
        raise RuntimeError(f"job failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    print(f"  done {folder.relative_to(ROOT)} in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(summary.read_text())


def run_all(jobs: dict[Path, list[str]], parallel: int) -> None:
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(run_job, folder, ov) for folder, ov in jobs.items()]:
            future.result()


def mean_sd(values: Sequence[float], spec: str = ".3f") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], spec)
    mean, sd = statistics.mean(values), statistics.stdev(values)
    return f"{format(mean, spec)} ± {format(sd, spec.lstrip('+'))}"


def pct(values: Sequence[float | None], n: int) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return f"not reached (0/{n})"
    text = f"{statistics.mean(got):+.1f}%"
    if len(got) > 1:
        text += f" ± {statistics.stdev(got):.1f}"
    return text + ("" if len(got) == n else f" ({len(got)}/{n} reached)")


# -- compare ------------------------------------------------------------------------------


def compare(budget: str, seeds: Sequence[int], parallel: int) -> None:
    from progrow.app.report_compare import crossing, summarize
    from progrow.app.report_plot import plot

    steps, val_every = BUDGETS[budget]
    table = RUNS / f"compare_{budget}"
    # The start-size reference spends the budget in ~5x the steps of the baseline, where
    # per-step overhead dominates: 4 minutes per seed at the short budget, 12+ at the long
    # one. It is a reference point, so only the short table carries it.
    names = [n for n in COMPARE if budget == "short" or n != "start_size"]
    jobs = {
        table / f"{name}_s{seed}": [
            *overrides,
            f"seed={seed}",
            f"budget.steps={steps}",
            f"trainer.val_check_interval={val_every}",
        ]
        for seed in seeds
        for name, overrides in COMPARE.items()
        if name in names
    }
    run_all(jobs, parallel)
    # Each run against the target-size baseline of its own seed (the start-size reference
    # is a growth=none run too, so the report's automatic choice would be ambiguous).
    runs = [
        run
        for seed in seeds
        for run in summarize(
            [p for p in jobs if p.name.endswith(f"_s{seed}")], baseline=table / f"baseline_s{seed}"
        )
    ]
    by_name: dict[str, list[Any]] = {name: [] for name in names}
    for run in runs:
        by_name[Path(run.path).name.rsplit("_s", 1)[0]].append(run)
    # The report pairs a run only with a fixed-size run of its own final size; the
    # start-size reference is measured against the target baseline of its seed directly.
    bases = {r.seed: r for r in by_name["baseline"]}
    for run in by_name.get("start_size", []):
        crossing(run, bases[run.seed])
    summaries = {p: json.loads((p / "summary.json").read_text()) for p in jobs}
    rows: list[dict[str, Any]] = []
    for name, group in by_name.items():
        n = len(group)
        steps_taken = [summaries[Path(r.path)]["global_step"] for r in group]
        rows.append(
            {
                "run": name,
                "seeds": n,
                "steps": sorted(set(steps_taken)),
                "final_val_loss": [r.final_val_loss for r in group],
                "flops": [r.flops for r in group],
                "train_s": [summaries[Path(r.path)]["train_s"] for r in group],
                "flops_saving_pct": [None if name == "baseline" else r.saving_pct for r in group],
                "time_saving_pct": [
                    None if name == "baseline" else r.time_saving_pct for r in group
                ],
            }
        )
    base = {r.seed: r.final_val_loss for r in by_name["baseline"]}
    lines = [
        f"Budget **{budget}**: the training FLOPs of {steps} steps of the final-size model "
        f"(batch 16 x 128 tokens); seeds {list(seeds)}; mean ± sd over seeds.",
        "",
        "| run | steps | final val loss | vs baseline (same seed) | FLOPs to baseline's "
        "final loss: saving | training time to it: saving | training s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, (name, group) in zip(rows, by_name.items(), strict=True):
        diffs = [r.final_val_loss - base[r.seed] for r in group if r.seed in base]
        lines.append(
            f"| {name} | {'/'.join(map(str, row['steps']))} | {mean_sd(row['final_val_loss'])} "
            f"| {'-' if name == 'baseline' else mean_sd(diffs, '+.3f')} "
            f"| {'-' if name == 'baseline' else pct(row['flops_saving_pct'], len(group))} "
            f"| {'-' if name == 'baseline' else pct(row['time_saving_pct'], len(group))} "
            f"| {mean_sd(row['train_s'], '.0f')} |"
        )
    markdown = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"compare_{budget}.md").write_text(markdown)
    (RESULTS / f"compare_{budget}.json").write_text(
        json.dumps({"budget_steps": steps, "seeds": list(seeds), "rows": rows}, indent=2) + "\n"
    )
    plot([r for r in runs if r.seed == seeds[0]], RESULTS / f"compare_{budget}.png")
    print(markdown)


# -- moment -------------------------------------------------------------------------------


def read_train_loss(folder: Path) -> dict[int, float]:
    from progrow.app.runs import read_metrics

    return {int(r["step"]): r["train/loss"] for r in read_metrics(folder) if "train/loss" in r}


def excess_after_growth(losses: dict[int, float], steps: Sequence[int], window: int) -> float:
    """Mean train loss over the ``window`` steps after each growth, minus the mean over the
    ``window`` steps before it, averaged over the growths (lower: smoother)."""
    out = []
    for g in steps:
        before = [v for s, v in losses.items() if g - window <= s < g]
        after = [v for s, v in losses.items() if g <= s < g + window]
        if before and after:
            out.append(statistics.mean(after) - statistics.mean(before))
    return statistics.mean(out)


def moment(seeds: Sequence[int], parallel: int) -> None:
    steps, val_every = BUDGETS["short"]
    table = RUNS / "moment"
    jobs = {
        table / f"{name}_s{seed}": [
            "model=tiny",
            "growth=all_six",
            *overrides,
            f"seed={seed}",
            f"budget.steps={steps}",
            f"trainer.val_check_interval={val_every}",
            "trainer.log_every_n_steps=1",
        ]
        for seed in seeds
        for name, overrides in MOMENT.items()
    }
    run_all(jobs, parallel)
    lines = [
        f"growth=all_six from model=tiny, budget short ({steps} final-size steps of FLOPs); "
        f"seeds {list(seeds)}; mean ± sd over seeds. Excess loss: mean training loss over "
        "the 25 (50) steps after each growth minus the 25 (50) before, averaged over the three "
        "growths (same data order in every variant).",
        "",
        "| variant | excess train loss, 25 steps | excess, 50 steps | final val loss |",
        "|---|---|---|---|",
    ]
    rows = []
    for name in MOMENT:
        ex25, ex50, final = [], [], []
        for seed in seeds:
            folder = table / f"{name}_s{seed}"
            summary = json.loads((folder / "summary.json").read_text())
            growth_steps = [e["step"] for e in summary["events"]]
            losses = read_train_loss(folder)
            ex25.append(excess_after_growth(losses, growth_steps, 25))
            ex50.append(excess_after_growth(losses, growth_steps, 50))
            final.append(summary["val_loss"])
        rows.append({"variant": name, "excess25": ex25, "excess50": ex50, "final": final})
        lines.append(f"| {name} | {mean_sd(ex25)} | {mean_sd(ex50)} | {mean_sd(final)} |")
    markdown = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "moment.md").write_text(markdown)
    (RESULTS / "moment.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    plot_moment(table, seeds[0])
    print(markdown)


def plot_moment(table: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, name in enumerate(MOMENT):
        folder = table / f"{name}_s{seed}"
        losses = read_train_loss(folder)
        steps = sorted(losses)
        smooth = [
            statistics.mean(losses[s] for s in steps[max(0, j - 9) : j + 1])
            for j in range(len(steps))
        ]
        ax.plot(steps, smooth, color=f"C{i}", label=name, linewidth=1)
        for event in json.loads((folder / "summary.json").read_text())["events"]:
            ax.axvline(event["step"], color="gray", alpha=0.3, linestyle=":")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (10-step mean)")
    ax.set_ylim(top=3.5)
    ax.set_title(f"growth moment variants, seed {seed} (dotted: growth events)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "moment.png", dpi=120)
    plt.close(fig)


# -- diag: growth at step 0 -----------------------------------------------------------------

WIDTHS = "d_model: 64, d_mlp: 256, n_heads: 4, d_qk: 16, d_v: 16"

#: Models grown to model=small at step 0 (no warm start), by which expansions.
AT_STEP0 = {
    "all six": ["model=tiny", f"growth.stages=[{{step: 0, {WIDTHS}, n_layers: 2}}]"],
    "widths only": ["model=tiny", "model.n_layers=2", f"growth.stages=[{{step: 0, {WIDTHS}}}]"],
    "depth only": ["model=small", "model.n_layers=1", "growth.stages=[{step: 0, n_layers: 2}]"],
    **{
        f"{dim} only": [
            "model=small",
            f"model.{dim}={start}",
            f"growth.stages=[{{step: 0, {dim}: {end}}}]",
        ]
        for dim, start, end in (
            ("d_model", 32, 64),
            ("d_mlp", 64, 256),
            ("n_heads", 2, 4),
            ("d_qk", 8, 16),
            ("d_v", 8, 16),
        )
    },
}


def diag(seeds: Sequence[int], parallel: int) -> None:
    """Models grown at step 0 against a fresh ``small`` one, same steps and data: what the
    zero blocks of function preservation cost by themselves (no warm start involved)."""
    steps, val_every = BUDGETS["short"]
    common = [f"budget.steps={steps}", f"trainer.val_check_interval={val_every}"]
    folders = {
        "all six": "at_step0",
        "widths only": "widths_at_step0",
        "depth only": "depth_at_step0",
        **{
            f"{dim} only": f"{dim}_at_step0"
            for dim in ("d_model", "d_mlp", "n_heads", "d_qk", "d_v")
        },
    }
    groups: dict[str, dict[Path, list[str]]] = {
        f"grown at step 0: {name}": {
            RUNS / "diag" / f"{folders[name]}_s{seed}": [
                *overrides, f"growth.name={folders[name]}", f"seed={seed}", *common
            ]
            for seed in seeds
        }
        for name, overrides in AT_STEP0.items()
    }  # fmt: skip
    groups["fresh model=small (the baseline)"] = {
        RUNS / "compare_short" / f"baseline_s{seed}": [
            *COMPARE["baseline"], f"seed={seed}", *common
        ]
        for seed in seeds
    }  # fmt: skip
    run_all({k: v for jobs in groups.values() for k, v in jobs.items()}, parallel)
    losses = {
        name: [json.loads((p / "summary.json").read_text())["val_loss"] for p in jobs]
        for name, jobs in groups.items()
    }
    lines = [
        f"model=small trained {steps} steps (same data and LR schedule) from a fresh init, or "
        f"grown to model=small at step 0 from a fresh smaller model; seeds {list(seeds)}.",
        "",
        "| start | final val loss |",
        "|---|---|",
        *(f"| {name} | {mean_sd(values)} |" for name, values in losses.items()),
    ]
    markdown = "\n".join(lines) + "\n"
    (RESULTS / "diag.md").write_text(markdown)
    (RESULTS / "diag.json").write_text(json.dumps(losses, indent=2) + "\n")
    print(markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("table", choices=["compare", "moment", "diag", "placement"])
    parser.add_argument("--dim", choices=["d_model", "d_qk"], default="d_model",
                        help="placement: the expansion whose factor is placed")  # fmt: skip
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="short")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time")
    parser.add_argument("--steps", type=int, help="placement: shorter runs (a quick check)")
    parser.add_argument("--schedule", choices=["cosine", "wsd"], default="cosine",
                        help="placement: the LR schedule of every run")  # fmt: skip
    args = parser.parse_args()
    if args.steps is not None and args.steps <= 0:
        parser.error(f"--steps={args.steps}: must be a positive integer")
    if args.table == "placement":
        from placement import placement  # experiments/placement.py, beside this file

        placement(args.dim, args.seeds, args.jobs, args.steps, args.schedule)
    elif args.table == "compare":
        compare(args.budget, args.seeds, args.jobs)
    elif args.table == "moment":
        moment(args.seeds, args.jobs)
    else:
        diag(args.seeds, args.jobs)


if __name__ == "__main__":
    main()
