"""The architecture in checkpoints.

A :class:`progrow.Transformer` carries its config in its own state dict, and a state dict
of another config fails to load into it (as torch's does for other shapes): the model
never changes size behind an optimizer's back. Restoring a grown checkpoint into a module
built at the starting size is an explicit step, taken before any optimizer exists:
:func:`load_architecture` from a LightningModule's ``on_load_checkpoint`` (``LMModule``
does; a module of your own calls it there too, for ``load_from_checkpoint`` and
``validate``/``test``/``predict(ckpt_path=...)``), and :func:`rebuild_on_load` while the
:class:`~progrow.GrowthCallback` restores a fit. Lightning checkpoints also hold the
config under ``checkpoint["progrow"]["model_config"]`` (:func:`save_architecture`), for
readers of checkpoints, with the checkpoint format's version: a checkpoint of another
format is refused on load (:func:`progrow.checkpoint_files.check_format`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from progrow.checkpoint_files import CHECKPOINT_FORMAT, CHECKPOINT_KEY, check_format
from progrow.model import Transformer, state_dict_config
from progrow.optimizer_layout import param_names


def _get(module: nn.Module, attr: str) -> Any:
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise AttributeError(
                f"{type(module).__name__} has no attribute {attr!r}: progrow looks for the "
                "Transformer there (pass model_attr=... to point elsewhere)"
            )
        target = getattr(target, part)
    return target


def find_transformer(module: nn.Module, attr: str = "model") -> Transformer:
    """The :class:`Transformer` at ``module.<attr>`` (dotted paths allowed; a
    ``torch.compile`` wrapper is looked through)."""
    target = _get(module, attr)
    target = getattr(target, "_orig_mod", target)
    if not isinstance(target, Transformer):
        raise TypeError(
            f"{type(module).__name__}.{attr} is a {type(target).__name__}, "
            "expected a progrow.Transformer"
        )
    return target


def optimizer_param_names(
    module: nn.Module, optimizers: Sequence[torch.optim.Optimizer]
) -> list[list[list[str]]]:
    """Per optimizer, per param group, the names of its parameters in ``module``.

    A saved optimizer state refers to parameters by position only; these names are what
    lets offline growth (:mod:`progrow.offline`) tell which state belongs to which tensor.
    """
    names = param_names(module)
    return [
        [[names.get(id(p), "") for p in group["params"]] for group in optimizer.param_groups]
        for optimizer in optimizers
    ]


def save_architecture(
    module: nn.Module,
    checkpoint: dict[str, Any],
    attr: str = "model",
    optimizers: Sequence[torch.optim.Optimizer] | None = None,
    **extra: Any,
) -> None:
    """Write the checkpoint format, the current architecture, the optimizers' parameter
    names (when given) and ``extra`` values into ``checkpoint``."""
    entry = checkpoint.setdefault(CHECKPOINT_KEY, {})
    entry["format"] = CHECKPOINT_FORMAT
    entry["model_config"] = find_transformer(module, attr).config.to_dict()
    if optimizers is not None:
        entry["optimizer_params"] = optimizer_param_names(module, optimizers)
    entry.update(extra)


def _state_prefix(module: nn.Module, attr: str) -> str:
    """The prefix of the Transformer's entries in ``module``'s state dict (``"model."``)."""
    target = find_transformer(module, attr)
    name = next(name for name, sub in module.named_modules() if sub is target)
    return f"{name}." if name else ""


def load_architecture(module: nn.Module, checkpoint: dict[str, Any], attr: str = "model") -> bool:
    """Rebuild ``module.<attr>`` to the architecture of ``checkpoint``'s state dict, so that
    the state dict loads next; returns whether the architecture changed.

    Call it from ``on_load_checkpoint`` (Lightning calls that before loading the state
    dict and before building optimizers). A checkpoint of another progrow checkpoint
    format is refused with a ``ValueError`` naming both versions.
    """
    check_format(checkpoint, "checkpoint")
    target = find_transformer(module, attr)
    config = state_dict_config(checkpoint.get("state_dict") or {}, _state_prefix(module, attr))
    if config is None or config == target.config:
        return False
    target.rebuild(config)
    return True


def rebuild_on_load(model: Transformer) -> RemovableHandle:
    """Until the returned handle is removed, a state dict loading into ``model`` first
    rebuilds it to the state dict's architecture.

    For a restore that happens before any optimizer exists (the growth callback's resume
    of a fit, whatever the user's module does in ``on_load_checkpoint``); remove the
    handle once restored, so later loads fail on another size instead.
    """

    def rebuild(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        config = state_dict_config(state_dict, prefix)
        if config is not None:
            model.rebuild(config)

    return model.register_load_state_dict_pre_hook(rebuild)
