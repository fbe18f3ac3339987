"""What the app says about resuming and stopping, and the SLURM plugin it passes.

A run stopped by Ctrl-C, a SLURM time limit or a preemption has saved a checkpoint
(:class:`progrow.training.PreemptionCallback`); the user is told where and how to
continue. ``ckpt_path=auto`` says whether it resumes or starts fresh.
"""

from __future__ import annotations

import shlex
import signal
from pathlib import Path
from typing import Any

from progrow.app.settings import RunSettings
from progrow.training.signals import FitInterrupted, signal_name
from progrow.training.slurm import slurm_job_id

#: Overrides that name the run folder and the resume point: the hint sets its own.
_RESUME_KEYS = ("hydra.run.dir=", "ckpt_path=")


def resume_message(ckpt_path: str | None, resume: str | None, ckpt_dir: Path) -> str | None:
    """What ``ckpt_path=auto`` decided, in one line (``None`` for other settings).

    Example:
        >>> resume_message("auto", None, Path("runs/a/checkpoints"))
        'ckpt_path=auto: no checkpoint in runs/a/checkpoints; starting a fresh run'
    """
    if ckpt_path != "auto":
        return None
    if resume is None:
        return f"ckpt_path=auto: no checkpoint in {ckpt_dir}; starting a fresh run"
    return f"ckpt_path=auto: resuming from {resume}"


def continue_command(output_dir: Path) -> str:
    """The command that continues the run in ``output_dir``: its launch overrides (from
    Hydra's ``.hydra/overrides.yaml``), the same folder and ``ckpt_path=auto``."""
    overrides: list[str] = []
    saved = output_dir / ".hydra" / "overrides.yaml"
    if saved.is_file():
        from omegaconf import OmegaConf

        loaded = OmegaConf.to_container(OmegaConf.load(saved))
        if isinstance(loaded, list):
            overrides = [str(o) for o in loaded if not str(o).startswith(_RESUME_KEYS)]
    args = [*overrides, f"hydra.run.dir={output_dir}", "ckpt_path=auto"]
    return "python -m progrow.train " + " ".join(shlex.quote(a) for a in args)


def interrupted_message(stop: FitInterrupted, settings: RunSettings) -> str:
    """Where the checkpoint of a stopped run is and what happens next."""
    lines = [
        f"Stopped by {signal_name(stop.signum)} at step {stop.step}; "
        f"checkpoint saved: {stop.ckpt_path}"
    ]
    if stop.requeued:
        lines.append(
            f"SLURM job {slurm_job_id()} requeued: its next attempt resumes from this "
            "checkpoint (ckpt_path=auto in the same run folder)."
        )
        return "\n".join(lines)
    job = slurm_job_id()
    if stop.signum == signal.SIGTERM and job is not None:
        # scancel, a preemption, scontrol requeue and the time limit all send SIGTERM:
        # progrow never requeues on it; SLURM requeues a preempted or requeued job itself.
        resumes = (
            "resumes from this checkpoint (ckpt_path=auto)"
            if settings.ckpt_path == "auto"
            else "starts over: it was not launched with ckpt_path=auto"
        )
        lines.append(
            f"SLURM job {job}: progrow does not requeue on SIGTERM. After scancel or the time "
            f"limit the job ends here; if SLURM requeues it (a preemption, scontrol requeue), "
            f"its next attempt {resumes}."
        )
    elif stop.signum != signal.SIGINT and job is not None:
        why = (
            "see the log above"
            if settings.ckpt_path == "auto"
            else "without ckpt_path=auto a requeued attempt would not resume"
        )
        lines.append(f"SLURM job {job} not requeued ({why}).")
    lines.append(f"Continue with: {continue_command(settings.output_dir)}")
    return "\n".join(lines)


def slurm_plugins(trainer: dict[str, Any]) -> list[Any]:
    """``[SLURMEnvironment(auto_requeue=False)]`` inside a SLURM job, else ``[]``.

    progrow's :class:`~progrow.training.PreemptionCallback` requeues the job (after a
    checkpoint at a step boundary); Lightning's own SLURM requeue must not as well. A
    ``trainer.plugins`` of the config is left alone.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if trainer.get("plugins") or not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=False)]
