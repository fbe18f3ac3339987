"""``GrowthStep``: one value describing one growth step, validated once when built.

Every growth path (:func:`progrow.grow`, the training loop's
:class:`~progrow.GrowthCallback`, FSDP2's ``grow_sharded``, offline checkpoint growth, the
``progrow-grow`` command) carries this one value instead of a list of keywords, so a new
per-step option is a new field here (with its check) and nothing else to thread through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from progrow.config import GROWABLE_DIMS
from progrow.expand.hidden import DEFAULT_FACTOR_AT, FACTOR_PLACEMENTS, FactorAt, check_factor_at
from progrow.expand.layers import Positions
from progrow.expand.targets import INITS, Init, check_init
from progrow.expand.widths import (
    DEFAULT_QK_FACTOR_AT,
    QK_FACTOR_PLACEMENTS,
    QkFactorAt,
    check_qk_factor_at,
)
from progrow.perturb import ShrinkPerturb, check_new_noise, check_shrink_perturb


@dataclass(frozen=True)
class GrowthStep:
    """Grow to ``sizes``, with every per-step option; checked in ``__post_init__``.

    A bad option raises ``ValueError`` naming the field and the value (the same checks as
    everywhere: :func:`~progrow.expand.hidden.check_factor_at`, ...). Sizes are checked
    against a model when the step is applied (:func:`progrow.expand.grow.grow_step`), since
    what is valid depends on the model's current config; a dimension that is not growable
    is refused here. A size of ``None`` is dropped (not grown).

    Example:
        >>> GrowthStep({"d_mlp": 64}, init="split").init
        'split'
        >>> GrowthStep({"d_mlp": 64}, new_noise=-1)
        Traceback (most recent call last):
        ...
        ValueError: new_noise=-1: must be a number >= 0 (the std of the noise)
    """

    sizes: Mapping[str, int] = field(default_factory=dict)
    """Target sizes by dimension name (a subset of ``GROWABLE_DIMS``)."""
    layer_positions: Positions = field(
        default="append", metadata={"help": "where new layers go: append, interleave or i,j,..."}
    )
    """Where new layers go: "append", "interleave" or explicit indices (checked against the
    model when applied)."""
    hidden_factor_at: FactorAt = field(
        default=DEFAULT_FACTOR_AT,
        metadata={
            "choices": FACTOR_PLACEMENTS,
            "help": "where a --d_model growth puts its sqrt(h/h') factor",
        },
    )
    """Where a hidden-size growth puts its ``sqrt(h / h')`` factor: "readers" (the
    default) or "gains" (the paper's); see :func:`progrow.expand_hidden`."""
    qk_factor_at: QkFactorAt = field(
        default=DEFAULT_QK_FACTOR_AT,
        metadata={
            "choices": QK_FACTOR_PLACEMENTS,
            "help": "where a --d_qk growth puts its sqrt(d_qk'/k) factor",
        },
    )
    """Where a key/query growth puts its ``sqrt(d_qk' / k)`` factor: "keys" (the default),
    "queries" or "shared"; see :func:`progrow.expand_qk`."""
    init: Init = field(
        default="zero",
        metadata={
            "choices": INITS,
            "help": "how new entries are filled: zero (zero blocks), split (exact copies, no "
            "zero block) or stack (--n_layers only: copied blocks, NOT preserving)",
        },
    )
    """How new entries are filled: "zero" (zero blocks), "split" (exact copies with split
    outgoing weights) or "stack" (layers only, not preserving); see :func:`progrow.grow`."""
    shrink_perturb: ShrinkPerturb | None = field(
        default=None,
        metadata={
            "metavar": "SHRINK,NOISE",
            "default_text": "off",
            "help": "old weights become SHRINK * w + NOISE * (a fresh draw of w), e.g. 0.8,0.1",
        },
    )
    """Shrink-and-perturb of the old weights after the expansion, ``θ ← λθ + σε``
    (``None``: off; a mapping ``{"shrink": λ, "noise": σ}`` is accepted); see
    :mod:`progrow.perturb`."""
    new_noise: float = field(
        default=0.0,
        metadata={
            "metavar": "STD",
            "default_text": "0",
            "help": "N(0, STD^2) on the new entries the growth leaves zero",
        },
    )
    """Std of the noise put on the new entries the expansion leaves zero (0: off); see
    :mod:`progrow.perturb`."""

    def __post_init__(self) -> None:
        if not isinstance(self.sizes, Mapping):
            raise ValueError(f"sizes={self.sizes!r}: must be a mapping of dimension to size")
        sizes = {dim: size for dim, size in self.sizes.items() if size is not None}
        unknown = sorted(set(sizes) - set(GROWABLE_DIMS))
        if unknown:
            raise ValueError(
                f"sizes: unknown dimension(s) {unknown}; the growable dimensions are "
                f"{list(GROWABLE_DIMS)}"
            )
        positions: Any = self.layer_positions
        if not isinstance(positions, str) and isinstance(positions, Sequence):
            positions = tuple(positions)
        checked = {
            "sizes": sizes,
            "layer_positions": positions,
            "hidden_factor_at": check_factor_at(self.hidden_factor_at, "hidden_factor_at"),
            "qk_factor_at": check_qk_factor_at(self.qk_factor_at, "qk_factor_at"),
            "init": check_init(self.init, "init"),
            "shrink_perturb": check_shrink_perturb(self.shrink_perturb, "shrink_perturb"),
            "new_noise": check_new_noise(self.new_noise, "new_noise"),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def perturbs(self) -> bool:
        """Whether this step changes the function on purpose (its probe loss jumps)."""
        return self.shrink_perturb is not None or self.new_noise > 0

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The names of the per-step options (every field but ``sizes``)."""
        return tuple(f.name for f in fields(cls) if f.name != "sizes")

    def option_values(self) -> dict[str, Any]:
        """The per-step options by name."""
        return {name: getattr(self, name) for name in self.options()}


__all__ = ["GrowthStep"]
