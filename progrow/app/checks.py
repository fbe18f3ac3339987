"""Checks that need the machine or the file system: devices, and what to resume from.

Both run before the Trainer is built, so a job that cannot work stops in seconds with a
message naming the key, and never touches an earlier run's files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from progrow.app.errors import ConfigError


def count_devices(devices: Any) -> int | None:
    """How many devices ``trainer.devices`` asks for; ``None`` for "all" (``auto``, -1)."""
    if isinstance(devices, bool):
        raise ConfigError(f"trainer.devices={devices!r}: must be an int, a list or 'auto'")
    if devices in ("auto", -1, "-1", None):
        return None
    if isinstance(devices, int):
        if devices <= 0:
            raise ConfigError(f"trainer.devices={devices!r}: must be positive, -1 or 'auto'")
        return devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        parts = [p for p in devices.split(",") if p.strip()]
        if len(parts) == 1 and parts[0].strip().isdigit() and "," not in devices:
            return count_devices(int(parts[0]))
        return len(parts)
    raise ConfigError(f"trainer.devices={devices!r}: must be an int, a list or 'auto'")


def world_size(trainer: dict[str, Any]) -> int | None:
    """Training processes ``trainer`` asks for (devices x nodes); ``None`` for "all"."""
    per_node = count_devices(trainer.get("devices", "auto"))
    return None if per_node is None else per_node * int(trainer.get("num_nodes", 1) or 1)


def check_devices(trainer: dict[str, Any]) -> None:
    """Fail unless the machine has the accelerator and devices ``trainer`` asks for.

    On CPU, ``devices`` is a number of processes; more than the CPU cores is refused.
    Multi-node jobs are checked per node (``devices`` is per node in Lightning).
    """
    accelerator = str(trainer.get("accelerator", "auto"))
    requested = count_devices(trainer.get("devices", "auto"))
    nodes = trainer.get("num_nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes <= 0:
        raise ConfigError(f"trainer.num_nodes={nodes!r}: must be a positive integer")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator={accelerator!r}: no CUDA GPU is visible on this machine "
                "(torch.cuda.is_available() is False); use trainer=cpu or trainer=ddp_cpu"
            )
        available, kind = torch.cuda.device_count(), "CUDA GPU(s)"
    elif accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator!r}: MPS is not available here")
        available, kind = 1, "MPS device"
    elif accelerator == "cpu":
        available, kind = os.cpu_count() or 1, "CPU core(s) (one process per device)"
    elif accelerator in ("auto", "tpu", "hpu"):
        return  # Lightning's own checks apply
    else:
        raise ConfigError(
            f"trainer.accelerator={accelerator!r}: unknown; use cpu, gpu, mps or auto"
        )
    if requested is not None and requested > available:
        raise ConfigError(
            f"trainer.devices={trainer.get('devices')!r}: this machine has {available} {kind}"
        )


def _step_of(path: Path) -> int:
    match = re.search(r"step[=_](\d+)", path.name)
    return int(match.group(1)) if match else -1


def existing_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoints already in ``ckpt_dir``: files, or folders of sharded ones (FSDP)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(ckpt_dir.glob("*.ckpt"))


def resolve_ckpt_path(ckpt_path: str | None, ckpt_dir: Path) -> str | None:
    """The checkpoint to resume from, or ``None`` for a fresh start.

    * ``None``: a fresh start, refused if ``ckpt_dir`` already holds checkpoints (an
      earlier run's: starting over would overwrite them);
    * ``"auto"``: the newest ``ckpt_dir/last*.ckpt`` (Lightning writes ``last-v1.ckpt``
      rather than overwrite a ``last.ckpt`` it did not write itself), else the highest
      ``step_N.ckpt``, else a fresh start (a requeued SLURM job continues, a first launch
      starts);
    * a path: that file, which must exist; if ``ckpt_dir`` holds checkpoints, it must be
      the newest of them (resuming from an older one would overwrite the later ones).

    Resuming never deletes anything: the checkpoint callback keeps every file
    (``save_top_k=-1``) and only rewrites ``last.ckpt`` once the run has progressed.
    """
    existing = existing_checkpoints(ckpt_dir)
    if ckpt_path is None:
        if existing:
            raise ConfigError(
                f"paths.ckpt_dir={str(ckpt_dir)!r} already holds {len(existing)} checkpoint(s) "
                f"of an earlier run (e.g. {existing[-1].name}); a fresh start would overwrite "
                "them. Pass ckpt_path=auto to resume that run, or use a new hydra.run.dir"
            )
        return None
    if ckpt_path == "auto":
        lasts = sorted(ckpt_dir.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
        if lasts:
            return str(lasts[-1])
        steps = sorted(existing, key=_step_of)
        return str(steps[-1]) if steps else None
    path = Path(ckpt_path).expanduser()
    if not path.exists():  # a file, or a folder (a distributed checkpoint under FSDP)
        raise ConfigError(f"ckpt_path={ckpt_path!r}: no such checkpoint file or folder")
    newest = {p.resolve() for p in ckpt_dir.glob("last*.ckpt")}
    if existing:
        newest.add(max(existing, key=_step_of).resolve())
    if existing and path.resolve() not in newest:
        raise ConfigError(
            f"ckpt_path={ckpt_path!r}: paths.ckpt_dir={str(ckpt_dir)!r} holds later checkpoints "
            "that resuming from an older one would overwrite; resume into a new hydra.run.dir"
        )
    return str(path)
