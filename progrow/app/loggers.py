"""What the app adds to and reads from its Lightning loggers: the W&B run id that makes a
resumed job continue the same run, and per logger its name, folder and (W&B) whether its
service was lost, for the run summary and the console."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from progrow.app.settings import RunSettings


def logger_extras(config: dict[str, Any], settings: RunSettings) -> dict[str, Any]:
    """W&B: a run id stored in the run folder, so a resumed job continues the same run."""
    if not str(config.get("_target_", "")).endswith("WandbLogger") or config.get("id"):
        return {}
    from progrow.app.wandb_extras import stable_run_id

    return {"id": stable_run_id(settings.output_dir), "resume": "allow"}


def logger_entries(loggers: Sequence[Any]) -> list[dict[str, Any]]:
    """Per logger that writes to a folder: ``{"logger": name, "dir": folder}``, with
    ``lost_at_step`` and ``error`` for a W&B logger whose service died mid-run."""
    return [
        {"logger": _name(lg), "dir": d, **_service_lost(lg)}
        for lg in loggers
        if (d := _log_dir(lg)) is not None
    ]


def _name(logger: Any) -> str:
    """``csv``, ``wandb``, ``tensorboard``, ... from Lightning's logger class name."""
    return type(logger).__name__.removesuffix("Logger").lower() or type(logger).__name__


def _service_lost(logger: Any) -> dict[str, Any]:
    from progrow.app import wandb_extras

    guard = wandb_extras.service_lost(logger)
    return {} if guard is None else {"lost_at_step": guard.lost_at_step, "error": repr(guard.error)}


def _log_dir(logger: Any) -> str | None:
    for attr in ("log_dir", "save_dir"):
        value = getattr(logger, attr, None)
        if value:
            return str(value)
    return None
