"""Departures from function preservation at a growth step, chosen on purpose.

A grown model computes what the small one did, and that exactness has a price: the old
weights arrive fitted and confident, and the new entries on the zero side of each new
block get no gradient until the other side has moved. Both options here trade a little
exactness for trainability (the "growth tax": a model grown mid-run trains worse than a
fresh model of its size):

* ``new_noise`` σ: every new entry of a weight matrix that the expansion left at zero so
  that the function is preserved (new rows of W_O and W2, new embedding columns, the
  zero half of a grown key/query pair, the output projections of new layers) gets
  ``N(0, σ²)`` instead. Both sides of a new block then learn from the first step; the
  probe loss moves by O(σ).
* ``shrink_perturb`` (λ, σ): shrink-and-perturb of the old weights, ``θ ← λ·θ + σ·ε`` with
  ``ε`` a fresh draw of that weight (``N(0, init_std²)``, residual projections
  ``N(0, init_std² / (2 n_layers))``): pulled toward a fresh model, away from the old
  optimum.

Both touch weight matrices and embeddings only (tensors of two or more dimensions), not
norm gains or biases: a fresh model draws its weights ``N(0, std²)``, so ``λθ + σε``
moves them toward a fresh draw, while gains start at one and biases at zero, which
neither shrinking toward zero nor noise of the weights' scale approaches.

Both run after the expansions, on the grown model with the expansion's record, and draw
from the stage's generator after the expansion's own draws (``new_noise`` first): every
other value of the grown model is the same with or without them, and every rank, a
resumed run and offline growth draw the same values. Neither touches optimizer state
(``optimizer_state`` in :mod:`progrow.surgery` does). They leave the Parameter objects in
place (values are written into them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import Tensor

from progrow.model import Transformer, fresh_init
from progrow.record import ExpansionRecord, ParamChange


@dataclass(frozen=True)
class ShrinkPerturb:
    """``θ ← shrink·θ + noise·ε`` on the old weights at a growth (see the module doc)."""

    shrink: float = 1.0
    """λ in (0, 1]: the old weights' factor."""
    noise: float = 0.0
    """σ >= 0: the multiple of a fresh draw added to them."""

    def as_dict(self) -> dict[str, float]:
        return {"shrink": self.shrink, "noise": self.noise}


def _number(value: object) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(float(value))
    )


def check_shrink_perturb(value: object, field: str = "shrink_perturb") -> ShrinkPerturb | None:
    """``value`` (``None``, a :class:`ShrinkPerturb` or a mapping with ``shrink`` and/or
    ``noise``) checked; ``None`` also for one that changes nothing (λ = 1, σ = 0).

    Raises:
        ValueError: naming ``field`` and the value: not a mapping, an unknown key, a
            shrink outside (0, 1] or a negative or non-finite noise.

    Example:
        >>> check_shrink_perturb({"shrink": 0.5})
        ShrinkPerturb(shrink=0.5, noise=0.0)
        >>> check_shrink_perturb({"shrink": 1, "noise": 0}) is None
        True
    """
    if value is None:
        return None
    if isinstance(value, ShrinkPerturb):
        raw: dict[str, Any] = value.as_dict()
    elif isinstance(value, Mapping):
        raw = dict(value)
    else:
        raise ValueError(f"{field}={value!r}: must be a mapping {{shrink: λ, noise: σ}} or null")
    unknown = sorted(set(raw) - {"shrink", "noise"})
    if unknown:
        raise ValueError(f"{field}={value!r}: unknown key(s) {unknown}; known: shrink, noise")
    shrink, noise = raw.get("shrink", 1.0), raw.get("noise", 0.0)
    if not _number(shrink) or not 0 < shrink <= 1:
        raise ValueError(f"{field}={value!r}: shrink must be a number in (0, 1], got {shrink!r}")
    if not _number(noise) or noise < 0:
        raise ValueError(f"{field}={value!r}: noise must be a number >= 0, got {noise!r}")
    if shrink == 1 and noise == 0:
        return None
    return ShrinkPerturb(float(shrink), float(noise))


