"""Stopping on a signal (``PreemptionCallback``): the checkpoint is taken at the optimizer
step after the signal, resuming from it is bitwise exact (also when the signal arrives
in the step of a growth), SLURM jobs are requeued by progrow and not by Lightning, and
Ctrl-C never requeues."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import checkout_env, run_process_groups
from lightning.fabric.plugins.environments import SLURMEnvironment
from lit_utils import (
    SendSignal,
    assert_bitwise_equal,
    datamodule,
    growth,
    lm_module,
    params,
    trainer,
)

from progrow.training import FitInterrupted, PreemptionCallback
from progrow.training.signals import SignalLatch

MAX_STEPS = 12  # growth stages at steps 4 and 8 (lit_utils.TWO_STAGES)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def uninterrupted(cache: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Final parameters of uninterrupted runs, per gradient-accumulation setting."""
    finals = {}
    for accumulate in (1, 2):
        module = lm_module(MAX_STEPS)
        trainer(MAX_STEPS, [growth()], accumulate_grad_batches=accumulate).fit(
            module, datamodule=datamodule(cache)
        )
        finals[accumulate] = params(module)
    return finals


def fake_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str = "RUNNING") -> Path:
    """An ``scontrol`` on PATH that records its arguments (one call per line) and reports
    the job in ``state``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    script = bin_dir / "scontrol"
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n'
        f'[ "$1" = show ] && echo "JobId=$4 JobName=x JobState={state} Reason=None"\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def fake_slurm_job(monkeypatch: pytest.MonkeyPatch, job_id: str = "4242") -> None:
    """The environment of task 0 of a one-task SLURM batch job: Lightning detects SLURM
    (and would install its own auto-requeue handler)."""
    for key, value in {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "progrow-test",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }.items():
        monkeypatch.setenv(key, value)


# A signal in the step of the first growth (step 4), one between micro-batches of an
# accumulating step (Ctrl-C during step 6, whose first micro-batch it interrupts), and a
# SIGTERM in the step of the second growth.
CASES = [
    pytest.param(signal.SIGUSR1, 4, 1, id="SIGUSR1-growth-step"),
    pytest.param(signal.SIGINT, 6, 2, id="SIGINT-accumulate2"),
    pytest.param(signal.SIGTERM, 8, 1, id="SIGTERM-growth-step"),
]


@pytest.mark.parametrize(("signum", "step", "accumulate"), CASES)
def test_signal_saves_at_next_step_and_resume_is_bitwise(
    uninterrupted: dict[int, dict[str, torch.Tensor]],
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    signum: int,
    step: int,
    accumulate: int,
) -> None:
    calls = fake_scontrol(tmp_path, monkeypatch)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    previous = signal.getsignal(signum)
    with pytest.raises(FitInterrupted) as stopped:
        trainer(
            MAX_STEPS,
            [SendSignal(step, signum), growth(), PreemptionCallback(ckpt)],
            accumulate_grad_batches=accumulate,
        ).fit(lm_module(MAX_STEPS), datamodule=datamodule(cache))
    assert signal.getsignal(signum) == previous  # handlers restored
    assert stopped.value.signum == signum and stopped.value.code == 128 + signum
    # The signal arrived during optimizer step `step`; that step completes, then we stop.
    assert stopped.value.step == step + 1
    assert stopped.value.ckpt_path == str(ckpt) and not stopped.value.requeued
    assert not calls.exists()  # not a SLURM job: nothing requeued
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == step + 1
    assert not list(ckpt.parent.glob(".*tmp"))

    cb = growth()
    module = lm_module(MAX_STEPS, seed=123)  # start size, other init: all from the ckpt
    trainer(MAX_STEPS, [cb, PreemptionCallback()], accumulate_grad_batches=accumulate).fit(
        module, datamodule=datamodule(cache), ckpt_path=str(ckpt)
    )
    assert [e.step for e in cb.events] == [4, 8]
    assert_bitwise_equal(params(module), uninterrupted[accumulate])


# USR1 (the time limit's warning) requeues a running job; Ctrl-C never does; SIGTERM never
# does either: SLURM shows a scancel'd job as COMPLETING, like a preempted one, and a
# scancel must not be undone (a preemption or scontrol requeue is requeued by SLURM).
@pytest.mark.parametrize(
    ("signum", "state", "requeued"),
    [
        (signal.SIGUSR1, "RUNNING", True),
        (signal.SIGTERM, "RUNNING", False),
        (signal.SIGINT, "RUNNING", False),
        (signal.SIGTERM, "COMPLETING", False),
        (signal.SIGUSR1, "CANCELLED", False),
    ],
    ids=["USR1", "TERM", "INT", "scancel", "USR1-after-cancel"],
)
def test_slurm_job_is_requeued_by_progrow_not_lightning(
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    signum: int,
    state: str,
    requeued: bool,
) -> None:
    calls = fake_scontrol(tmp_path, monkeypatch, state)
    fake_slurm_job(monkeypatch)
    ckpt_dir = tmp_path / "checkpoints"
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1, save_last=True
    )
    fit = trainer(
        8,
        [SendSignal(3, signum), PreemptionCallback(), checkpoint],
        root=tmp_path,
        enable_checkpointing=True,
    )
    assert SLURMEnvironment.detect()  # so Lightning installs its auto-requeue handler
    with pytest.raises(FitInterrupted) as stopped:
        fit.fit(lm_module(8), datamodule=datamodule(cache))
    assert stopped.value.requeued is requeued and stopped.value.step == 4
    expected = {
        "RUNNING": ["show job -o 4242", "requeue 4242"],
        "CANCELLED": ["show job -o 4242"],
    }
    asked = calls.read_text().splitlines() if calls.exists() else []
    assert asked == (expected[state] if signum == signal.SIGUSR1 else [])
    # Lightning's handler would have written hpc_ckpt_1.ckpt and requeued a second time.
    assert not list(tmp_path.rglob("hpc_ckpt_*.ckpt"))
    # The ModelCheckpoint's last.ckpt holds step 4 (periodic saves: step 2 only).
    assert stopped.value.ckpt_path == str(ckpt_dir / "last.ckpt")
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["global_step"] == 4


def test_second_ctrl_c_quits_at_once() -> None:
    latch = SignalLatch([signal.SIGINT])
    previous = signal.getsignal(signal.SIGINT)
    latch.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert latch.received == [signal.SIGINT]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == previous
    finally:
        latch.restore()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="signals is empty"):
        PreemptionCallback(signals=[])
    with pytest.raises(ValueError, match="9999"):
        PreemptionCallback(signals=[9999])


DDP_SCRIPT = Path(__file__).parent / "ddp_preemption_script.py"
DDP_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ddp_ranks_agree_and_resume_is_bitwise(tmp_path: Path) -> None:
    """Two gloo ranks started from outside (like srun); only rank 1 gets SIGUSR1, in the
    step of a growth. Both stop after that step with one checkpoint, and resuming from it
    ends bitwise where the uninterrupted run did, on both ranks; under DDP, then FSDP2."""
    base = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
        "NODE_RANK": "0",
        **checkout_env(),
    }
    argv = [sys.executable, str(DDP_SCRIPT), str(tmp_path)]
    ranks_env = [{**base, "RANK": str(r), "LOCAL_RANK": str(r)} for r in (0, 1)]
    run_process_groups([(argv, env) for env in ranks_env], DDP_TIMEOUT_S, "DDP ranks")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for rank in ranks:
        assert rank["stopped"] == {
            "signum": signal.SIGUSR1,
            "step": 5,
            "ckpt_path": str(tmp_path / "ckpt" / "last.ckpt"),
        }
        assert_bitwise_equal(rank["resumed"], rank["reference"])
        # FSDP2: the sharded last.ckpt folder of the ModelCheckpoint replaced by the one of
        # step 5 (the ModelCheckpoint wrote step 4's), then resumed bitwise.
        assert rank["fsdp"]["stopped"] == {
            "signum": signal.SIGUSR1,
            "step": 5,
            "ckpt_path": str(tmp_path / "fsdp" / "last.ckpt"),
        }
        assert_bitwise_equal(rank["fsdp"]["resumed"], rank["fsdp"]["reference"])
    assert_bitwise_equal(ranks[0]["resumed"], ranks[1]["resumed"])
    meta = torch.load(tmp_path / "fsdp" / "last.ckpt" / "meta.pt", weights_only=False)
    assert meta["global_step"] == 5  # step 4's folder was replaced
    assert not list((tmp_path / "fsdp").glob(".*"))  # no temporary or moved-aside folder


def test_armed_signal_before_training_stops_at_the_first_step(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGUSR1 during data loading or setup (before fit): recorded by arm() instead of
    ending the process (SIGUSR1's default); the run stops after its first optimizer step,
    saves and requeues."""
    calls = fake_scontrol(tmp_path, monkeypatch)
    fake_slurm_job(monkeypatch)
    ckpt = tmp_path / "last.ckpt"
    cb = PreemptionCallback(ckpt)
    before = signal.getsignal(signal.SIGUSR1)
    cb.arm()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # would end pytest without arm()
        with pytest.raises(FitInterrupted) as stopped:
            trainer(8, [cb]).fit(lm_module(8), datamodule=datamodule(cache))
        assert signal.getsignal(signal.SIGUSR1) != before  # still recording until disarm
    finally:
        cb.disarm()
    assert signal.getsignal(signal.SIGUSR1) == before
    assert (stopped.value.signum, stopped.value.step, stopped.value.requeued) == (10, 1, True)
    assert calls.read_text().splitlines() == ["show job -o 4242", "requeue 4242"]
    assert torch.load(ckpt, weights_only=False)["global_step"] == 1


