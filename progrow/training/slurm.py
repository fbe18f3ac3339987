"""Talking to SLURM: this process's job id, a job's state, and requeueing a job
(``scontrol``); :class:`~progrow.training.PreemptionCallback` requeues with these."""

from __future__ import annotations

import logging
import os
import re
import subprocess

log = logging.getLogger(__name__)


def slurm_job_id() -> str | None:
    """This process's SLURM job id (``<array job>_<task>`` for array jobs), else ``None``."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    array_task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID") or None


#: Job states in which a requeue would undo a decision already taken: the user cancelled
#: the job (``scancel`` also sends SIGTERM), or SLURM has requeued it itself (preemption
#: with ``PreemptMode=REQUEUE``).
NO_REQUEUE_STATES = frozenset(
    {"CANCELLED", "COMPLETED", "PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"}
)


def _scontrol(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            ["scontrol", *args], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        log.error("scontrol %s: %s", " ".join(args), err)
        return None


def slurm_job_state(job_id: str) -> str | None:
    """The job's ``JobState`` (``RUNNING``, ``CANCELLED``, ...) from ``scontrol``, or
    ``None`` if it cannot be read."""
    result = _scontrol("show", "job", "-o", job_id)
    match = re.search(r"\bJobState=(\S+)", result.stdout) if result else None
    return match.group(1) if match else None


def requeue_slurm_job(job_id: str) -> bool:
    """``scontrol requeue <job_id>`` unless the job was cancelled or is already requeued
    (see :data:`NO_REQUEUE_STATES`); returns whether it requeued (reasons are logged).

    SLURM then ends the running job and queues it again under the same id (it becomes
    eligible after a begin-time delay, about two minutes on SLURM 22.05).
    """
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id):
        raise ValueError(f"job_id={job_id!r}: not a SLURM job id")
    state = slurm_job_state(job_id)
    if state in NO_REQUEUE_STATES:
        log.warning("SLURM job %s is %s: not requeued", job_id, state)
        return False
    result = _scontrol("requeue", job_id)
    if result is None:
        return False
    if result.returncode != 0:
        log.error(
            "scontrol requeue %s failed (exit %d): %s",
            job_id,
            result.returncode,
            (result.stderr or result.stdout).strip(),
        )
        return False
    return True


__all__ = ["NO_REQUEUE_STATES", "requeue_slurm_job", "slurm_job_id", "slurm_job_state"]