def check_new_noise(value: object, field: str = "new_noise") -> float:
    """``value`` as a float if it is a finite number >= 0.

    Raises:
        ValueError: naming ``field`` and the value, for anything else.

    Example:
        >>> check_new_noise(0.001)
        0.001
    """
    if not _number(value) or value < 0:
        raise ValueError(f"{field}={value!r}: must be a number >= 0 (the std of the noise)")
    return float(value)


def perturbs(shrink_perturb: ShrinkPerturb | None, new_noise: float) -> bool:
    """Whether a growth with these options changes the function on purpose."""
    return shrink_perturb is not None or new_noise > 0


def carried(change: ParamChange) -> Tensor:
    """Bool mask over the grown tensor: the entries that hold old values (at the old
    positions, and their copies under an exact split)."""
    return change.carry(torch.ones(change.old_shape), 0.0).bool()


def _is_weight(param: Tensor) -> bool:
    return param.dim() >= 2


def add_new_noise_(
    model: Transformer, record: ExpansionRecord, std: float, generator: torch.Generator | None
) -> None:
    """Replace the new zero entries of every weight matrix by ``N(0, std²)`` draws.

    New entries are those of a new parameter and those off the old entries of a grown
    one (:func:`carried`); of them, the ones the expansion set to zero. A fresh draw is
    never exactly zero, so these are the zero side of each new block. Draws come from
    ``generator`` (on the CPU), a whole tensor at a time, in the model's parameter order.
    """
    new = set(record.new)
    for name, param in model.named_parameters():
        if not _is_weight(param) or (name not in new and name not in record.changes):
            continue
        fresh = torch.ones(param.shape, dtype=torch.bool)
        if name not in new:
            fresh = ~carried(record.changes[name])
        zero = fresh.to(param.device) & (param.detach() == 0)
        if not bool(zero.any()):
            continue
        draw = (torch.randn(param.shape, generator=generator) * std).to(param)
        with torch.no_grad():
            param.copy_(torch.where(zero, draw, param))


def shrink_perturb_(
    model: Transformer,
    record: ExpansionRecord,
    options: ShrinkPerturb,
    generator: torch.Generator | None,
) -> None:
    """``θ ← shrink·θ + noise·ε`` on the old entries of every weight matrix and embedding.

    Old entries: all of a parameter the growth left as it was (or only renamed), the
    carried entries of a grown one (:func:`carried`), none of a new one. ``ε`` is
    :func:`~progrow.model.fresh_init` of the whole tensor under the grown config, drawn
    from ``generator`` in the model's parameter order (only when ``noise > 0``).
    """
    new = set(record.new)
    for name, param in model.named_parameters():
        if not _is_weight(param) or name in new:
            continue
        change = record.changes.get(name)
        old = None if change is None else carried(change).to(param.device)
        value = param.detach() * options.shrink
        if options.noise > 0:
            eps = fresh_init(param.shape, name, model.config, generator).to(param)
            value = value + options.noise * eps
        with torch.no_grad():
            param.copy_(value if old is None else torch.where(old, value, param))


def perturb_grown_(
    model: Transformer,
    record: ExpansionRecord,
    *,
    shrink_perturb: ShrinkPerturb | None = None,
    new_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> None:
    """Apply ``new_noise`` then ``shrink_perturb`` to a model grown per ``record``
    (names relative to ``model``); nothing at all with the defaults."""
    if new_noise > 0:
        add_new_noise_(model, record, new_noise, generator)
    if shrink_perturb is not None:
        shrink_perturb_(model, record, shrink_perturb, generator)


__all__ = [
    "ShrinkPerturb",
    "add_new_noise_",
    "carried",
    "check_new_noise",
    "check_shrink_perturb",
    "perturb_grown_",
    "perturbs",
    "shrink_perturb_",
]
