"""``GrowthSchedule``: when to grow and to what size, validated completely when built."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from progrow.config import GROWABLE_DIMS, TransformerConfig, check_positive_int
from progrow.expand.hidden import DEFAULT_FACTOR_AT, FactorAt
from progrow.expand.plan import Init, check_init
from progrow.expand.widths import DEFAULT_QK_FACTOR_AT, QkFactorAt
from progrow.perturb import ShrinkPerturb, check_new_noise, check_shrink_perturb
from progrow.placement import BY_KEY, PLACEMENT_KEYS, PLACEMENTS

#: Stage keys that change the grown model on purpose (:mod:`progrow.perturb`).
PERTURB_KEYS = ("shrink_perturb", "new_noise")
_STAGE_KEYS = ("step", *GROWABLE_DIMS, "layer_positions", *PLACEMENT_KEYS, "init", *PERTURB_KEYS)


def stage_seed(seed: int, stage_index: int) -> int:
    """Seed of the values drawn at stage ``stage_index``: the same on every rank, on resume
    and in offline growth, so all of them draw the same new values.

    Example:
        >>> stage_seed(0, 1) == stage_seed(0, 1) != stage_seed(0, 2)
        True
    """
    digest = hashlib.sha256(f"progrow-growth/{seed}/{stage_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class GrowthStage:
    """Grow to ``sizes`` at optimizer step ``step`` (before that step's update)."""

    step: int
    """Global optimizer step at which the growth happens."""
    sizes: Mapping[str, int]
    """Target sizes by dimension name (a subset of ``GROWABLE_DIMS``)."""
    layer_positions: Literal["append", "interleave"] | tuple[int, ...] = "append"
    """Where new layers go: "append", "interleave" or explicit indices."""
    hidden_factor_at: FactorAt = DEFAULT_FACTOR_AT
    """Where a hidden-size growth puts its ``sqrt(h / h')`` factor: "readers" (the
    default) or "gains" (the paper's); see :func:`progrow.expand_hidden`."""
    qk_factor_at: QkFactorAt = DEFAULT_QK_FACTOR_AT
    """Where a key/query growth puts its ``sqrt(d_qk' / k)`` factor: "keys" (the default),
    "queries" or "shared"; see :func:`progrow.expand_qk`."""

    init: Init = "zero"
    """How the stage fills new entries: "zero" (zero blocks), "split" (exact copies with
    split outgoing weights) or "stack" (layers only, not preserving); see
    :func:`progrow.grow`."""

    shrink_perturb: ShrinkPerturb | None = None
    """Shrink-and-perturb of the old weights after the expansion, ``θ ← λθ + σε``
    (``None``: off); see :mod:`progrow.perturb`."""
    new_noise: float = 0.0
    """Std of the noise put on the new entries the expansion leaves zero (0: off); see
    :mod:`progrow.perturb`."""

    @property
    def perturbs(self) -> bool:
        """Whether this stage changes the function on purpose (its probe loss jumps)."""
        return self.shrink_perturb is not None or self.new_noise > 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, **self.sizes}
        if "n_layers" in self.sizes:
            lp = self.layer_positions
            out["layer_positions"] = lp if isinstance(lp, str) else list(lp)
        for p in PLACEMENTS:
            if p.dim in self.sizes:
                # Always written: a saved list without it means the old default
                # (progrow.placement.saved_stages).
                out[p.key] = getattr(self, p.key)
        if self.init != "zero":  # the default is left out: older lists match
            out["init"] = self.init
        if self.shrink_perturb is not None:  # (the same for the perturbations)
            out["shrink_perturb"] = self.shrink_perturb.as_dict()
        if self.new_noise:
            out["new_noise"] = self.new_noise
        return out


