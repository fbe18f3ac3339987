"""Offline growth's side of the checkpoint: live objects from it and a grown one back.

:func:`load_model` and :func:`load_optimizers` turn a loaded progrow training checkpoint
into a module and live optimizers that :func:`progrow.surgery.grow_with_optimizers` can
grow; :func:`assemble_checkpoint` puts the grown ones back into a copy of the checkpoint
(numbering optimizer state as the checkpoint did), and :func:`write_checkpoint` writes it,
never over an existing file (:func:`refuse_existing`). :mod:`progrow.offline` grows with
these.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from progrow.checkpoint_files import CHECKPOINT_KEY
from progrow.config import TransformerConfig
from progrow.model import Transformer
from progrow.optimizer_layout import param_names


def load_model(state: Mapping[str, Tensor], config: TransformerConfig, prefix: str) -> nn.Module:
    """A module whose parameter names are the checkpoint's (``prefix`` + Transformer names)."""
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(f"state_dict has no parameters under {prefix!r} (model_attr)")
    # The parameters' dtype (the state dict also holds the config as a uint8 tensor).
    dtype = next(v.dtype for v in sub.values() if v.is_floating_point())
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device="cpu").to(dtype=dtype)
    if config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    model.load_state_dict(sub)  # strict: a wrong architecture fails here, naming the keys
    holder: nn.Module = model
    for part in reversed(prefix.rstrip(".").split(".") if prefix else []):
        outer = nn.Module()
        outer.add_module(part, holder)
        holder = outer
    return holder


def _optimizer_class(groups: list[Mapping[str, Any]]) -> Callable[..., torch.optim.Optimizer]:
    """The torch optimizer a saved state belongs to, from its param-group keys."""
    if all("betas" in g for g in groups):
        decoupled = groups[0].get("decoupled_weight_decay", True)
        return torch.optim.AdamW if decoupled else torch.optim.Adam
    if all("momentum" in g and "dampening" in g for g in groups):
        return torch.optim.SGD
    raise ValueError(f"unsupported optimizer state (group keys {sorted(groups[0])})")


def _check_state_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Every loaded state tensor (but ``step``) has its parameter's shape."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if key != "step" and isinstance(value, Tensor) and value.shape != p.shape:
                    raise ValueError(
                        f"optimizer state {key!r} has shape {tuple(value.shape)} but its "
                        f"parameter {tuple(p.shape)}: optimizer_params do not fit the state"
                    )


def _optimizer(
    saved: Mapping[str, Any], names: list[list[str]], params: Mapping[str, Tensor]
) -> torch.optim.Optimizer:
    """A live optimizer over ``params`` holding ``saved`` (so surgery can edit it)."""
    groups = saved["param_groups"]
    if [len(g["params"]) for g in groups] != [len(n) for n in names]:
        raise ValueError("optimizer_params do not match the saved optimizer's param groups")
    missing = sorted({n for group in names for n in group} - set(params))
    if missing:
        raise ValueError(
            f"optimizer holds parameter(s) {missing[:3]} outside the Transformer: offline "
            "growth only carries the Transformer's parameters"
        )
    cls = _optimizer_class(groups)
    optimizer = cls([{"params": [params[n] for n in group]} for group in names], lr=0.0)
    optimizer.load_state_dict(dict(saved))
    _check_state_shapes(optimizer)
    return optimizer


def load_optimizers(
    checkpoint: Mapping[str, Any], names: Any, holder: nn.Module
) -> list[torch.optim.Optimizer]:
    """One live optimizer per saved state, over ``holder``'s parameters."""
    saved = list(checkpoint.get("optimizer_states", []))
    if saved and (not isinstance(names, list) or len(names) != len(saved)):
        raise ValueError(
            f"checkpoint has no '{CHECKPOINT_KEY}.optimizer_params' for its {len(saved)} "
            "optimizer(s): it predates offline growth; save it again with this progrow"
        )
    params = dict(holder.named_parameters())
    return [_optimizer(s, n, params) for s, n in zip(saved, names or [], strict=True)]


def assemble_checkpoint(
    checkpoint: Mapping[str, Any],
    holder: nn.Module,
    prefix: str,
    optimizers: list[torch.optim.Optimizer],
    updates: dict[str, Any],
) -> dict[str, Any]:
    """The grown checkpoint: ``checkpoint`` with the grown weights, optimizer states,
    progrow entry (``updates`` less its ``callbacks``) and callback states."""
    model = holder.get_submodule(prefix.rstrip(".")) if prefix else holder
    assert isinstance(model, Transformer)
    callbacks = updates.pop("callbacks")
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefix)}
    state.update({prefix + k: v for k, v in model.state_dict().items()})
    names = param_names(holder)
    entry = {**updates, "model_config": model.config.to_dict()}
    entry["optimizer_params"] = [
        [[names[id(p)] for p in group["params"]] for group in opt.param_groups]
        for opt in optimizers
    ]
    grown = {**checkpoint, "state_dict": state, CHECKPOINT_KEY: entry, "callbacks": callbacks}
    if "optimizer_states" in checkpoint:
        grown["optimizer_states"] = [
            _keyed_like(saved, opt, holder)
            for saved, opt in zip(checkpoint["optimizer_states"], optimizers, strict=True)
        ]
    return grown


def _keyed_like(
    saved: Mapping[str, Any], optimizer: torch.optim.Optimizer, holder: nn.Module
) -> dict[str, Any]:
    """``optimizer.state_dict()`` with its parameters numbered as in ``saved``.

    Plain checkpoints number parameters in optimizer order (0, 1, ... across the groups);
    full checkpoints of an FSDP2 run (``ModelParallelStrategy``) number them by their
    position in the module's ``parameters()``, and are loaded back that way. The saved
    numbering tells which: anything but 0, 1, ... in optimizer order is the latter (when
    the optimizer lists the parameters in module order, both coincide).
    """
    out = optimizer.state_dict()
    ids = [i for group in saved["param_groups"] for i in group["params"]]
    if ids == list(range(len(ids))):
        return out
    position = {id(p): i for i, p in enumerate(holder.parameters())}
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    new_id = {old: position[id(p)] for old, p in enumerate(ordered)}
    out["state"] = {new_id[k]: v for k, v in out["state"].items()}
    for group in out["param_groups"]:
        group["params"] = [new_id[i] for i in group["params"]]
    return out


def refuse_existing(paths: list[Path]) -> None:
    for path in paths:
        if path.exists():
            raise ValueError(
                f"output {str(path)!r} already exists: offline growth never overwrites"
            )
    if len(set(paths)) != len(paths):
        raise ValueError(f"outputs {[str(p) for p in paths]} name the same file twice")


def write_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """Write atomically: a failed write leaves no partial file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = [
    "assemble_checkpoint",
    "load_model",
    "load_optimizers",
    "refuse_existing",
    "write_checkpoint",
]
