"""What run a checkpoint belongs to, and refusing to resume it under another config.

Every checkpoint the app writes records the run's identity (:data:`IDENTITY_KEYS`): the
data fingerprint, the growth schedule (name and resolved stages), the starting model,
``max_steps``, the seed, the number of processes, and the config keys that shape each
step (:data:`CONFIG_KEYS`: batch, optimizer and learning-rate schedule, accumulation,
precision, clipping, growth options). Resuming with any of them changed (e.g. resuming a
quick run without ``experiment=quick``, an ``all_six`` run with ``growth=width_first``, or
with another ``optim.lr``) would silently continue another training than the one the
checkpoint is part of; it is refused with a message naming each change and both values,
unless ``resume_allow_changes=true``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import lightning as L
import torch

from progrow.app.errors import ConfigError
from progrow.app.settings import RunSettings
from progrow.checkpoint_files import check_format
from progrow.config import TransformerConfig

#: Checkpoint key of the run identity.
RUN_KEY = "progrow_run"

#: Identity entries :func:`run_identity` derives: the data fingerprint, the schedule's
#: name and resolved stages, the starting model, ``trainer.max_steps``, the seed, and the
#: training processes (``trainer.devices`` x ``trainer.num_nodes``: with the batch size
#: and accumulation, the global batch).
DERIVED_KEYS: tuple[str, ...] = (
    "fingerprint",
    "growth",
    "stages",
    "model",
    "max_steps",
    "seed",
    "processes",
)
#: Config keys that shape every optimizer step, recorded as the values the run trained
#: with (where the config leaves one out, the default of what reads it). Not here: keys
#: that change no arithmetic of training (``optim.foreach``/``fused``, logging,
#: checkpointing, ``growth.loss_tolerance``/``on_loss_jump``, ``data.val_batches``), and
#: the data selection (``data.source``/``path``/``max_bytes``...), which the fingerprint
#: covers.
CONFIG_KEYS: tuple[str, ...] = (
    "data.batch_size",
    "data.seq_len",
    "data.seed",
    "optim.lr",
    "optim.betas",
    "optim.eps",
    "optim.weight_decay",
    "optim.warmup_steps",
    "optim.min_lr_ratio",
    "optim.schedule",
    "optim.decay_fraction",
    "trainer.accumulate_grad_batches",
    "trainer.precision",
    "trainer.gradient_clip_val",
    "trainer.gradient_clip_algorithm",
    "growth.new_moments",
    "growth.rewarmup_steps",
    "growth.lr_width_exponent",
    "growth.rewarmup_from",
    "growth.lr_fan_in_exponent",
    "growth.optimizer_state",
)
#: The run identity: every entry a checkpoint records and a resume must match.
IDENTITY_KEYS: tuple[str, ...] = DERIVED_KEYS + CONFIG_KEYS


class RunIdentity(L.Callback):
    """Writes ``identity`` into every checkpoint (under :data:`RUN_KEY`)."""

    def __init__(self, identity: dict[str, Any]) -> None:
        self.identity = identity

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RUN_KEY] = dict(self.identity)


def saved_identity(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The run identity stored in a checkpoint (``None`` if it has none); memory-mapped,
    so a large checkpoint is not read into memory for this."""
    path = Path(ckpt_path)
    if path.is_dir():  # a distributed checkpoint (FSDP): all but the tensors is in meta.pt
        path = path / "meta.pt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if isinstance(checkpoint, dict):
        try:
            check_format(checkpoint, f"ckpt_path={ckpt_path}")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    entry = checkpoint.get(RUN_KEY) if isinstance(checkpoint, dict) else None
    return dict(entry) if isinstance(entry, dict) else None


def _stage_steps(stages: list[dict[str, Any]]) -> str:
    return (
        "["
        + ", ".join(
            f"{s.get('step')}: " + " ".join(f"{k}={v}" for k, v in s.items() if k != "step")
            for s in stages
        )
        + "]"
    )


