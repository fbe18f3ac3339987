"""What a user sees on the console: one line per message, no adverts, and errors in the
config as one clean line instead of a traceback."""

from __future__ import annotations

import difflib
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from progrow.app.errors import ConfigError

#: Lightning's messages that are not about the run (an advert).
_NOISE = ("litlogger",)


def _not_noise(record: logging.LogRecord) -> bool:
    return not any(word in str(record.msg) for word in _NOISE)


def quiet_lightning() -> None:
    """Print each Lightning message once, drop its advert and known-harmless warnings.

    Lightning's top-level logger has its own console handler and also propagates to the
    root logger, where Hydra has installed its console and ``train.log`` handlers: every
    line would be printed twice. With the root configured, Lightning's handler is dropped
    (the root prints the line and writes it to ``train.log``).
    """
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_noise not in rank_zero.filters:
        rank_zero.addFilter(_not_noise)
    # torch deprecated pytree's LeafSpec, which Lightning's own code still uses.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    if "SLURM_JOB_ID" not in os.environ:
        # Lightning suggests srun whenever it is on PATH (a cluster's login node); the hint
        # only matters inside a SLURM allocation, where it stays.
        warnings.filterwarnings("ignore", message=r".*The `srun` command is available.*")
    # ModelCheckpoint warns that its folder holds files whenever a run resumes into its
    # own folder. It could only overwrite checkpoints, and the app refuses a fresh start
    # into a folder holding checkpoints before the Trainer exists (resolve_ckpt_path).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # Resuming into a new run folder: the checkpoint callback does not reload its
    # bookkeeping of the old folder's files, which a run writing elsewhere must leave
    # alone anyway (the app's default keeps every checkpoint and monitors nothing).
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from .* won't be reloaded")


#: Lightning's warning that a DistributedSampler may evaluate some samples twice.
_VAL_SAMPLER = r"Using `DistributedSampler` with the dataloaders\. During `trainer\.validate\(\)`"


def check_val_split(val_batches: int, processes: int | None) -> str | None:
    """Under DDP/FSDP each process validates every ``processes``-th batch of the fixed
    validation set, and Lightning's sampler repeats batches to give all as many. When
    ``val_batches`` is a multiple of ``processes`` nothing repeats: Lightning's warning
    about it (at the final ``trainer.validate``) is dropped. Otherwise the repeated
    batches count twice in ``val/loss``; returns a message naming the key (and drops
    Lightning's, which it replaces). ``processes=None`` (unknown): Lightning's stays."""
    if processes is None or processes <= 1:
        return None
    warnings.filterwarnings("ignore", message=_VAL_SAMPLER)
    extra = -val_batches % processes
    if extra == 0:
        return None
    return (
        f"data.val_batches={val_batches} does not split over {processes} processes: "
        f"validation repeats {extra} batch(es), which count twice in val/loss; use a "
        f"multiple of {processes}"
    )


def user_error(err: BaseException) -> str | None:
    """A one-line message for an error in the user's config (``None`` for anything else):
    a :class:`ConfigError`, a YAML syntax error in a config file, or Hydra's composition
    and override errors. Looks through the exception's causes."""
    import yaml
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConfigError):
            return str(current)
        if isinstance(current, yaml.MarkedYAMLError):
            mark = current.problem_mark or current.context_mark
            where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            what = "; ".join(p for p in (current.context, current.problem) if p)
            return f"YAML syntax error in {where}: {what}"
        if isinstance(current, yaml.YAMLError):
            return f"YAML syntax error: {current}"
        if isinstance(current, OverrideParseException):
            message = " ".join(current.message.split())
            return f"cannot parse the override {current.override!r}: {message}"
        if isinstance(current, ConfigCompositionException):
            unknown = unknown_key(current)
            if unknown is not None:
                return unknown
        if isinstance(current, (ConfigCompositionException, MissingConfigException)):
            return " ".join(str(current).split("Config search path:")[0].split())
        current = current.__cause__ or current.__context__
    return None


def unknown_key(err: BaseException) -> str | None:
    """For Hydra's "Could not override 'trainer.max_stepz'. To append to your config use
    +trainer.max_stepz=100" (a key the composed config does not have): a message naming
    the closest existing key, e.g. ``trainer.max_stepz: no such key in the config; did
    you mean trainer.max_steps?``, or Hydra's ``+`` advice when no key is close. ``None``
    for any other error."""
    from omegaconf import Container
    from omegaconf.errors import OmegaConfBaseException

    match = re.match(r"Could not override '([^']+)'", str(err))
    if match is None:
        return None
    key = match.group(1)
    seen: set[int] = set()
    cause = err.__cause__ or err.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        parent = getattr(cause, "parent_node", None)
        if isinstance(cause, OmegaConfBaseException) and isinstance(parent, Container):
            keys = list(_dotted_keys(parent._get_root()))
            if key in keys:
                return None  # missing for another reason: Hydra's message stays
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
            if close:
                return f"{key}: no such key in the config; did you mean {close[0]}?"
            append = re.search(r"use (\+\S+)", str(err))
            hint = f" (to add it, use {append.group(1)})" if append else ""
            return f"{key}: no such key in the config{hint}"
        cause = cause.__cause__ or cause.__context__
    return None


def _dotted_keys(node: object, prefix: str = "") -> Iterator[str]:
    """Every key of a config, dotted as on the command line (``growth.stages.0.step``);
    values are not resolved (``???`` and interpolations are fine)."""
    from omegaconf import DictConfig, ListConfig

    if not isinstance(node, (DictConfig, ListConfig)) or node._is_none() or node._is_missing():
        return
    names: Iterable[Any] = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for name in names:
        key = f"{prefix}{name}"
        yield key
        yield from _dotted_keys(node._get_node(name), key + ".")


def remove_if_unused(output_dir: Path) -> bool:
    """Delete a run folder that a failed launch left with nothing but Hydra's files
    (``.hydra/`` and ``*.log``); a folder holding anything else (an earlier run's
    checkpoints or logs) is kept. Returns whether it was deleted."""
    if not output_dir.is_dir():
        return False
    for entry in output_dir.iterdir():
        hydra_files = entry.name == ".hydra" and entry.is_dir()
        if not (hydra_files or (entry.is_file() and entry.suffix == ".log")):
            return False
    shutil.rmtree(output_dir)
    return True
