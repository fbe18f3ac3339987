"""Layer addition: insert identity blocks anywhere in the stack."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from progrow.config import TransformerConfig
from progrow.expand._editor import check_target, sync_modules
from progrow.expand.targets import Init
from progrow.model import Block, Transformer, fresh_init
from progrow.record import ExpansionRecord, ParamChange, identity_index

Positions = Literal["append", "interleave"] | Sequence[int] | None

# A new block's writes into the residual stream are zero: the block is the identity.
_ZERO_IN_NEW_BLOCK = ("attn.o.weight", "attn.o.bias", "mlp.proj.weight", "mlp.proj.bias")


def new_layer_positions(n_old: int, n_new: int, positions: Positions) -> list[int]:
    """Indices, in the grown stack of ``n_new`` blocks, of the inserted blocks.

    ``"append"`` (or None) puts them on top. ``"interleave"`` spreads them evenly: new
    block i goes right after old block ``ceil((i + 1) * n_old / k) - 1`` for k new blocks,
    so doubling gives old, new, old, new, ... A sequence gives the indices explicitly.
    """
    k = n_new - n_old
    if positions is None or positions == "append":
        return list(range(n_old, n_new))
    if positions == "interleave":
        after = [-(-(i + 1) * n_old // k) - 1 for i in range(k)]
        order: list[int | None] = []  # None marks a new block
        for j in range(n_old):
            order.append(j)
            order.extend(None for a in after if a == j)
        return [i for i, item in enumerate(order) if item is None]
    if isinstance(positions, str):
        raise ValueError(f"positions must be 'append', 'interleave' or a list, got {positions!r}")
    pos = list(positions)
    bad = [p for p in pos if isinstance(p, bool) or not isinstance(p, int)]
    if bad:
        raise ValueError(f"positions must be integers, got {bad!r}")
    if len(pos) != k:
        raise ValueError(f"positions={pos!r} must list {k} indices ({n_old} -> {n_new} layers)")
    if len(set(pos)) != len(pos):
        raise ValueError(f"positions={pos!r} has duplicates")
    out_of_range = [p for p in pos if not 0 <= p < n_new]
    if out_of_range:
        raise ValueError(
            f"positions={pos!r}: {out_of_range} out of range for {n_new} layers [0, {n_new - 1}]"
        )
    return sorted(pos)


def _new_block(
    config: TransformerConfig, like: torch.Tensor, generator: torch.Generator | None
) -> Block:
    # Built on the meta device so that nn.Linear's own init does not consume the global RNG.
    with torch.device("meta"):
        block = Block(config)
    block.to_empty(device="cpu")
    with torch.no_grad():
        for name, param in block.named_parameters():
            if name in _ZERO_IN_NEW_BLOCK:
                param.zero_()
            else:
                param.copy_(fresh_init(param.shape, f"blocks.0.{name}", config, generator))
    return block.to(device=like.device, dtype=like.dtype)


def _copied_block(source: nn.Module, keep_outputs: bool = False) -> nn.Module:
    # A copy of an existing block, its writes into the residual stream zeroed unless kept.
    block = copy.deepcopy(source)
    with torch.no_grad():
        for name, param in block.named_parameters():
            if name in _ZERO_IN_NEW_BLOCK and not keep_outputs:
                param.zero_()
    return block


def _copy_sources(n_old: int, new_idx: list[int]) -> dict[int, int]:
    """For each new block, the old block it copies: the nearest old block below it in the
    grown stack, or the first old block for new blocks at the bottom."""
    out, old_seen, new_set = {}, -1, set(new_idx)
    for i in range(n_old + len(new_idx)):
        if i in new_set:
            out[i] = max(old_seen, 0)
        else:
            old_seen += 1
    return out


def add_layers(
    model: Transformer,
    n_layers: int,
    *,
    positions: Positions = "append",
    init: Init = "zero",
    generator: torch.Generator | None = None,
) -> ExpansionRecord:
    """Insert blocks until there are ``n_layers``, in place.

    Each new block's W_O, W2 and their biases are zero and everything else is a fresh draw
    (norm gains one, other biases zero), so with pre-norm the block adds zero to the
    residual stream: the identity. W_O and W2 get a gradient at once; WQ, WK, WV, W1 and
    the gate as soon as those have moved.
    Blocks after an insertion point are renamed (``blocks.1`` becomes ``blocks.2``); the
    record lists those renames so optimizer state follows its parameter.

    ``init="split"``: each new block is a copy of the old block below it (of the first
    old block for new blocks at the bottom) with its W_O, W2 and their biases zero: the
    identity as well, but its attention and MLP start as trained ones. Its parameters
    are new to the optimizer (zero moments): its inputs get no gradient until its
    outputs have moved, so its source's moments would not describe them.

    ``init="stack"`` (G_stack's depth growth, for comparison): the same copies with their
    outputs kept. This does NOT preserve the function: every copied block adds its
    source's update a second time. Under :class:`progrow.GrowthCallback` the loss jump
    is measured and logged like any growth's (``growth/loss_delta``), and above
    ``loss_tolerance`` it raises unless ``on_loss_jump`` is "warn" or "ignore".

    Args:
        model: the model to grow.
        n_layers: the new number of blocks.
        positions: ``"append"`` (default), ``"interleave"``, or the indices of the new
            blocks in the grown stack.
        init: ``"zero"`` (fresh blocks, default), ``"split"`` (copied blocks, outputs
            zero) or ``"stack"`` (copied blocks, outputs kept: not preserving).
        generator: source of the fresh values (default: torch's global RNG).

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> model = Transformer(TransformerConfig(d_model=8, n_layers=2))
        >>> record = add_layers(model, 4, positions="interleave")
        >>> sorted({name.split(".")[1] for name in record.new})
        ['1', '3']
    """
    new_cfg = check_target(model, "n_layers", n_layers, init)
    if new_cfg is None:
        return ExpansionRecord(model.config, model.config, expansions=("n_layers",))
    cfg = model.config
    new_idx = new_layer_positions(cfg.n_layers, n_layers, positions)
    like = model.tok_emb.weight
    if init in ("split", "stack"):
        sources = _copy_sources(cfg.n_layers, new_idx)
        keep = init == "stack"
        fresh = {i: _copied_block(model.blocks[j], keep) for i, j in sources.items()}
    else:
        fresh = {i: _new_block(new_cfg, like, generator) for i in new_idx}
    old_blocks = iter(enumerate(model.blocks))
    order: list[nn.Module] = []
    changes: dict[str, ParamChange] = {}
    for i in range(n_layers):
        if i in fresh:
            order.append(fresh[i])
            continue
        j, block = next(old_blocks)
        order.append(block)
        if i != j:
            for leaf, param in block.named_parameters():
                shape = tuple(param.shape)
                name = f"blocks.{i}.{leaf}"
                changes[name] = ParamChange(
                    name, f"blocks.{j}.{leaf}", shape, shape, identity_index(shape)
                )
    new_names = tuple(
        f"blocks.{i}.{leaf}" for i in new_idx for leaf, _ in fresh[i].named_parameters()
    )
    # New modules start in training mode; match the model's mode (an eval model stays eval).
    for block in fresh.values():
        block.train(model.training)
    blocks = nn.ModuleList(order)
    blocks.training = model.blocks.training
    model.blocks = blocks
    model.config = new_cfg
    sync_modules(model)
    return ExpansionRecord(cfg, new_cfg, changes, new_names, ("n_layers",))
