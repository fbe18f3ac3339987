"""``GrowthSchedule``: when to grow and to what size, validated completely when built."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from progrow.config import GROWABLE_DIMS, TransformerConfig, check_positive_int
from progrow.expand.hidden import DEFAULT_FACTOR_AT, FactorAt, check_factor_at

_STAGE_KEYS = ("step", *GROWABLE_DIMS, "layer_positions", "hidden_factor_at")

#: What a saved hidden-size stage without ``hidden_factor_at`` meant: lists were written
#: without the key when it equalled the default, and the default was then "gains".
LEGACY_FACTOR_AT: FactorAt = "gains"


def saved_stages(stages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A stage list as a checkpoint stored it, with every hidden-size stage's placement
    explicit: a stage that grows ``d_model`` without ``hidden_factor_at`` was written
    before the placement was always written, and means :data:`LEGACY_FACTOR_AT`.

    Lists written now (:meth:`GrowthSchedule.to_list`) come back unchanged.

    Example:
        >>> saved_stages([{"step": 5, "d_model": 64}, {"step": 9, "d_mlp": 256}])
        [{'step': 5, 'd_model': 64, 'hidden_factor_at': 'gains'}, {'step': 9, 'd_mlp': 256}]
    """
    return [
        {**stage, "hidden_factor_at": LEGACY_FACTOR_AT}
        if stage.get("d_model") is not None and "hidden_factor_at" not in stage
        else dict(stage)
        for stage in stages
    ]


def is_legacy_list(stages: Iterable[Mapping[str, Any]]) -> bool:
    """Whether a saved stage list grows the hidden size somewhere without saying where the
    factor went (it was written before the placement was always written).

    Example:
        >>> is_legacy_list([{"step": 5, "d_model": 64}])
        True
        >>> is_legacy_list([{"step": 5, "d_model": 64, "hidden_factor_at": "readers"}])
        False
    """
    return any(s.get("d_model") is not None and "hidden_factor_at" not in s for s in stages)


def stage_seed(seed: int, stage_index: int) -> int:
    """Seed of the values drawn at stage ``stage_index``: the same on every rank, on resume
    and in offline growth, so all of them draw the same new values.

    Example:
        >>> stage_seed(0, 1) == stage_seed(0, 1) != stage_seed(0, 2)
        True
    """
    digest = hashlib.sha256(f"progrow-growth/{seed}/{stage_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def saved_placement(stages: Iterable[Mapping[str, Any]], index: int) -> FactorAt | None:
    """Where the saved list's stage ``index`` put the hidden factor (``None`` if there is
    no such stage or it grows no hidden size); older lists read as :func:`saved_stages`.

    Example:
        >>> saved_placement([{"step": 5, "d_model": 64}], 0), saved_placement([], 0)
        ('gains', None)
    """
    listed = saved_stages(stages)
    if not 0 <= index < len(listed) or listed[index].get("d_model") is None:
        return None
    return check_factor_at(listed[index]["hidden_factor_at"], "hidden_factor_at")


def placement_changes(
    saved: Iterable[Mapping[str, Any]], schedule: GrowthSchedule
) -> dict[int, str]:
    """The hidden-size stages that ``schedule`` places differently from a saved list of
    the same run, by stage index (older lists read as :func:`saved_stages`).

    Example:
        >>> placement_changes([{"step": 5, "d_model": 64}], GrowthSchedule([{"step": 5,
        ...     "d_model": 64}]))
        {0: "stage 0 (step 5): hidden_factor_at was 'gains', now 'readers'"}
    """
    changes = {}
    for i, (old, stage) in enumerate(zip(saved_stages(saved), schedule, strict=False)):
        was = old.get("hidden_factor_at")
        if "d_model" in stage.sizes and was is not None and was != stage.hidden_factor_at:
            changes[i] = (
                f"stage {i} (step {stage.step}): hidden_factor_at was {was!r}, "
                f"now {stage.hidden_factor_at!r}"
            )
    return changes


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

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, **self.sizes}
        if "n_layers" in self.sizes:
            lp = self.layer_positions
            out["layer_positions"] = lp if isinstance(lp, str) else list(lp)
        if "d_model" in self.sizes:
            # Always written: a saved list without it means the old default (saved_stages).
            out["hidden_factor_at"] = self.hidden_factor_at
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
                grown = grown_config(config, stage.sizes)
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

        A stage that grows ``d_model`` always carries its ``hidden_factor_at``, so the list
        means the same whatever the default; read lists saved by older versions with
        :func:`saved_stages`.
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
    factor_at = _factor_at(i, raw.pop("hidden_factor_at", None), raw.get("d_model"))
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
        hidden_factor_at=factor_at,
    )


def _factor_at(i: int, value: Any, d_model: Any) -> FactorAt:
    if value is None:
        return DEFAULT_FACTOR_AT
    if d_model is None:
        raise ValueError(
            f"growth stage {i}: hidden_factor_at={value!r} given without d_model (it places "
            "the hidden growth's factor, and this stage grows no hidden size); add d_model "
            "or drop it"
        )
    try:
        return check_factor_at(value, "hidden_factor_at")
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
