"""``RunSettings``: the Hydra config turned into plain typed values, checked up front.

Every check here runs before any data is read or any model is built, and every error is a
:class:`ConfigError` that names the config key and its value, e.g.
``trainer.max_steps=0: must be a positive integer``. The ``growth`` section is read by
:mod:`progrow.app.growth_settings`; the checks every section shares are in
:mod:`progrow.app.config_values`.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from progrow.app.checks import world_size
from progrow.app.config_values import (
    check_keys,
    optional_path,
    positive_int,
    section_of,
    to_container,
)
from progrow.app.errors import ConfigError
from progrow.app.growth_settings import GrowthSettings, fan_in_groups, parse_growth
from progrow.config import GROWABLE_DIMS, TransformerConfig

#: TransformerConfig fields the app takes from the data rather than from ``cfg.model``.
FROM_DATA = ("vocab_size", "max_seq_len")


@dataclass(frozen=True)
class RunSettings:
    """Everything one training job needs, as plain typed values.

    Built by :meth:`from_config` from the composed Hydra config; nothing downstream reads
    the ``DictConfig``.
    """

    seed: int
    """Global seed (data, init, growth values)."""
    max_steps: int
    """Optimizer steps of the run (``trainer.max_steps``)."""
    task_name: str
    """Names the output tree."""
    tags: list[str]
    """Free-form labels."""
    ckpt_path: str | None
    """Checkpoint to resume from, ``"auto"`` or ``None``."""
    output_dir: Path
    """This run's folder."""
    ckpt_dir: Path
    """Where ModelCheckpoint writes."""
    model: dict[str, Any]
    """TransformerConfig fields except those that come from the data (``FROM_DATA``)."""
    model_overrides: dict[str, Any]
    """``FROM_DATA`` fields set explicitly in ``cfg.model`` (checked against the data)."""
    optim: dict[str, Any]
    """OptimConfig fields; ``max_steps`` is added from the trainer."""
    data: dict[str, Any]
    """LMDataModule keyword arguments."""
    growth: GrowthSettings
    """The schedule and callback options."""
    trainer: dict[str, Any]
    """``lightning.Trainer`` keyword arguments (with ``_target_``)."""
    callbacks: dict[str, dict[str, Any]]
    """Callback configs by name, each with a ``_target_``."""
    loggers: dict[str, dict[str, Any]]
    """Logger configs by name, each with a ``_target_``."""
    raw: dict[str, Any]
    """The whole resolved config (logged as hyperparameters)."""
    budget_steps: int | None = None
    """Equal-compute runs: spend the FLOPs of this many steps of ``budget_model``."""
    budget_model: dict[str, int] | None = None
    """Sizes of the reference model of the budget (default: the schedule's final size)."""
    resume_allow_changes: bool = False
    """Resume even if the run identity (the data, schedule, model, ``max_steps``, seed,
    processes, or a key of :data:`progrow.app.resume.CONFIG_KEYS` such as ``optim.lr``)
    differs from the checkpoint's run (default: refuse, naming what changed); each change
    is then logged as a warning."""
    compile: dict[str, Any] | None = None
    """``compile``: ``torch.compile`` options for the Transformer (``None``: eager)."""
    hf_init_from: Path | None = None
    """``hf.init_from``: a Hugging Face model folder to start from (replaces ``model``)."""
    hf_export_to: Path | None = None
    """``hf.export_to``: a new folder that receives the final model in HF format."""

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunSettings:
        """Resolve and check ``cfg``; raise :class:`ConfigError` naming the bad key."""
        raw = to_container(cfg)
        trainer = section_of(raw, "trainer")
        max_steps = positive_int("trainer.max_steps", trainer.get("max_steps"))
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ConfigError(f"seed={seed!r}: must be an integer >= 0")

        model = section_of(raw, "model")
        check_keys("model", model, {f.name for f in dataclasses.fields(TransformerConfig)})
        overrides = {k: model.pop(k) for k in FROM_DATA if k in model}
        overrides = {k: v for k, v in overrides.items() if v is not None}

        optim = section_of(raw, "optim")
        if "max_steps" in optim:
            raise ConfigError(
                f"optim.max_steps={optim['max_steps']!r}: set trainer.max_steps instead "
                "(the learning-rate schedule always spans the whole run)"
            )
        from progrow.optim import OptimConfig

        check_keys("optim", optim, {f.name for f in dataclasses.fields(OptimConfig)})

        data = section_of(raw, "data")
        from progrow.training import LMDataModule

        data_params = set(inspect.signature(LMDataModule.__init__).parameters) - {"self"}
        check_keys("data", data, data_params)

        growth = parse_growth(section_of(raw, "growth"), max_steps)
        optim = fan_in_groups(optim, growth)
        paths = section_of(raw, "paths")
        for key in ("output_dir", "ckpt_dir"):
            if not paths.get(key):
                raise ConfigError(f"paths.{key}={paths.get(key)!r}: must be a folder")
        ckpt_path, allow_changes = _resume(raw)
        tags = raw.get("tags") or []
        budget_steps, budget_model = _budget(section_of(raw, "budget"))
        hf = section_of(raw, "hf")
        check_keys("hf", hf, {"init_from", "export_to"})
        return cls(
            compile=_compile(raw.get("compile")),
            hf_init_from=optional_path("hf.init_from", hf.get("init_from")),
            hf_export_to=optional_path("hf.export_to", hf.get("export_to")),
            budget_steps=budget_steps,
            budget_model=budget_model,
            resume_allow_changes=allow_changes,
            seed=int(seed),
            max_steps=max_steps,
            task_name=str(raw.get("task_name", "train")),
            tags=[str(t) for t in (tags if isinstance(tags, list) else [tags])],
            ckpt_path=ckpt_path or None,
            output_dir=Path(paths["output_dir"]),
            ckpt_dir=Path(paths["ckpt_dir"]),
            model=model,
            model_overrides=overrides,
            optim=optim,
            data=data,
            growth=growth,
            trainer=trainer,
            callbacks=_targets("callbacks", section_of(raw, "callbacks")),
            loggers=_targets("logger", section_of(raw, "logger")),
            raw=raw,
        )