@dataclass(frozen=True)
class GrowthSchedule:
    """An ordered list of growth stages.

    Built from :class:`GrowthStage` objects or plain mappings such as
    ``{"step": 200, "d_mlp": 512, "n_layers": 4}``. A float ``step`` in ``(0, 1)`` is a
    fraction of ``max_steps`` (which must then be given). Validation happens here, before
    any training: steps are non-negative integers strictly increasing, dimension names are
    known, sizes are positive integers and never shrink from one stage to the next. Errors
    name the stage and the field.

    Example:
        >>> s = GrowthSchedule([{"step": 10, "d_mlp": 64}, {"step": 0.5, "n_layers": 4}],
        ...                    max_steps=100)
        >>> [stage.step for stage in s]
        [10, 50]
    """

    stages: tuple[GrowthStage, ...] = field(default_factory=tuple)

    def __init__(
        self,
        stages: Iterable[GrowthStage | Mapping[str, Any]] = (),
        *,
        max_steps: int | None = None,
    ) -> None:
        built = tuple(_build_stage(i, stage, max_steps) for i, stage in enumerate(stages or ()))
        object.__setattr__(self, "stages", built)
        self._check_order()

    def _check_order(self) -> None:
        reached: dict[str, int] = {}
        for i, stage in enumerate(self.stages):
            if i and stage.step <= self.stages[i - 1].step:
                raise ValueError(
                    f"growth stage {i}: step={stage.step} must be greater than stage "
                    f"{i - 1}'s step={self.stages[i - 1].step} (steps strictly increase)"
                )
            for dim, size in stage.sizes.items():
                if dim in reached and size < reached[dim]:
                    raise ValueError(
                        f"growth stage {i}: {dim}={size} shrinks below {reached[dim]} "
                        "set by an earlier stage (sizes never shrink)"
                    )
                reached[dim] = size

    def __iter__(self) -> Iterator[GrowthStage]:
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, i: int) -> GrowthStage:
        return self.stages[i]

    def final_config(self, start: TransformerConfig) -> TransformerConfig:
        """The config after every stage, starting from ``start`` (stages validated by
        :meth:`validate_for`)."""
        return self.validate_for(start)

    def final_sizes(self, start: TransformerConfig) -> dict[str, int]:
        """The sizes after every stage, starting from ``start``."""
        return self.final_config(start).sizes()

    def validate_for(
        self, config: TransformerConfig, max_steps: int | None = None
    ) -> TransformerConfig:
        """Check the stages against a starting model and the run length; returns the
        config after the last stage.

        Raises ``ValueError`` naming the stage and field for a target below the model's
        current size, a hidden expansion of a LayerNorm model, query heads the KV heads
        cannot group, an odd ``d_qk`` under RoPE, bad layer positions, or a step at or past
        ``max_steps`` (the growth would never happen). The same validator as
        :func:`progrow.grow`'s, applied stage by stage to the config each stage produces.
        """
        from progrow.expand.layers import new_layer_positions
        from progrow.expand.plan import grown_config

        for i, stage in enumerate(self.stages):
            if max_steps is not None and max_steps >= 0 and stage.step >= max_steps:
                raise ValueError(
                    f"growth stage {i}: step={stage.step} is past the end of training "
                    f"(max_steps={max_steps})"
                )
            try:
                grown = grown_config(config, stage.sizes, stage.init)
            except ValueError as err:
                raise ValueError(f"growth stage {i}: {err}") from None
            if grown.n_layers > config.n_layers:
                try:
                    new_layer_positions(config.n_layers, grown.n_layers, stage.layer_positions)
                except ValueError as err:
                    raise ValueError(f"growth stage {i}: layer_positions: {err}") from None
            config = grown
        return config

    def to_list(self) -> list[dict[str, Any]]:
        """Plain form (for logs and checkpoints); ``GrowthSchedule(s.to_list())`` rebuilds it.

        A stage that grows ``d_model`` always carries its ``hidden_factor_at``, one that
        grows ``d_qk`` its ``qk_factor_at``, so the list means the same whatever the
        defaults; read lists saved by older versions with
        :func:`progrow.placement.saved_stages`.
        """
        return [stage.as_dict() for stage in self.stages]


