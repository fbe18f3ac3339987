"""The ``growth`` section of the config: the schedule with the run-wide growth options on
its stages, the GrowthCallback options, and the checks of the schedule against the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from progrow.app.config_values import CONF_DIR, check_keys
from progrow.app.errors import ConfigError
from progrow.config import TransformerConfig
from progrow.expand.step import GrowthStep
from progrow.factor_placement import PLACEMENTS, Placement
from progrow.schedule import PERTURB_KEYS, GrowthSchedule

#: Keys of ``cfg.growth`` that are GrowthCallback options (the rest: ``name``, ``stages``).
GROWTH_OPTIONS = (
    "loss_tolerance",
    "on_loss_jump",
    "new_moments",
    "rewarmup_steps",
    "lr_width_exponent",
    "rewarmup_from",
    "lr_fan_in_exponent",
    "optimizer_state",
)
#: Label of a schedule whose stages are not those of a ``conf/growth/<name>.yaml``.
CUSTOM_SCHEDULE = "custom"


@dataclass(frozen=True)
class GrowthSettings:
    """The ``growth`` group: a named schedule and the GrowthCallback options."""

    name: str
    """Schedule name (``none`` marks a fixed-size baseline)."""
    schedule: GrowthSchedule
    """Stages with fractional steps already resolved against ``trainer.max_steps``."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of :class:`progrow.GrowthCallback` besides schedule and seed."""


def parse_growth(section: dict[str, Any], max_steps: int) -> GrowthSettings:
    """The ``growth`` section (taken apart: what is left are the callback options), checked:
    the run-wide ``init``, perturbations and factor placements go on every stage that sets
    none of its own, and fractional steps are resolved against ``max_steps``."""
    stages = section.pop("stages", None) or []
    name = schedule_label(str(section.pop("name", CUSTOM_SCHEDULE)), stages)
    placements = {p.key: _run_placement(p, section.pop(p.key, None)) for p in PLACEMENTS}
    init = section.pop("init", "zero")
    perturb = {key: section.pop(key, None) for key in PERTURB_KEYS}
    check_keys("growth", section, set(GROWTH_OPTIONS))
    if not isinstance(stages, list):
        raise ConfigError(f"growth.stages={stages!r}: must be a list of stages")
    try:  # the run-wide options, checked as one growth step's
        GrowthStep(init=init, **{key: value for key, value in perturb.items() if value is not None})
    except ValueError as err:
        raise ConfigError(f"growth.{err}") from None
    stages = [_place_factors(stage, placements) for stage in stages]
    if init != "zero":  # every stage without its own init (lists of the default match)
        stages = [{"init": init, **s} if isinstance(s, dict) else s for s in stages]
    # The same for the perturbations: every stage without its own, when one is set.
    run_wide = {key: value for key, value in perturb.items() if value}
    stages = [{**run_wide, **s} if isinstance(s, dict) else s for s in stages]
    try:
        schedule = GrowthSchedule(stages, max_steps=max_steps)
    except ValueError as err:
        raise ConfigError(f"growth.stages (growth={name}): {err}") from None
    return GrowthSettings(name=name, schedule=schedule, options=section)


def fan_in_groups(optim: dict[str, Any], growth: GrowthSettings) -> dict[str, Any]:
    """``optim`` with one param group per weight (``fan_in_groups``) when
    ``growth.lr_fan_in_exponent`` scales each group's LR by its fan-in, which needs them."""
    if not growth.options.get("lr_fan_in_exponent"):
        return optim
    if optim.get("fan_in_groups") is False:
        raise ConfigError(
            "optim.fan_in_groups=false with growth.lr_fan_in_exponent="
            f"{growth.options['lr_fan_in_exponent']!r}: the per-fan-in LR needs one param "
            "group per weight; drop optim.fan_in_groups or set growth.lr_fan_in_exponent=0"
        )
    return {**optim, "fan_in_groups": True}


def _run_placement(placement: Placement, value: Any) -> str:
    """``growth.<key>`` checked; unset, the default."""
    if value is None:
        return placement.default
    try:
        return placement.check(value, f"growth.{placement.key}")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _place_factors(stage: Any, placements: dict[str, str]) -> Any:
    """``stage`` with the run's placements (``growth.<key>`` of each
    :data:`~progrow.factor_placement.PLACEMENTS`) on the dimensions it grows, where it sets none
    of its own (a stage's own key wins)."""
    if not isinstance(stage, dict):
        return stage
    run = {p.key: placements[p.key] for p in PLACEMENTS if stage.get(p.dim) is not None}
    return {**run, **stage}


def schedule_label(name: str, stages: Any, conf_dir: Path = CONF_DIR) -> str:
    """The name to report for a schedule: ``name``, unless ``conf/growth/<name>.yaml``
    exists and has other stages (``growth.stages=...`` given on the command line or in an
    experiment), in which case it is ``"custom"``: the run is not that named schedule."""
    preset = conf_dir / "growth" / f"{name}.yaml"
    if not preset.is_file():
        return name
    loaded = OmegaConf.to_container(OmegaConf.load(preset))
    preset_stages = loaded.get("stages") if isinstance(loaded, dict) else None
    return name if (preset_stages or []) == stages else CUSTOM_SCHEDULE


def validate_schedule(growth: GrowthSettings, config: TransformerConfig, max_steps: int) -> None:
    """Check the schedule against the starting model and the run length, naming the key."""
    try:
        growth.schedule.validate_for(config, max_steps)
    except ValueError as err:
        raise ConfigError(f"growth.stages (growth={growth.name}): {err}") from None
