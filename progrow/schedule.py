"""``GrowthSchedule``: when to grow and to what size, validated completely when built."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from progrow.config import GROWABLE_DIMS, TransformerConfig, check_positive_int
from progrow.expand.step import GrowthStep
from progrow.factor_placement import BY_KEY, PLACEMENT_KEYS, PLACEMENTS, stage_changes
from progrow.perturb import ShrinkPerturb

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
    """Grow per ``spec`` (sizes and options) at optimizer step ``step`` (before that
    step's update)."""

    step: int
    """Global optimizer step at which the growth happens."""
    spec: GrowthStep
    """What the growth does: target sizes and every per-step option."""

    @property
    def sizes(self) -> Mapping[str, int]:
        """Target sizes by dimension name (a subset of ``GROWABLE_DIMS``)."""
        return self.spec.sizes

    @property
    def perturbs(self) -> bool:
        """Whether this stage changes the function on purpose (its probe loss jumps)."""
        return self.spec.perturbs

    def __getattr__(self, name: str) -> Any:
        """The step's options read through the stage too (``stage.init``, ...)."""
        if name in GrowthStep.options():
            return getattr(self.spec, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def as_dict(self) -> dict[str, Any]:
        spec = self.spec
        out: dict[str, Any] = {"step": self.step, **spec.sizes}
        if "n_layers" in spec.sizes:
            lp = spec.layer_positions
            out["layer_positions"] = lp if isinstance(lp, str) else list(lp or ())
        for p in PLACEMENTS:
            if p.dim in spec.sizes:
                # Always written: a saved list means the same whatever the default.
                out[p.key] = getattr(spec, p.key)
        if spec.init != "zero":  # zero, the exact init, is part of the checkpoint format
            out["init"] = spec.init
        for key in PERTURB_KEYS:  # (the same for the perturbations)
            value = getattr(spec, key)
            if value:
                out[key] = value.as_dict() if isinstance(value, ShrinkPerturb) else value
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
        from progrow.expand.targets import grown_config

        for i, stage in enumerate(self.stages):
            if max_steps is not None and max_steps >= 0 and stage.step >= max_steps:
                raise ValueError(
                    f"growth stage {i}: step={stage.step} is past the end of training "
                    f"(max_steps={max_steps})"
                )
            try:
                grown = grown_config(config, stage.sizes, stage.spec.init)
            except ValueError as err:
                raise ValueError(f"growth stage {i}: {err}") from None
            if grown.n_layers > config.n_layers:
                try:
                    new_layer_positions(config.n_layers, grown.n_layers, stage.spec.layer_positions)
                except ValueError as err:
                    raise ValueError(f"growth stage {i}: layer_positions: {err}") from None
            config = grown
        return config

    def to_list(self) -> list[dict[str, Any]]:
        """Plain form (for logs and checkpoints); ``GrowthSchedule(s.to_list())`` rebuilds it.

        A stage always carries the placements (:data:`progrow.factor_placement.PLACEMENTS`) of
        the dimensions it grows, so the list means the same whatever the defaults.
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
    placed: dict[str, Any] = {
        key: _placement(i, key, raw.pop(key, None), raw) for key in PLACEMENT_KEYS
    }
    options = {key: raw.pop(key) for key in ("init", *PERTURB_KEYS) if key in raw}
    try:
        spec = GrowthStep(raw, layer_positions=cast(Any, positions), **placed, **options)
    except ValueError as err:
        raise ValueError(f"growth stage {i}: {err}") from None
    if not spec.sizes:
        raise ValueError(f"growth stage {i}: no target size given (one of {list(GROWABLE_DIMS)})")
    for dim, size in spec.sizes.items():
        try:
            check_positive_int(dim, size)
        except ValueError as err:
            raise ValueError(f"growth stage {i}: {err}") from None
    return GrowthStage(step=step, spec=spec)


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


def check_resumed_schedule(
    saved: list[dict[str, Any]], now: list[dict[str, Any]], grown: set[int], allow: bool
) -> None:
    """Refuse a schedule ``now`` that differs from the checkpoint's ``saved`` one in a
    stage already ``grown`` (unless ``allow``), warn about one that differs in a stage
    still ahead, naming both schedules (:class:`~progrow.training.GrowthCallback` at
    resume).

    The model already grew per the saved stages that have events; a stage listed
    differently at such an index would grow again with that stage's seed and label (two
    events "stage i"), or the record would describe growth that never happened. Stages
    ahead may change, but not silently.
    """
    changes = stage_changes(saved, now)
    both = f"the checkpoint's schedule: {saved}; this callback's: {now}"
    conflicts = [text for i, text in changes.items() if i in grown]
    if conflicts and not allow:
        raise ValueError(
            "GrowthCallback: the checkpoint's run already grew per another schedule ("
            + "; ".join(conflicts)
            + f"); {both}. Resume with the stages already grown as they were (later "
            "ones may change), or pass resume_allow_changes=True"
        )
    for i, text in changes.items():
        already = "already grown" if i in grown else "still ahead"
        warnings.warn(
            f"GrowthCallback: resuming a run whose schedule differs in a stage "
            f"{already}: {text}; {both}",
            stacklevel=2,
        )