def _build_stage(
    i: int, stage: GrowthStage | Mapping[str, Any], max_steps: int | None
) -> GrowthStage:
    if isinstance(stage, GrowthStage):
        raw: dict[str, Any] = stage.as_dict()
    elif isinstance(stage, Mapping):
        raw = dict(stage)
    else:
        raise ValueError(f"growth stage {i}: expected a mapping, got {stage!r}")
    unknown = sorted(set(raw) - set(_STAGE_KEYS))
    if unknown:
        raise ValueError(
            f"growth stage {i}: unknown field(s) {unknown}; known: {list(_STAGE_KEYS)}"
        )
    if "step" not in raw:
        raise ValueError(f"growth stage {i}: missing field 'step'")
    step = _resolve_step(i, raw.pop("step"), max_steps)
    positions = raw.pop("layer_positions", None)
    if positions is not None and raw.get("n_layers") is None:
        raise ValueError(
            f"growth stage {i}: layer_positions={positions!r} given without n_layers (it "
            "places new layers, and this stage adds none); add n_layers or drop it"
        )
    if positions is None:
        positions = "append"
    if not isinstance(positions, str):
        if not isinstance(positions, Sequence):
            raise ValueError(f"growth stage {i}: layer_positions={positions!r} is not a list")
        positions = tuple(positions)
    elif positions not in ("append", "interleave"):
        raise ValueError(
            f"growth stage {i}: layer_positions={positions!r}; use 'append', 'interleave' or "
            "a list of indices"
        )
    placed = {key: _placement(i, key, raw.pop(key, None), raw) for key in PLACEMENT_KEYS}
    try:
        init = check_init(raw.pop("init", "zero"), "init")
        shrink_perturb = check_shrink_perturb(raw.pop("shrink_perturb", None))
        new_noise = check_new_noise(raw.pop("new_noise", 0.0))
    except ValueError as err:
        raise ValueError(f"growth stage {i}: {err}") from None
    sizes = {k: v for k, v in raw.items() if v is not None}
    if not sizes:
        raise ValueError(f"growth stage {i}: no target size given (one of {list(GROWABLE_DIMS)})")
    for dim, size in sizes.items():
        try:
            check_positive_int(dim, size)
        except ValueError as err:
            raise ValueError(f"growth stage {i}: {err}") from None
    return GrowthStage(
        step=step,
        sizes=sizes,
        layer_positions=cast(Any, positions),
        hidden_factor_at=cast(FactorAt, placed["hidden_factor_at"]),
        qk_factor_at=cast(QkFactorAt, placed["qk_factor_at"]),
        init=init,
        shrink_perturb=shrink_perturb,
        new_noise=new_noise,
    )


def _placement(i: int, key: str, value: Any, sizes: Mapping[str, Any]) -> str:
    """Stage ``i``'s placement ``key``: ``value`` checked, or the default."""
    p = BY_KEY[key]
    if value is None:
        return p.default
    if sizes.get(p.dim) is None:
        raise ValueError(
            f"growth stage {i}: {key}={value!r} given without {p.dim} (it places the "
            f"{p.dim} growth's factor, and this stage does not grow {p.dim}); add {p.dim} "
            "or drop it"
        )
    try:
        return p.check(value, key)
    except ValueError as err:
        raise ValueError(f"growth stage {i}: {err}") from None


def _resolve_step(i: int, step: Any, max_steps: int | None) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise ValueError(f"growth stage {i}: step must be a number, got {step!r}")
    if isinstance(step, float) and not step.is_integer():
        if not 0.0 < step < 1.0:
            raise ValueError(
                f"growth stage {i}: step={step!r}: a fractional step must be in (0, 1) "
                "(a fraction of max_steps)"
            )
        if max_steps is None or max_steps <= 0:
            raise ValueError(
                f"growth stage {i}: step={step!r} is a fraction of max_steps, but max_steps "
                f"is {max_steps!r}"
            )
        return round(step * max_steps)
    if step < 0:
        raise ValueError(f"growth stage {i}: step must be >= 0, got {step!r}")
    return int(step)
