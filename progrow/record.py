"""What an expansion did to each parameter: the contract between expansions and
optimizer-state surgery.

For every parameter an expansion changed (reshaped, rescaled or renamed), a
:class:`ParamChange` says where the old values sit in the new tensor and the factor they
were multiplied by, so that ``new[change.index] == old * change.factor`` holds exactly.
The factor is a number, or a tensor broadcastable to the old shape (one factor per
entry, as exact splits draw them). Exact splits (``init="split"``) also fill new entries
with copies of old ones; :class:`Twins` says which old entry each came from and its
factor. Parameters created from nothing (new layers) are listed in
``ExpansionRecord.new``. Parameters not mentioned are unchanged (same name, shape and
values).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from progrow.config import TransformerConfig

#: One 1-D ``long`` tensor per dimension: positions of the old entries along it.
Index = tuple[Tensor, ...]
#: A number, or a tensor with one dimension per tensor dimension, broadcastable to it.
Factor = float | Tensor


def identity_index(shape: tuple[int, ...]) -> Index:
    """The index that places a tensor of ``shape`` at the start of every dimension."""
    return tuple(torch.arange(n) for n in shape)


def _grid(index: Index) -> tuple[Tensor, ...]:
    """Broadcastable open grid (like ``numpy.ix_``) for advanced indexing."""
    ndim = len(index)
    return tuple(ix.view(*[-1 if d == i else 1 for d in range(ndim)]) for i, ix in enumerate(index))


def gather_factor(factor: Factor, index: Index) -> Factor:
    """``factor`` (broadcastable to some shape) at the positions ``index`` of that shape.

    Dimensions of size one stay so (the factor is the same along them), which keeps
    per-row or per-column factors small through compositions. Negative positions read
    position 0 (callers mask them).

    Example:
        >>> rows, cols = torch.tensor([0, 1]), torch.tensor([2, 0])
        >>> gather_factor(torch.tensor([[1.0, 2.0, 3.0]]), (rows, cols))
        tensor([[3., 1.]])
    """
    if not isinstance(factor, Tensor):
        return factor
    out = factor
    for d, ix in enumerate(index):
        if out.shape[d] > 1:
            out = out.index_select(d, ix.clamp(min=0).to(out.device))
    return out


def _inverse(index: Index, shape: tuple[int, ...]) -> Index:
    """Per dimension, the old position held by each new position (-1: none)."""
    out = []
    for ix, n in zip(index, shape, strict=True):
        inv = torch.full((n,), -1, dtype=torch.long)
        inv[ix] = torch.arange(ix.numel())
        out.append(inv)
    return tuple(out)


def _scatter_factor(factor: Factor, index: Index, shape: tuple[int, ...]) -> Tensor:
    """A tensor broadcastable to ``shape`` equal to ``factor`` at the old positions."""
    if not isinstance(factor, Tensor):
        return torch.tensor(factor, dtype=torch.float64).view(*[1] * len(shape))
    sizes = [n if factor.shape[d] > 1 else 1 for d, n in enumerate(shape)]
    out = torch.ones(sizes, dtype=factor.dtype)
    sub = tuple(
        ix if factor.shape[d] > 1 else torch.zeros(1, dtype=torch.long)
        for d, ix in enumerate(index)
    )
    out[_grid(sub)] = factor.cpu()
    return out


@dataclass(frozen=True)
class Twins:
    """Entries of a grown tensor that are copies of old entries (exact splits).

    Along every dimension ``d``, new position ``p`` holds old position ``source[d][p]``
    (the old entries' own positions included; ``-1``: a new position copied from no old
    one). A new entry whose positions all hold old ones is *derived*:
    ``new[e] == old[source(e)] * factor[e]``. The derived entries off the old positions
    are the twins; at the old positions ``factor`` equals the change's factor.
    """

    source: Index
    """Per dimension, one entry per new position: the old position it holds, or -1."""
    factor: Tensor
    """Broadcastable to the new shape; its values off derived entries mean nothing."""

    def derived(self) -> Tensor:
        """Bool mask over the new shape: True at every entry derived from an old one."""
        mask = torch.ones((), dtype=torch.bool)
        for d, src in enumerate(self.source):
            shape = [1] * len(self.source)
            shape[d] = -1
            mask = mask & (src >= 0).view(shape)
        return mask

    def values(self, old: Tensor, power: float = 1.0) -> Tensor:
        """``old[source(e)] * factor[e]**power`` at every derived entry ``e``, zero elsewhere."""
        key = _grid(tuple(src.clamp(min=0).to(old.device) for src in self.source))
        scale = _power(self.factor.to(device=old.device, dtype=old.dtype), power)
        taken = old[key] * scale
        return torch.where(
            self.derived().to(old.device),
            taken,
            torch.zeros((), dtype=old.dtype, device=old.device),
        )


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
    factor: Factor = 1.0
    """The old values were multiplied by this (e.g. ``sqrt(k'/k)`` for keys); a tensor
    broadcastable to ``old_shape`` when each entry has its own factor (splits)."""
    twins: Twins | None = None
    """New entries copied from old ones (``init="split"``), or None."""

    def __post_init__(self) -> None:
        assert len(self.index) == len(self.old_shape) == len(self.new_shape), self
        for ix, old_n, new_n in zip(self.index, self.old_shape, self.new_shape, strict=True):
            assert ix.numel() == old_n and (old_n == 0 or int(ix.max()) < new_n), self
        if isinstance(self.factor, Tensor):
            assert self.factor.dim() == len(self.old_shape), self.name
        if self.twins is not None:
            assert [s.numel() for s in self.twins.source] == list(self.new_shape), self.name

    @property
    def is_identity(self) -> bool:
        """Same shape, same positions, factor 1: only (possibly) renamed."""
        return (
            not isinstance(self.factor, Tensor)
            and self.factor == 1.0
            and self.twins is None
            and self.old_shape == self.new_shape
            and all(
                torch.equal(ix, torch.arange(n))
                for ix, n in zip(self.index, self.new_shape, strict=True)
            )
        )

    def positions(self, device: torch.device | None = None) -> tuple[Tensor, ...]:
        """Advanced-indexing key selecting the old entries' positions in the new tensor."""
        return _grid(tuple(ix.to(device) for ix in self.index))

    def place(self, old: Tensor, scale: Factor = 1.0) -> Tensor:
        """A zero tensor of the new shape with ``old * scale`` at the old positions."""
        if tuple(old.shape) != self.old_shape:
            raise ValueError(
                f"{self.old_name}: expected shape {self.old_shape}, got {tuple(old.shape)}"
            )
        if isinstance(scale, Tensor):
            scale = scale.to(device=old.device, dtype=old.dtype)
        out = old.new_zeros(self.new_shape)
        out[self.positions(old.device)] = old * scale
        return out

    def carry(self, old: Tensor, power: float = 1.0) -> Tensor:
        """``old`` moved to the new shape with every entry times its factor ``**power``.

        Old entries go to their positions times ``factor**power``, twins get their
        source's value times their own factor ``**power``, other new entries are zero.
        ``power=1`` reproduces the parameter; optimizer surgery uses ``-1`` for first
        moments and ``-2`` for second moments.
        """
        if self.twins is None:
            return self.place(old, _power(self.factor, power))
        if tuple(old.shape) != self.old_shape:
            raise ValueError(
                f"{self.old_name}: expected shape {self.old_shape}, got {tuple(old.shape)}"
            )
        return self.twins.values(old, power)

    def take(self, new: Tensor) -> Tensor:
        """The entries of ``new`` at the old positions (shape ``old_shape``)."""
        return new[self.positions(new.device)]

    def _derived(self) -> Twins:
        """The twins, or (without any) the old entries alone as a :class:`Twins`."""
        if self.twins is not None:
            return self.twins
        source = _inverse(self.index, self.new_shape)
        return Twins(source, _scatter_factor(self.factor, self.index, self.new_shape))

    def then(self, later: ParamChange) -> ParamChange:
        """This change followed by ``later`` (which must start where this one ends)."""
        assert later.old_name == self.name and later.old_shape == self.new_shape
        factor = _times(self.factor, gather_factor(later.factor, self.index))
        twins = None
        if self.twins is not None or later.twins is not None:
            first, second = self._derived(), later._derived()
            source = tuple(
                torch.where(s2 >= 0, s1[s2.clamp(min=0)], -1)
                for s1, s2 in zip(first.source, second.source, strict=True)
            )
            factor_of_twins = _times(second.factor, gather_factor(first.factor, second.source))
            twins = Twins(source, torch.as_tensor(factor_of_twins))
        return ParamChange(
            name=later.name,
            old_name=self.old_name,
            old_shape=self.old_shape,
            new_shape=later.new_shape,
            index=tuple(b[a] for a, b in zip(self.index, later.index, strict=True)),
            factor=factor,
            twins=twins,
        )


def _power(factor: Factor, power: float) -> Factor:
    """``factor**power``, as ``1 / factor**-power`` for negative powers (bit-equal to the
    ``1 / factor`` and ``1 / factor**2`` that moments of a plain rescale get)."""
    if power < 0:
        return 1.0 / factor ** (-power)
    return factor**power


def _times(a: Factor, b: Factor) -> Factor:
    """``a * b`` for numbers or tensors (a tensor result when either is one)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        dtype = torch.promote_types(a.dtype, b.dtype)
        return a.to(dtype) * b.to(dtype)
    return a * b


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
            lines.append(f"  {c.name}{rename}: {c.old_shape} -> {c.new_shape} x{_describe(c)}")
        lines.extend(f"  {name}: new" for name in self.new)
        return "\n".join(lines)


def _describe(change: ParamChange) -> str:
    factor = change.factor
    text = (
        f"{factor:g}"
        if not isinstance(factor, Tensor)
        else (f"[{float(factor.min()):g}, {float(factor.max()):g}]")
    )
    if change.twins is not None:
        twins = int(change.twins.derived().sum()) - math.prod(change.old_shape)
        text += f", {twins} twin entries"
    return text