def identity_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Human-readable differences between a checkpoint's run identity and this launch's.

    Example:
        >>> identity_changes({"max_steps": 200, "seed": 0}, {"max_steps": 3000, "seed": 0})
        ['max_steps 200 -> 3000']
        >>> identity_changes({"optim.lr": 0.003}, {"optim.lr": 0.001})
        ['optim.lr 0.003 -> 0.001']
    """
    changes = []
    if saved.get("fingerprint") != now.get("fingerprint"):
        changes.append(f"data fingerprint {saved.get('fingerprint')} -> {now.get('fingerprint')}")
    saved_list = saved.get("stages") or []
    if saved_list != (now.get("stages") or []) or saved.get("growth") != now.get("growth"):
        changes.append(
            f"growth schedule {saved.get('growth')} {_stage_steps(saved_list)} "
            f"-> {now.get('growth')} {_stage_steps(now.get('stages') or [])}"
        )
    old_model, new_model = saved.get("model") or {}, now.get("model") or {}
    diff = [
        f"{k} {old_model.get(k)} -> {new_model.get(k)}"
        for k in sorted(set(old_model) | set(new_model))
        if old_model.get(k) != new_model.get(k)
    ]
    if diff:
        changes.append("model " + ", ".join(diff))
    for key in ("max_steps", "seed", "processes", *CONFIG_KEYS):
        if saved.get(key) != now.get(key):
            changes.append(f"{key} {_show(saved.get(key))} -> {_show(now.get(key))}")
    return changes


def _show(value: Any) -> str:
    """A config value as it is written on the command line (``null`` for ``None``)."""
    return "null" if value is None else str(value)


def check_resume(ckpt_path: str, identity: dict[str, Any], allow_changes: bool) -> list[str]:
    """Refuse to resume ``ckpt_path`` under a config that differs from its run's.

    Returns the changes; raises :class:`ConfigError` naming them unless ``allow_changes``.
    A checkpoint without a run identity (written by a training script of your own, not
    by the app) cannot be compared: refused too, unless ``allow_changes``.
    """
    saved = saved_identity(ckpt_path)
    if saved is None:
        if not allow_changes:
            raise ConfigError(
                f"ckpt_path={ckpt_path}: the checkpoint records no run of the app (no "
                f"'{RUN_KEY}' entry: written by another training script), so this launch's "
                "config cannot be checked against it; pass resume_allow_changes=true to "
                "continue it under this config"
            )
        return ["(the checkpoint records no run identity: nothing compared)"]
    changes = identity_changes(saved, identity)
    if changes and not allow_changes:
        raise ConfigError(
            f"ckpt_path={ckpt_path}: this launch's config differs from the checkpoint's run: "
            + "; ".join(changes)
            + ". Resume with the run's own config (e.g. the same experiment=/growth=), or "
            "pass resume_allow_changes=true to continue it under the new one"
        )
    return changes


def run_identity(
    settings: RunSettings, model: TransformerConfig, fingerprint: str
) -> dict[str, Any]:
    """This launch's run identity (what :func:`check_resume` compares): every entry of
    :data:`IDENTITY_KEYS`."""
    from progrow.app.checks import world_size

    derived = {
        "fingerprint": fingerprint,
        "growth": settings.growth.name,
        "stages": settings.growth.schedule.to_list(),
        "model": model.to_dict(),
        "max_steps": settings.max_steps,
        "seed": settings.seed,
        "processes": world_size(settings.trainer),
    }
    assert tuple(derived) == DERIVED_KEYS
    return {**derived, **{key: config_value(settings.raw, key) for key in CONFIG_KEYS}}


def config_value(raw: dict[str, Any], key: str) -> Any:
    """The value of the dotted ``key`` (``section.name``) a run trains with: the resolved
    config's, else the default of what reads that section (so a config that leaves a key
    out and one that spells out its default are the same run)."""
    section, name = key.split(".")
    values = raw.get(section) or {}
    value = values[name] if name in values else _defaults(section)[name]
    return list(value) if isinstance(value, tuple) else value  # as the config writes it


def _defaults(section: str) -> dict[str, Any]:
    """The defaults of the parameters that the keys of config ``section`` become."""
    from progrow.optim import OptimConfig
    from progrow.training import GrowthCallback, LMDataModule

    reader: Any = {
        "data": LMDataModule.__init__,
        "optim": OptimConfig,
        "trainer": L.Trainer.__init__,
        "growth": GrowthCallback.__init__,
    }[section]
    return {
        name: param.default
        for name, param in inspect.signature(reader).parameters.items()
        if param.default is not inspect.Parameter.empty
    }
