"""Shared machinery of the expansions: argument checks and an atomic parameter editor.

An expansion first validates its arguments, then stages every new tensor in an
:class:`Editor`, and only :meth:`Editor.commit` touches the model. So a call that fails
(bad argument, out of memory while staging) leaves the model as it was.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from progrow.config import TransformerConfig
from progrow.expand.targets import Init, expanded_config
from progrow.model import Attention, RMSNorm, Transformer, fresh_init
from progrow.record import (
    ExpansionRecord,
    Index,
    ParamChange,
    Twins,
    gather_factor,
    identity_index,
)

Fill = Literal["zero", "fresh"] | float


def check_target(
    model: Transformer, dim: str, value: object, init: Init = "zero"
) -> TransformerConfig | None:
    """Validate a target size for ``dim``: the grown config, or None for the current size.

    Raises ``ValueError`` naming the dimension and the value, or ``init`` and its value
    (see :func:`progrow.expand.targets.expanded_config`).
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"expected a progrow.Transformer, got {type(model).__name__}")
    new_config = expanded_config(model.config, dim, value, init)
    return None if new_config == model.config else new_config


def blocked_index(
    n_blocks: int,
    old_block: int,
    new_block: int,
    *,
    block_at: Tensor | None = None,
    within: Tensor | None = None,
) -> Tensor:
    """Positions of ``n_blocks`` blocks of ``old_block`` entries in blocks of ``new_block``.

    Heads are stored as contiguous blocks, so growing every head's size moves head e's old
    entries to ``e * new_block + [0, old_block)``. ``block_at`` moves old block ``b`` to
    new block ``block_at[b]`` (query heads regrouped under grouped-query attention);
    ``within`` places the old entries inside their block (RoPE pairs, see
    :func:`progrow.expand.targets.rope_layout`).
    """
    at = torch.arange(n_blocks) if block_at is None else block_at
    inner = torch.arange(old_block) if within is None else within
    return (at[:, None] * new_block + inner[None, :]).reshape(-1)


class Editor:
    """Stages replacement tensors for a model's parameters, then swaps them in at once."""

    def __init__(
        self,
        model: Transformer,
        new_config: TransformerConfig,
        expansion: str,
        generator: torch.Generator | None,
    ) -> None:
        self.model = model
        self.new_config = new_config
        self.expansion = expansion
        self.generator = generator
        self.params = dict(model.named_parameters())
        self.staged: dict[str, Tensor] = {}
        self.changes: dict[str, ParamChange] = {}

    def has(self, name: str) -> bool:
        """Whether the model has parameter ``name`` (biases and gates are optional)."""
        return name in self.params

    def expand(
        self,
        name: str,
        new_shape: tuple[int, ...],
        fill: Fill,
        index: Index | None = None,
        factor: float = 1.0,
    ) -> None:
        """Stage ``name`` grown to ``new_shape``: old values (times ``factor``) at ``index``
        (default: the start of every dimension), every other entry from ``fill``."""
        old = self.params[name].detach()
        old_shape = tuple(old.shape)
        index = index if index is not None else identity_index(old_shape)
        if fill == "zero":
            out = torch.zeros(new_shape, dtype=old.dtype, device=old.device)
        elif fill == "fresh":
            draw = fresh_init(new_shape, name, self.new_config, self.generator)
            out = draw.to(dtype=old.dtype, device=old.device)
        else:
            out = torch.full(new_shape, float(fill), dtype=old.dtype, device=old.device)
        change = ParamChange(name, name, old_shape, new_shape, index, factor)
        out[change.positions(out.device)] = old * factor
        self.staged[name] = out
        self.changes[name] = change

    def split(self, name: str, index: Index, source: Index, factor: Tensor | float) -> None:
        """Stage ``name`` grown by copies: along every dimension new position ``p`` holds
        old position ``source[d][p]`` (all >= 0), every entry times ``factor``
        (broadcastable to the new shape); the old entries sit at ``index``."""
        old = self.params[name].detach()
        scale = torch.as_tensor(factor, dtype=torch.float64)
        if scale.dim() == 0:
            scale = scale.view(*[1] * old.dim())
        scale = scale.to(old.dtype)  # the record holds what was applied, bit for bit
        twins = Twins(source, scale)
        assert bool(twins.derived().all()), f"{name}: a split copies every new entry"
        old_factor = gather_factor(scale, index)
        if isinstance(old_factor, Tensor) and old_factor.numel() == 1:
            old_factor = float(old_factor)
        new_shape = tuple(src.numel() for src in source)
        change = ParamChange(name, name, tuple(old.shape), new_shape, index, old_factor, twins)
        self.staged[name] = twins.values(old).contiguous()
        self.changes[name] = change

    def commit(self) -> ExpansionRecord:
        """Swap the staged tensors in, update module sizes and the config; return the record."""
        old_config = self.model.config
        for name, tensor in self.staged.items():
            set_parameter(self.model, name, tensor)
        self.model.config = self.new_config
        sync_modules(self.model)
        return ExpansionRecord(
            old_config=old_config,
            new_config=self.new_config,
            changes=self.changes,
            expansions=(self.expansion,),
        )


def set_parameter(model: nn.Module, name: str, tensor: Tensor) -> None:
    """Replace parameter ``name`` by a new ``nn.Parameter`` holding ``tensor``."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    old = getattr(module, leaf)
    setattr(module, leaf, nn.Parameter(tensor, requires_grad=old.requires_grad))


def sync_modules(model: Transformer) -> None:
    """Make every module's size attributes agree with its weights and ``model.config``,
    so a grown model is structurally identical to ``Transformer(model.config)``."""
    config = model.config
    if config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.Embedding):
            module.num_embeddings, module.embedding_dim = module.weight.shape
        elif isinstance(module, RMSNorm):
            module.eps = config.norm_eps
        elif isinstance(module, nn.LayerNorm):
            module.normalized_shape = tuple(module.weight.shape)
            module.eps = config.norm_eps
        elif isinstance(module, Attention):
            module.n_heads, module.n_kv_heads = config.n_heads, config.kv_heads
            module.d_qk, module.d_v = config.d_qk, config.d_v