@pytest.mark.parametrize("ckpt_path", ["auto", None])
def test_sigterm_message_never_claims_the_job_was_not_requeued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ckpt_path: str | None
) -> None:
    """After SIGTERM SLURM may have requeued the job itself (scontrol requeue, a
    preemption): the message says what happens in each case instead of "not requeued"."""
    from types import SimpleNamespace

    from progrow.app.interrupt import interrupted_message

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    settings: Any = SimpleNamespace(ckpt_path=ckpt_path, output_dir=tmp_path)
    stop = FitInterrupted(signal.SIGTERM, 7, str(tmp_path / "last.ckpt"), requeued=False)
    text = interrupted_message(stop, settings)
    assert "not requeued" not in text
    assert "progrow does not requeue on SIGTERM" in text and "if SLURM requeues it" in text
    assert ("resumes from this checkpoint" in text) is (ckpt_path == "auto")
    usr1 = FitInterrupted(signal.SIGUSR1, 7, str(tmp_path / "last.ckpt"), requeued=False)
    assert "SLURM job 4242 not requeued" in interrupted_message(usr1, settings)


class DeadServiceLogger(L.pytorch.loggers.CSVLogger):
    """A logger whose backing service dies at step 3 (as wandb-core does on the job's
    SIGTERM)."""

    last_step = -1

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.last_step = max(self.last_step, step or 0)
        super().log_metrics(metrics, step)

    def save(self) -> None:
        if self.last_step >= 3:
            raise ConnectionResetError("Connection lost")
        super().save()

    def finalize(self, status: str) -> None:
        """As WandbLogger's: nothing that reaches the service."""


