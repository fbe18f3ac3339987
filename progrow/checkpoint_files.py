"""progrow's checkpoint format (its keys, the architecture it records) and reading a
training checkpoint from disk, whatever wrote it: a Lightning checkpoint file
(one device, DDP, or FSDP2 with ``save_distributed_checkpoint=False``) or a sharded FSDP2
checkpoint folder (torch distributed-checkpoint shards plus Lightning's ``meta.pt``).

A sharded folder is consolidated on CPU into the layout of a full checkpoint file: the
model's ``state_dict``, and ``optimizer_states`` keyed by parameter position as
``Optimizer.state_dict()`` keys them (the shards key them by parameter name). Anything
else (a folder of something else, a file torch cannot unpickle, a pickle that is not a
checkpoint) is refused with a :class:`ValueError` that names the path and says what it
holds, so command-line tools can answer in one line.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from progrow.config import TransformerConfig

#: Where progrow keeps its entry in a checkpoint (architecture, optimizer names, totals).
CHECKPOINT_KEY = "progrow"
#: The version of the checkpoint layout this progrow writes and reads (the ``format`` of
#: its entry): the entry, the growth callback's state (its stage list, every placement
#: written), the Transformer's config in its state dict. A 0.x package has no upgrade
#: path: a checkpoint of another format is refused, naming both versions.
CHECKPOINT_FORMAT = 1
#: The growth callback's entry in ``checkpoint["callbacks"]`` (its default state key).
CALLBACK_KEY = "GrowthCallback"
#: Lightning's file of everything but the tensors in a sharded checkpoint folder.
SHARDED_META = "meta.pt"
#: torch distributed-checkpoint's index file in a sharded folder.
SHARDED_INDEX = ".metadata"


def checkpoint_config(checkpoint: Mapping[str, Any]) -> TransformerConfig:
    """The Transformer architecture stored in a progrow checkpoint.

    Raises:
        ValueError: the checkpoint has no ``progrow.model_config`` entry (it was not
            written by a progrow module or callback), an unreadable one, or one of another
            checkpoint format (:func:`check_format`).
    """
    entry = checkpoint.get(CHECKPOINT_KEY)
    check_format(checkpoint, "checkpoint")
    if not isinstance(entry, Mapping) or "model_config" not in entry:
        raise ValueError(
            f"checkpoint has no '{CHECKPOINT_KEY}.model_config' entry: offline growth needs a "
            "checkpoint written while training with progrow (LMModule or GrowthCallback)"
        )
    return TransformerConfig.from_dict(dict(entry["model_config"]))


def check_format(checkpoint: Mapping[str, Any], source: str) -> None:
    """Refuse a progrow checkpoint of another format than :data:`CHECKPOINT_FORMAT`.

    A checkpoint without progrow's entry is left to the caller (it was not written while
    training with progrow; what reads it says what is missing).

    Raises:
        ValueError: naming ``source``, the checkpoint's format and the one read here.

    Example:
        >>> check_format({"progrow": {"format": CHECKPOINT_FORMAT}}, "last.ckpt")
        >>> check_format({"progrow": {"model_config": {}}}, "last.ckpt")
        Traceback (most recent call last):
        ...
        ValueError: last.ckpt: progrow checkpoint format none (written before checkpoints \
carried a format); this progrow reads format 1 only: continue it with the progrow version \
that wrote it, or train anew
    """
    entry = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(entry, Mapping):
        return
    found = entry.get("format")
    if found == CHECKPOINT_FORMAT:
        return
    what = "none (written before checkpoints carried a format)" if found is None else repr(found)
    raise ValueError(
        f"{source}: progrow checkpoint format {what}; this progrow reads format "
        f"{CHECKPOINT_FORMAT} only: continue it with the progrow version that wrote it, "
        "or train anew"
    )


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a sharded (distributed-checkpoint) folder Lightning wrote."""
    path = Path(path)
    return path.is_dir() and (path / SHARDED_INDEX).is_file() and (path / SHARDED_META).is_file()


def _optimizer_by_position(state: dict[str, Any]) -> dict[str, Any]:
    """A sharded checkpoint's optimizer state (keyed by parameter name) keyed by position
    in the param groups, as ``Optimizer.load_state_dict`` wants it."""
    position: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = []
        for name in group["params"]:
            position[name] = len(position)
            ids.append(position[name])
        groups.append({**group, "params": ids})
    moments = {position[name]: value for name, value in state["state"].items()}
    return {"state": moments, "param_groups": groups}


def consolidate_sharded(path: str | Path) -> dict[str, Any]:
    """The full checkpoint a sharded FSDP2 checkpoint folder holds, on CPU (one of another
    progrow checkpoint format is refused first, from its ``meta.pt``: :func:`check_format`).

    Example:
        >>> ckpt = consolidate_sharded("checkpoints/last.ckpt")  # doctest: +SKIP
        >>> ckpt["state_dict"]["model.tok_emb.weight"].shape  # doctest: +SKIP
        torch.Size([256, 64])
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    path = Path(path)
    if not is_sharded_checkpoint(path):
        raise ValueError(f"{str(path)!r} is not a sharded checkpoint folder")
    checkpoint = torch.load(path / SHARDED_META, map_location="cpu", weights_only=False)
    # Refused before the shards are read: consolidating is the expensive part.
    check_format(checkpoint, f"checkpoint {str(path)!r}")
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.pt"
        dcp_to_torch_save(path, full)
        tensors = torch.load(full, map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = tensors.pop("state_dict")
    count = len([k for k in tensors if k.startswith("optimizer_")])
    checkpoint["optimizer_states"] = [
        _optimizer_by_position(tensors[f"optimizer_{i}"]) for i in range(count)
    ]
    return checkpoint


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on CPU: a file, or a sharded FSDP2 folder (consolidated).

    A full pickle: only load files you trust.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: ``path`` is a folder that is not a sharded checkpoint, a file torch
            cannot read, or a file that holds something other than a checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        if is_sharded_checkpoint(path):
            return consolidate_sharded(path)
        raise ValueError(
            f"checkpoint {str(path)!r} is a folder but not a sharded checkpoint (no "
            f"{SHARDED_INDEX} and {SHARDED_META}): give a checkpoint file"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"checkpoint {str(path)!r} is not a file torch can load: {reason}"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        what = type(checkpoint).__name__
        if isinstance(checkpoint, dict):
            what = "a dict without 'state_dict'"
        raise ValueError(
            f"checkpoint {str(path)!r} holds {what}, not a Lightning training checkpoint"
        )
    check_format(checkpoint, f"checkpoint {str(path)!r}")
    return checkpoint
