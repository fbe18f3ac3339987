"""``slurm/train.sbatch`` and the submitit launcher on a real SLURM cluster.

Marked ``slurm`` (excluded from the default test command): ``.ci/run`` starts a one-node
cluster (``slurm/ci/cluster.sh start``) and runs ``pytest -m slurm``. Without a cluster
these tests are skipped, unless ``PROGROW_REQUIRE_SLURM=1`` (CI) makes that a failure.

The requeue test interrupts a 2-task DDP job with SIGUSR1 from ``scancel --signal=USR1``
(what SLURM sends before the time limit with ``--signal=SIGUSR1@N``; the time limit itself
has a granularity of a minute, too slow for CI). ``PROGROW_SLURM_TIME_LIMIT=1`` runs the
same test with the real time limit instead (``--time=3 --signal=SIGUSR1@120``, ~4 minutes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lit_utils import app_overrides
from wandb_records import trainer_steps

from progrow.app.runs import load_run

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / "slurm" / "train.sbatch"
DEFAULT_CONF = Path(os.environ.get("PROGROW_SLURM_DIR", "/tmp/progrow-slurm")) / "slurm.conf"
MAX_STEPS = 40  # all_six grows at steps 8, 16 and 24
CKPT_EVERY = 10
TIME_LIMIT = os.environ.get("PROGROW_SLURM_TIME_LIMIT") == "1"
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
# 2 tasks of 1 CPU on one node; the GPU directives of the template are overridden.
CPU_JOB = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gres=none"]


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment for SLURM commands and jobs; skips (or fails in CI) without a
    cluster that accepts jobs."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    if "SLURM_CONF" not in env and DEFAULT_CONF.is_file():
        env["SLURM_CONF"] = str(DEFAULT_CONF)
    ready = shutil.which("sbatch") is not None and _sinfo_states(env) & {"idle", "mixed"}
    if not ready:
        message = "no SLURM cluster accepting jobs (start one: slurm/ci/cluster.sh start)"
        if os.environ.get("PROGROW_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    # The jobs import this checkout (and lit_utils for the test-only Throttle callback).
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
    env["PYTHON"] = sys.executable
    env["PROGROW_CACHE"] = str(tmp_path_factory.mktemp("slurm_cache"))
    return env


def _sinfo_states(env: dict[str, str]) -> set[str]:
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return set(out.split())


def job_info(job_id: str, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{job_tail(log)}")
        time.sleep(0.25)


def job_tail(log: Path) -> str:
    """The end of a job's output for a failure message: rank 0's lines first (the other
    ranks' tracebacks, once rank 0 is gone, would fill the tail), then the raw end."""
    if not log.is_file():
        return "(no job output)"
    text = log.read_text()
    rank0 = "\n".join(line for line in text.splitlines() if not re.match(r"\[rank[1-9]", line))
    return f"--- without other ranks' lines ---\n{rank0[-6000:]}\n--- raw end ---\n{text[-1500:]}"


def sbatch(env: dict[str, str], run_dir: Path, *args: str, overrides: list[str]) -> str:
    result = subprocess.run(
        ["sbatch", "--parsable", *CPU_JOB, f"--output={run_dir}.out", *args, str(SBATCH),
         *overrides],
        env={**env, "RUN_DIR": str(run_dir)}, cwd=run_dir.parent,
        capture_output=True, text=True, timeout=400,  # --wait: the whole job
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_overrides(cache: Path) -> list[str]:
    return [
        "trainer=ddp_cpu",
        "model=tiny",
        *app_overrides(cache, max_steps=MAX_STEPS, val_every=CKPT_EVERY),
        "trainer.log_every_n_steps=1",
    ]


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / f"step_{MAX_STEPS}.ckpt", weights_only=False)
    assert ckpt["global_step"] == MAX_STEPS
    return ckpt["state_dict"]


@pytest.fixture(scope="module")
def reference(slurm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted job of the tests' config: the final state every signal test must
    end at."""
    ref_dir = tmp_path_factory.mktemp("slurm_reference") / "reference"
    overrides = job_overrides(Path(slurm_env["PROGROW_CACHE"]))
    ref_id = sbatch(slurm_env, ref_dir, "--time=10", "--wait", overrides=overrides)
    assert job_info(ref_id, slurm_env)["JobState"] == "COMPLETED", ref_dir.with_suffix(".out")
    return ref_dir


# Slowed down (0.2 s per step, in the job only) so that a signal lands mid-run.
THROTTLE = ["+callbacks.throttle._target_=lit_utils.Throttle", "+callbacks.throttle.seconds=0.2"]


def with_wandb(env: dict[str, str], run_dir: Path) -> dict[str, str]:
    """The job's environment for ``logger=wandb`` in offline mode, its files in the run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return {**env, "WANDB_MODE": "offline", "WANDB_DIR": str(run_dir), "WANDB_SILENT": "true"}


def wandb_steps(run_dir: Path) -> list[list[int]]:
    """Per W&B offline run of the job (one per attempt, in order), the trainer steps it
    holds; all runs must carry the same run id (one W&B run continued)."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    ids = {f.name for r in runs for f in r.glob("run-*.wandb")}
    assert len(ids) == 1, [r.name for r in runs]
    return [sorted(set(trainer_steps(r))) for r in runs]


def start_throttled(
    env: dict[str, str], run_dir: Path, extra: tuple[str, ...] = ()
) -> tuple[str, Path]:
    """Submit the tests' job, slowed down; return its id and log once its step-10
    checkpoint exists."""
    overrides = [*job_overrides(Path(env["PROGROW_CACHE"])), *THROTTLE, *extra]
    job_id = sbatch(env, run_dir, "--time=10", overrides=overrides)
    log = run_dir.with_suffix(".out")
    first_ckpt = run_dir / "checkpoints" / f"step_{CKPT_EVERY}.ckpt"
    wait_for(f"{first_ckpt.name}", first_ckpt.is_file, 240, log)
    return job_id, log


def release_requeued(env: dict[str, str], job_id: str, log: Path) -> None:
    """A requeued job waits for a begin time (about 2 minutes): release it as soon as the
    first attempt's processes are gone and its credential, revoked at a 1 s resolution,
    cannot be confused with the new one (else: "Job credential revoked", job FAILED)."""
    wait_for("the node to be idle", lambda: _sinfo_states(env) == {"idle"}, 120, log)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True)
    wait_for("the second attempt", lambda: job_info(job_id, env)["JobState"] in ENDED, 240, log)


def assert_same_final_state(reference: Path, run_dir: Path) -> None:
    expected, got = final_state(reference), final_state(run_dir)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    print(f"final parameters: {len(got)} tensors bitwise equal to the uninterrupted job")


def report_job(
    env: dict[str, str], job_id: str, log: Path, title: str
) -> tuple[dict[str, str], str]:
    """The ended job's ``scontrol`` fields and output; prints progrow's lines of it and
    its final state (CI's log shows each case)."""
    info, output = job_info(job_id, env), log.read_text()
    print(f"--- job {job_id}, {title} ---")
    print("\n".join(line for line in output.splitlines() if _progrow_line(line)))
    print(f"job {job_id}: JobState={info['JobState']} Restarts={info['Restarts']}")
    return info, output


def stopped_at(output: str, signame: str, run_dir: Path) -> int:
    """The step the one attempt stopped by ``signame`` saved ``last.ckpt`` at."""
    stopped = re.findall(rf"Stopped by {signame} at step (\d+); checkpoint saved: (\S+)", output)
    assert len(stopped) == 1 and stopped[0][1] == str(run_dir / "checkpoints" / "last.ckpt")
    step = int(stopped[0][0])
    assert CKPT_EVERY < step < MAX_STEPS, step
    return step


def test_scancel_saves_and_stops_the_job(slurm_env: dict[str, str], tmp_path: Path) -> None:
    """A plain ``scancel`` with ``logger=wandb``: the checkpoint of the running step is
    saved, and the job ends CANCELLED, not requeued (SIGTERM never requeues), although
    wandb-core, which gets the SIGTERM too, exits under the run."""
    run_dir = tmp_path / "run"
    env = with_wandb(slurm_env, run_dir)
    job_id, log = start_throttled(env, run_dir, ("logger=wandb",))
    subprocess.run(["scancel", job_id], env=slurm_env, check=True)
    wait_for("the cancel", lambda: job_info(job_id, slurm_env)["JobState"] in ENDED, 120, log)
    time.sleep(5)  # a requeue would show as PENDING by now
    wait_for("the job's output", lambda: "Stopped by SIGTERM" in log.read_text(), 60, log)
    info, output = report_job(slurm_env, job_id, log, "scancel")
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0")
    step = stopped_at(output, "SIGTERM", run_dir)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == step
    assert "progrow does not requeue on SIGTERM" in output and "requeueing" not in output
    # wandb-core exits on the SIGTERM too: its error is one warning, not a crash, wherever
    # the trainer next calls W&B (a step's or a validation's log, the finish; the only
    # traceback left can be wandb's own atexit teardown finding its service gone).
    assert "Error executing job" not in output, output[-3000:]
    assert output.count("Traceback") <= output.count("teardown_atexit"), output[-3000:]
    lost = ("W&B's service is gone", "W&B could not finish its run after the signal")
    assert any(message in output for message in lost), output[-3000:]


def test_external_requeue_resumes_exactly(
    slurm_env: dict[str, str], tmp_path: Path, reference: Path
) -> None:
    """``scontrol requeue`` by someone else: SLURM sends SIGTERM and requeues the job
    itself; progrow saves, does not requeue a second time, does not claim the job was not
    requeued, and the next attempt resumes from the signal's step, ending bitwise where
    the uninterrupted job ends."""
    run_dir = tmp_path / "run"
    job_id, log = start_throttled(slurm_env, run_dir)
    subprocess.run(["scontrol", "requeue", job_id], env=slurm_env, check=True)
    release_requeued(slurm_env, job_id, log)
    info, output = report_job(slurm_env, job_id, log, "external requeue, both attempts")
    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "1", "0:0")
    step = stopped_at(output, "SIGTERM", run_dir)
    assert "not requeued" not in output and "requeueing" not in output
    last = str(run_dir / "checkpoints" / "last.ckpt")
    assert re.findall(r"resumed from (\S+) at step (\d+)", output) == [(last, str(step))]
    assert_same_final_state(reference, run_dir)


def test_sbatch_ddp_job_requeues_once_and_resumes_exactly(
    slurm_env: dict[str, str], tmp_path: Path, reference: Path
) -> None:
    started = time.monotonic()
    overrides = job_overrides(Path(slurm_env["PROGROW_CACHE"]))
    ref_dir, run_dir = reference, tmp_path / "run"
    throttle = list(THROTTLE)
    # Time-limit mode: SIGUSR1 60-90 s into each attempt; the (unthrottled) second one ends
    # before that.
    limits = ["--time=3", "--signal=SIGUSR1@120"] if TIME_LIMIT else ["--time=10"]
    if TIME_LIMIT:
        throttle[-1] = "+callbacks.throttle.seconds=2.0"  # attempt 1 outlives the signal
    # W&B in offline mode: its history must survive the requeue (SLURM's SIGTERM ends
    # wandb-core), one W&B run continued across the attempts.
    wandb = with_wandb(slurm_env, run_dir)
    job_id = sbatch(wandb, run_dir, *limits, overrides=[*overrides, *throttle, "logger=wandb"])
    log = run_dir.with_suffix(".out")
    if not TIME_LIMIT:  # SIGUSR1 once the step-10 checkpoint exists
        first_ckpt = run_dir / "checkpoints" / f"step_{CKPT_EVERY}.ckpt"
        wait_for(f"{first_ckpt.name}", first_ckpt.is_file, 240, log)
        subprocess.run(["scancel", "--signal=USR1", job_id], env=slurm_env, check=True)

    def requeued() -> bool:
        info = job_info(job_id, slurm_env)
        return info.get("JobState") == "PENDING" and info.get("Restarts") == "1"

    wait_for("the requeue", requeued, 300 if TIME_LIMIT else 120, log)
    release_requeued(slurm_env, job_id, log)
    elapsed = f"both attempts ({time.monotonic() - started:.0f} s)"
    info, output = report_job(slurm_env, job_id, log, elapsed)
    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "1", "0:0")

    # Attempt 1: fresh start, stopped by SIGUSR1 after the step-10 checkpoint; attempt 2:
    # resumed from the checkpoint of exactly that step.
    stopped = re.findall(r"Stopped by SIGUSR1 at step (\d+); checkpoint saved: (\S+)", output)
    resumed = re.findall(r"resumed from (\S+) at step (\d+)", output)
    last = str(run_dir / "checkpoints" / "last.ckpt")
    assert output.count("starting a fresh run") == 1
    assert len(stopped) == 1 and stopped[0][1] == last, stopped
    assert f"SLURM job {job_id} requeued" in output
    assert output.count(f"ckpt_path=auto: resuming from {last}") == 1
    step = int(stopped[0][0])
    assert resumed == [(last, str(step))]
    # Before the end; with scancel, after the periodic step-10 checkpoint. (SLURM's own
    # SIGUSR1 comes 60-90 s into the job: a step that depends on the machine's speed.)
    assert (0 if TIME_LIMIT else CKPT_EVERY) < step < MAX_STEPS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == last and summary["global_step"] == MAX_STEPS

    # Same final parameters as the uninterrupted job.
    assert_same_final_state(ref_dir, run_dir)
    # W&B: attempt 1 holds every step it trained (logged as 0..step-1), attempt 2 the rest.
    attempts = wandb_steps(run_dir)
    print(f"W&B history: attempt steps {[(a[0], a[-1]) for a in attempts]}, one run id")
    assert attempts == [list(range(step)), list(range(step, MAX_STEPS))]

    # One CSV run continued (version_0, then version_1 from the resumed step), reading as
    # the uninterrupted run's: same validation curve, growth events and final loss.
    assert sorted(p.name for p in (run_dir / "csv").iterdir()) == ["version_0", "version_1"]
    ref_run, run = load_run(ref_dir), load_run(run_dir)
    assert len(run.curve) == MAX_STEPS // CKPT_EVERY and run.curve == ref_run.curve
    assert run.final_val_loss == ref_run.final_val_loss == summary["val_loss"]
    assert [e.step for e in run.events] == [8, 16, 24]


def _progrow_line(line: str) -> bool:
    keys = ("ckpt_path=auto", "Stopped by", "requeue", "resumed from", "final val/loss", "CANCEL")
    return any(key in line for key in keys) and not line.startswith("INFO")


def test_multirun_through_submitit_slurm_launcher(
    slurm_env: dict[str, str], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "progrow.train", "-m", "hydra/launcher=slurm",
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
         f"hydra.sweep.dir={sweep}", "seed=0,1",
         *app_overrides(Path(slurm_env["PROGROW_CACHE"]), max_steps=10)],
        env=slurm_env, cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    seeds = [json.loads((sweep / str(n) / "summary.json").read_text())["seed"] for n in (0, 1)]
    assert seeds == [0, 1]
    # Each job ran as a task of one SLURM job array (submitit's folders: <array>_<task>).
    tasks = sorted(
        p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d", p.name)
    )
    assert [t.split("_")[1] for t in tasks] == ["0", "1"]
    # (submitit returns once the results are written; the jobs end a moment later)
    states = lambda: [job_info(t, slurm_env)["JobState"] for t in tasks]  # noqa: E731
    wait_for("the array tasks to end", lambda: set(states()) <= set(ENDED), 60, sweep / "x")
    assert states() == ["COMPLETED"] * 2