def test_a_dead_logger_does_not_stop_the_requeue(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_scontrol(tmp_path, monkeypatch, "RUNNING")
    fake_slurm_job(monkeypatch)
    fit = trainer(
        8,
        [SendSignal(3, signal.SIGUSR1), PreemptionCallback()],
        root=tmp_path,
        logger=DeadServiceLogger(tmp_path / "logs"),
        log_every_n_steps=1,
    )
    with pytest.raises(FitInterrupted) as stopped:
        fit.fit(lm_module(8), datamodule=datamodule(cache))
    assert stopped.value.requeued and stopped.value.step == 4
    assert calls.read_text().splitlines() == ["show job -o 4242", "requeue 4242"]
    assert torch.load(stopped.value.ckpt_path, weights_only=False)["global_step"] == 4


def test_before_requeue_runs_after_the_checkpoint_and_before_the_requeue(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook the app finishes its W&B run in: the checkpoint exists, scontrol has not
    been asked to requeue yet."""
    calls = fake_scontrol(tmp_path, monkeypatch, "RUNNING")
    fake_slurm_job(monkeypatch)
    seen: list[tuple[bool, list[str]]] = []
    ckpt = tmp_path / "stop.ckpt"

    def hook(trainer: L.Trainer) -> None:
        asked = calls.read_text().splitlines() if calls.exists() else []
        seen.append((ckpt.is_file(), asked))

    callback = PreemptionCallback(ckpt, before_requeue=hook)
    fit = trainer(8, [SendSignal(3, signal.SIGUSR1), callback], root=tmp_path)
    with pytest.raises(FitInterrupted) as stopped:
        fit.fit(lm_module(8), datamodule=datamodule(cache))
    assert stopped.value.requeued
    assert seen == [(True, [])]
    assert calls.read_text().splitlines() == ["show job -o 4242", "requeue 4242"]
