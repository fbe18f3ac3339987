"""The architecture travels with every checkpoint, and is rebuilt before weights load.

Lightning loads the state dict right after the LightningModule's ``on_load_checkpoint``
(and before the strategy's setup), so that hook is the last moment to give the module the
grown shapes. :func:`restore_architecture` does it; :class:`progrow.training.LMModule`
calls it from its own hook, and :class:`progrow.GrowthCallback` installs it on a user's
module during ``setup``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from progrow.config import TransformerConfig
from progrow.model import Transformer
from progrow.offline import CHECKPOINT_KEY
from progrow.surgery import param_names


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


def set_transformer(module: nn.Module, attr: str, model: Transformer) -> None:
    parent_path, _, leaf = attr.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, leaf, model)


def build_like(config: TransformerConfig, like: Transformer) -> Transformer:
    """An uninitialized Transformer of ``config`` on ``like``'s device and dtype.

    Built on the meta device, so it draws nothing from the global RNG (a resumed run's
    random stream must not depend on whether the model was rebuilt).
    """
    ref = next(like.parameters())
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device=ref.device)
    model.to(dtype=ref.dtype)
    if config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    return model.train(like.training)


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
    """Write the current architecture, the optimizers' parameter names (when given) and
    ``extra`` values into ``checkpoint``."""
    entry = checkpoint.setdefault(CHECKPOINT_KEY, {})
    entry["model_config"] = find_transformer(module, attr).config.to_dict()
    if optimizers is not None:
        entry["optimizer_params"] = optimizer_param_names(module, optimizers)
    entry.update(extra)


def restore_architecture(
    module: nn.Module, checkpoint: dict[str, Any], attr: str = "model"
) -> bool:
    """Rebuild ``module.<attr>`` with the checkpoint's architecture if it differs.

    Returns whether it rebuilt. A checkpoint without progrow's entry leaves the module
    as it is (a plain Lightning checkpoint of the same shapes still loads).
    """
    entry = checkpoint.get(CHECKPOINT_KEY)
    if not entry or "model_config" not in entry:
        return False
    config = TransformerConfig.from_dict(entry["model_config"])
    current = find_transformer(module, attr)
    if config == current.config:
        return False
    if _get(module, attr) is not current:
        raise RuntimeError(
            f"{attr} is wrapped (e.g. by torch.compile); restoring a grown checkpoint "
            "needs the plain Transformer: compile after loading"
        )
    set_transformer(module, attr, build_like(config, current))
    return True