def _compile(value: Any) -> dict[str, Any] | None:
    """``compile``: ``false``/``null`` (eager), ``true`` (inductor, torch's defaults) or a
    mapping of ``torch.compile`` options (``{backend: ..., mode: ...}``)."""
    from progrow.training.compiled import compile_options

    if value is not None and not isinstance(value, (bool, dict)):
        raise ConfigError(f"compile={value!r}: must be true, false or torch.compile options")
    try:
        return compile_options(value)
    except ValueError as err:
        raise ConfigError(f"compile={value!r}: {err}") from None


def _resume(raw: dict[str, Any]) -> tuple[str | None, bool]:
    """``ckpt_path`` and ``resume_allow_changes``, checked."""
    ckpt_path = raw.get("ckpt_path")
    if ckpt_path is not None and not isinstance(ckpt_path, str):
        raise ConfigError(f"ckpt_path={ckpt_path!r}: must be a file path, 'auto' or null")
    allow_changes = raw.get("resume_allow_changes", False)
    if not isinstance(allow_changes, bool):
        raise ConfigError(f"resume_allow_changes={allow_changes!r}: must be true or false")
    return ckpt_path, allow_changes


def _budget(budget: dict[str, Any]) -> tuple[int | None, dict[str, Any] | None]:
    """``budget.steps`` and ``budget.model``, checked (``None`` where unset)."""
    check_keys("budget", budget, {"steps", "model"})
    steps = budget.get("steps")
    if steps is not None:
        steps = positive_int("budget.steps", steps)
    model = budget.get("model") or None
    if model is not None:
        if not isinstance(model, dict):
            raise ConfigError(f"budget.model={model!r}: must be a mapping of sizes")
        check_keys("budget.model", model, set(GROWABLE_DIMS))
    return steps, model


def _targets(group: str, section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Entries of a group of instantiable configs; ``null`` entries are switched off."""
    out: dict[str, dict[str, Any]] = {}
    for name, entry in section.items():
        if entry is None:
            continue
        if not isinstance(entry, dict) or "_target_" not in entry:
            raise ConfigError(f"{group}.{name}={entry!r}: must be a mapping with a _target_")
        out[name] = entry
    return out


def model_config(settings: RunSettings, vocab_size: int, seq_len: int) -> TransformerConfig:
    """The starting TransformerConfig: ``cfg.model`` plus vocabulary and length from data.

    An explicit ``model.vocab_size`` must cover the data's vocabulary and an explicit
    ``model.max_seq_len`` must cover ``data.seq_len``.
    """
    values = dict(settings.model)
    given_vocab = settings.model_overrides.get("vocab_size")
    if given_vocab is not None and given_vocab < vocab_size:
        raise ConfigError(
            f"model.vocab_size={given_vocab!r}: below the data's vocabulary of {vocab_size}"
        )
    given_len = settings.model_overrides.get("max_seq_len")
    if given_len is not None and given_len < seq_len:
        raise ConfigError(f"model.max_seq_len={given_len!r}: below data.seq_len={seq_len}")
    values["vocab_size"] = given_vocab or vocab_size
    values["max_seq_len"] = given_len or seq_len
    try:
        config = TransformerConfig(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model: {err}") from None
    return config


def with_compute_budget(
    settings: RunSettings, model: TransformerConfig, batch_size: int, seq_len: int
) -> tuple[RunSettings, float]:
    """``settings`` with ``trainer.max_steps`` set so that the run spends the budget.

    The budget is ``budget.steps`` optimizer steps of a model with ``budget.model``'s sizes
    (default: the growth schedule's final size) at the same global batch (``batch_size``
    per process x processes x accumulation); a growing run, whose early steps are cheaper,
    gets more steps. Its stages must be fractions of the run. Returns the new settings and
    the budget in FLOPs.
    """
    from progrow.flops import steps_for_budget, train_flops_per_token

    assert settings.budget_steps is not None
    processes = world_size(settings.trainer)
    if processes is None:
        raise ConfigError(
            f"budget.steps={settings.budget_steps} with "
            f"trainer.devices={settings.trainer.get('devices')!r}: set trainer.devices to a "
            "number, so that the tokens per step (and with them the budget) are known"
        )
    accumulate = int(settings.trainer.get("accumulate_grad_batches", 1) or 1)
    tokens_per_step = batch_size * seq_len * processes * accumulate
    if settings.budget_model:
        reference = model.replace(**settings.budget_model)
    else:
        reference = settings.growth.schedule.final_config(model)
    budget = settings.budget_steps * train_flops_per_token(reference, seq_len) * tokens_per_step
    stages = (settings.raw.get("growth") or {}).get("stages") or []
    try:
        max_steps = steps_for_budget(model, stages, budget, tokens_per_step, seq_len)
    except ValueError as err:
        raise ConfigError(f"budget.steps={settings.budget_steps}: {err}") from None
    raw = dict(settings.raw)
    raw["trainer"] = {**raw["trainer"], "max_steps": max_steps}
    return RunSettings.from_config(OmegaConf.create(raw)), budget
