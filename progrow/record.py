"""What an expansion did to each parameter: the contract between expansions and
optimizer-state surgery.

For every parameter an expansion changed (reshaped, rescaled or renamed), a
:class:`ParamChange` says where the old values sit in the new tensor and the factor they
were multiplied by, so that ``new[change.index] == old * change.factor`` holds exactly.
Parameters created from nothing (new layers) are listed in ``ExpansionRecord.new``.
Parameters not mentioned are unchanged (same name, shape and values).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from progrow.config import TransformerConfig

#: One 1-D ``long`` tensor per dimension: positions of the old entries along it.
Index = tuple[Tensor, ...]


def identity_index(shape: tuple[int, ...]) -> Index:
    """The index that places a tensor of ``shape`` at the start of every dimension."""
    return tuple(torch.arange(n) for n in shape)


def _grid(index: Index) -> tuple[Tensor, ...]:
    """Broadcastable open grid (like ``numpy.ix_``) for advanced indexing."""
    ndim = len(index)
    return tuple(ix.view(*[-1 if d == i else 1 for d in range(ndim)]) for i, ix in enumerate(index))


@dataclass(frozen=True)
class ParamChange:
    """How one parameter went from its old tensor to its new one."""

    name: str
    """Name after the expansion (``model.named_parameters()`` style)."""
    old_name: str
    """Name before the expansion (differs when layers are inserted before it)."""
    old_shape: tuple[int, ...]
    new_shape: tuple[int, ...]
    index: Index
    """Per dimension, the positions in the new tensor of the old entries."""
    factor: float = 1.0
    """The old values were multiplied by this (e.g. ``sqrt(k'/k)`` for keys)."""

    def __post_init__(self) -> None:
        assert len(self.index) == len(self.old_shape) == len(self.new_shape), self
        for ix, old_n, new_n in zip(self.index, self.old_shape, self.new_shape, strict=True):
            assert ix.numel() == old_n and (old_n == 0 or int(ix.max()) < new_n), self

    @property
    def is_identity(self) -> bool:
        """Same shape, same positions, factor 1: only (possibly) renamed."""
        return (
            self.factor == 1.0
            and self.old_shape == self.new_shape
            and all(
                torch.equal(ix, torch.arange(n))
                for ix, n in zip(self.index, self.new_shape, strict=True)
            )
        )

    def positions(self, device: torch.device | None = None) -> tuple[Tensor, ...]:
        """Advanced-indexing key selecting the old entries' positions in the new tensor."""
        return _grid(tuple(ix.to(device) for ix in self.index))

    def place(self, old: Tensor, scale: float = 1.0) -> Tensor:
        """A zero tensor of the new shape with ``old * scale`` at the old positions.

        Optimizer surgery calls this with ``scale = 1/factor`` for first moments and
        ``1/factor**2`` for second moments; ``scale=factor`` reproduces the parameter.
        """
        if tuple(old.shape) != self.old_shape:
            raise ValueError(
                f"{self.old_name}: expected shape {self.old_shape}, got {tuple(old.shape)}"
            )
        out = old.new_zeros(self.new_shape)
        out[self.positions(old.device)] = old * scale
        return out

    def take(self, new: Tensor) -> Tensor:
        """The entries of ``new`` at the old positions (shape ``old_shape``)."""
        return new[self.positions(new.device)]

    def then(self, later: ParamChange) -> ParamChange:
        """This change followed by ``later`` (which must start where this one ends)."""
        assert later.old_name == self.name and later.old_shape == self.new_shape
        return ParamChange(
            name=later.name,
            old_name=self.old_name,
            old_shape=self.old_shape,
            new_shape=later.new_shape,
            index=tuple(b[a] for a, b in zip(self.index, later.index, strict=True)),
            factor=self.factor * later.factor,
        )


@dataclass(frozen=True)
class ExpansionRecord:
    """Everything one expansion (or a composition of them) did to a model's parameters."""

    old_config: TransformerConfig
    new_config: TransformerConfig
    changes: Mapping[str, ParamChange] = field(default_factory=dict)
    """Keyed by the NEW parameter name."""
    new: tuple[str, ...] = ()
    """Names of wholly new parameters (all of their values fresh or zero)."""
    expansions: tuple[str, ...] = ()
    """Which expansions produced this record, in order (e.g. ``("d_mlp", "n_layers")``)."""

    @property
    def is_noop(self) -> bool:
        return not self.changes and not self.new and self.old_config == self.new_config

    def prefixed(self, prefix: str) -> ExpansionRecord:
        """The record with every parameter name prefixed (names relative to an outer
        module, e.g. ``"model."`` for a LightningModule holding the Transformer)."""
        if not prefix:
            return self
        changes = {
            prefix + name: replace(c, name=prefix + c.name, old_name=prefix + c.old_name)
            for name, c in self.changes.items()
        }
        return replace(self, changes=changes, new=tuple(prefix + n for n in self.new))

    def change_for_old(self, old_name: str) -> ParamChange | None:
        """The change applied to the parameter that was called ``old_name``."""
        for change in self.changes.values():
            if change.old_name == old_name:
                return change
        return None

    def then(self, later: ExpansionRecord) -> ExpansionRecord:
        """Compose: this record followed by ``later``, as one record from old to newest."""
        by_old = {c.old_name: c for c in later.changes.values()}
        changes: dict[str, ParamChange] = {}
        new: set[str] = set(later.new)
        for name, first in self.changes.items():
            second = by_old.pop(name, None)
            if second is None:
                changes[name] = first
            else:
                changes[second.name] = first.then(second)
        for name in self.new:
            second = by_old.pop(name, None)
            new.add(second.name if second is not None else name)
        # What is left in ``later`` changed parameters untouched by ``self``.
        for second in by_old.values():
            changes[second.name] = second
        for name in new:
            changes.pop(name, None)
        return ExpansionRecord(
            old_config=self.old_config,
            new_config=later.new_config,
            changes=changes,
            new=tuple(sorted(new)),
            expansions=self.expansions + later.expansions,
        )

    def summary(self) -> str:
        """One line per changed parameter, for logs and debugging."""
        lines = [f"{self.old_config.sizes()} -> {self.new_config.sizes()}"]
        for c in self.changes.values():
            rename = f" (was {c.old_name})" if c.old_name != c.name else ""
            lines.append(f"  {c.name}{rename}: {c.old_shape} -> {c.new_shape} x{c.factor:g}")
        lines.extend(f"  {name}: new" for name in self.new)
        return "\n".join(lines)
