"""What a launch of the training app prepares, and checks, before the Trainer exists.

:func:`prepare` runs the cheap checks (devices, the resume target), seeds, loads the data
(its vocabulary sizes the model), builds the starting model, fits a compute budget,
checks the growth schedule against the model and ``max_steps`` and the resume against the
checkpoint's run, and returns the :class:`Job` that :mod:`progrow.app.train` trains.
Anything wrong in the config raises :class:`progrow.app.ConfigError` here, before any
training.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from progrow.app.settings import RunSettings

if TYPE_CHECKING:  # the app imports Lightning lazily, inside the functions
    from progrow.config import TransformerConfig

log = logging.getLogger(__name__)


@dataclass
class Job:
    """What a launch has prepared, and checked, before the Trainer exists."""

    settings: RunSettings
    """The settings, with ``max_steps`` derived from a compute budget if one was given."""
    resume: str | None
    """Checkpoint to resume from."""
    datamodule: Any
    model_cfg: TransformerConfig
    """The starting architecture."""
    module: Any
    growth: Any
    budget_flops: float | None
    hf_start: Any
    """The imported Hugging Face model (``hf.init_from``), or ``None``."""
    identity: dict[str, Any]
    """What checkpoints record about the run (:mod:`progrow.app.resume`)."""


def prepare(settings: RunSettings) -> Job:
    """Everything up to the Trainer: checks, seed, data, model, schedule, resume target."""
    import lightning as L
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from progrow.app import hf_io
    from progrow.app.checks import check_devices, resolve_ckpt_path, world_size
    from progrow.app.console import check_val_split, quiet_lightning
    from progrow.app.growth_settings import validate_schedule
    from progrow.app.interrupt import resume_message
    from progrow.app.resume import check_resume, run_identity
    from progrow.app.settings import with_compute_budget
    from progrow.training import LMModule

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    quiet_lightning()
    check_devices(settings.trainer)
    hf_io.check_folders(settings.hf_init_from, settings.hf_export_to)
    resume = resolve_ckpt_path(settings.ckpt_path, settings.ckpt_dir)
    message = resume_message(settings.ckpt_path, resume, settings.ckpt_dir)
    if message and getattr(rank_zero_only, "rank", 0) == 0:
        print(message, flush=True)
    L.seed_everything(settings.seed, workers=True)

    datamodule = _datamodule(settings)
    uneven = check_val_split(datamodule.val_batches, world_size(settings.trainer))
    if uneven and getattr(rank_zero_only, "rank", 0) == 0:
        log.warning(uneven)
    model_cfg, hf_start = _start_model(settings, datamodule)
    budget_flops = None
    if settings.budget_steps is not None:
        settings, budget_flops = with_compute_budget(
            settings, model_cfg, datamodule.batch_size, datamodule.seq_len
        )
    validate_schedule(settings.growth, model_cfg, settings.max_steps)
    if settings.hf_export_to is not None:
        hf_io.check_export(settings.hf_export_to, model_cfg, settings.growth)
    optim, growth = optimizer_and_growth(settings)
    module = LMModule(model_cfg, optim, compile=settings.compile)
    identity = run_identity(settings, model_cfg, datamodule.fingerprint)
    if resume is not None:
        for change in check_resume(resume, identity, settings.resume_allow_changes):
            log.warning("resuming with a changed config (resume_allow_changes=true): %s", change)
    if hf_start is not None:
        module.model.load_state_dict(hf_start.model.state_dict())
    return Job(
        settings, resume, datamodule, model_cfg, module, growth, budget_flops, hf_start, identity
    )


def _datamodule(settings: RunSettings) -> Any:
    """The data module, its corpus loaded (or its cache built): the vocabulary sizes the
    model."""
    from progrow.app.errors import ConfigError
    from progrow.training import LMDataModule

    try:
        datamodule = LMDataModule(**settings.data)
        datamodule.vocab_size  # noqa: B018  (loads the corpus)
    except (TypeError, ValueError, FileNotFoundError) as err:
        # A bad data.* value or a missing data.path: a config error, one line on the CLI.
        raise ConfigError(f"data: {err}") from None
    return datamodule


def _start_model(settings: RunSettings, datamodule: Any) -> tuple[TransformerConfig, Any]:
    """The starting architecture: an imported model's (``hf.init_from``), else
    ``cfg.model`` with the data's vocabulary and sequence length."""
    from progrow.app import hf_io
    from progrow.app.settings import model_config

    vocab_size, seq_len = datamodule.vocab_size, datamodule.seq_len
    if settings.hf_init_from is not None:  # its architecture replaces cfg.model
        hf_start = hf_io.load_start(settings.hf_init_from, vocab_size, seq_len)
        return hf_start.model.config, hf_start
    return model_config(settings, vocab_size, seq_len), None


def optimizer_and_growth(settings: RunSettings) -> tuple[Any, Any]:
    """The optimizer config and the growth callback, their errors named by config key."""
    from progrow.app.errors import ConfigError
    from progrow.optim import OptimConfig
    from progrow.training import GrowthCallback

    try:
        optim = OptimConfig(**settings.optim, max_steps=settings.max_steps)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"optim: {err}") from None
    try:
        growth = GrowthCallback(
            settings.growth.schedule,
            seed=settings.seed,
            # check_resume has refused a changed schedule unless the user allowed it
            resume_allow_changes=settings.resume_allow_changes,
            **settings.growth.options,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"growth: {err}") from None
    return optim, growth
