"""The family of model sizes ``progrow-plan`` chooses among, and the recipe they share.

A family is a start size, a target size and sizes between them, all alike but for the
growable dimensions (``progrow.config.GROWABLE_DIMS``), each reachable from the previous
one by growth (no dimension shrinks). Sizes come from model configs
(``conf/model/NAME.yaml``), inline mappings (``{d_model: 96, n_layers: 3}``: the start's
sizes with these changed), the stages of a growth schedule (``conf/growth/NAME.yaml``)
and sizes interpolated between start and target.

The recipe is what every run of the plan shares (the ``experiment=compare`` settings
with the user's Hydra overrides): the data, hence the vocabulary and the tokens per
optimizer step that turn a size's FLOPs per token into FLOPs per step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from progrow.app.config_values import CONF_DIR
from progrow.app.errors import ConfigError
from progrow.app.settings import FROM_DATA, RunSettings, model_config
from progrow.config import GROWABLE_DIMS, TransformerConfig
from progrow.flops import train_flops_per_token

#: Every run of a plan is an ``experiment=compare`` run (CSV logs, no progress bar,
#: budget.steps sizing), pilots and the recommended run alike.
EXPERIMENT = "experiment=compare"
#: Override keys the planner sets itself, refused on its command line (prefixes).
RESERVED = ("model", "growth", "budget", "experiment", "hydra", "trainer.max_steps", "ckpt_path")
#: ``model.<key>`` overrides that change a size rather than the whole family.
SIZE_KEYS = frozenset(GROWABLE_DIMS)


class PlanError(ValueError):
    """Bad input to ``progrow-plan``; the message names the flag and the value."""


def check_overrides(overrides: Sequence[str]) -> list[str]:
    """The Hydra overrides passed through to every run, checked: ``key=value`` each, and
    none of the keys the planner sets (the model sizes, the growth schedule, the budget,
    the run folder)."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item and not item.startswith("~"):
            raise PlanError(f"{item!r}: expected a Hydra override key=value (or a --flag)")
        reserved = next((r for r in RESERVED if key == r or key.startswith(r + ".")), None)
        if reserved == "model" and key.split(".", 1)[-1] not in SIZE_KEYS and "." in key:
            reserved = None  # model.activation=... applies to the whole family
        if reserved is not None:
            raise PlanError(
                f"{item!r}: progrow-plan sets {reserved} itself (sizes: --sizes / --growth; "
                "budget: --budget / --budget-steps; run folders: --cache)"
            )
        out.append(item)
    return out


def compose(overrides: Sequence[str]) -> DictConfig:
    """The app's config composed with ``overrides`` (Hydra's choices under ``hydra``),
    ``paths.output_dir`` set to a placeholder so that everything resolves."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    cfg.paths.output_dir = "."
    return cfg


def _settings(cfg: DictConfig) -> RunSettings:
    """RunSettings of ``cfg`` without its ``hydra`` node (checks every value)."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return RunSettings.from_config(OmegaConf.create(plain))


@dataclass(frozen=True)
class Recipe:
    """What every run of the plan shares."""

    overrides: tuple[str, ...]
    """The user's Hydra overrides, passed to every run."""
    base_model: str
    """Model config whose non-size fields every size shares (the first named size)."""
    settings: RunSettings
    """The composed config of a fixed-size run of the base model, checked."""
    vocab_size: int
    seq_len: int
    tokens_per_step: int
    """Tokens per optimizer step (batch x sequence x processes x accumulation)."""
    base_config: TransformerConfig
    """The base model's architecture: inline sizes change its sizes."""

    @property
    def warmup_steps(self) -> int:
        return int(self.settings.optim.get("warmup_steps", 0) or 0)


def recipe(overrides: Sequence[str], base_model: str | None) -> Recipe:
    """Compose and check the shared config; load the data's vocabulary (the corpus is
    read, or its cache built, as the first pilot would)."""
    from progrow.app.checks import world_size
    from progrow.optim import OptimConfig
    from progrow.training import LMDataModule

    model = [] if base_model is None else [f"model={base_model}"]
    cfg = compose([EXPERIMENT, *model, "growth=none", *overrides])
    settings = _settings(cfg)
    name = str(cfg.hydra.runtime.choices.get("model"))
    processes = world_size(settings.trainer)
    if processes is None:
        raise PlanError(
            f"trainer.devices={settings.trainer.get('devices')!r}: set a number of devices, "
            "so that the tokens per step (and with them every budget) are known"
        )
    accumulate = int(settings.trainer.get("accumulate_grad_batches", 1) or 1)
    try:  # what the app checks only when it builds the module: before any pilot here
        OptimConfig(**settings.optim, max_steps=10**9)  # lengths are checked per run
    except (TypeError, ValueError) as err:
        raise ConfigError(f"optim: {err}") from None
    try:
        datamodule = LMDataModule(**settings.data)
        vocab = datamodule.vocab_size
    except (TypeError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"data: {err}") from None
    seq_len = int(datamodule.seq_len)
    return Recipe(
        overrides=tuple(overrides),
        base_model=name,
        settings=settings,
        vocab_size=vocab,
        seq_len=seq_len,
        tokens_per_step=int(datamodule.batch_size) * seq_len * processes * accumulate,
        base_config=model_config(settings, vocab, seq_len),
    )


@dataclass(frozen=True)
class Size:
    """One size of the family."""

    label: str
    """Short name: the model config's, ``interp<i>``, ``<schedule>.<i>`` or ``size<i>``."""
    config: TransformerConfig
    """The whole architecture (vocabulary and length from the data)."""
    dims: dict[str, int]
    """The growable sizes the family varies (``n_kv_heads`` only under grouped-query
    attention)."""
    model_args: tuple[str, ...]
    """Hydra overrides that build it (``model=NAME``, then ``model.<dim>=N`` as needed)."""
    origin: str
    """Where it came from (for the report)."""
    flops_per_token: float = field(default=0.0)
    """Training FLOPs per token (progrow's count, :func:`progrow.flops.train_flops_per_token`)."""

    @property
    def params(self) -> int:
        return self.config.num_params()

    def step_flops(self, tokens_per_step: int) -> float:
        return self.flops_per_token * tokens_per_step

    def slug(self) -> str:
        """Folder-name form of the sizes: ``h64-p256-e2-k16-v16-l2`` (``-g<kv>`` with GQA)."""
        short = {
            "d_model": "h",
            "d_mlp": "p",
            "n_heads": "e",
            "d_qk": "k",
            "d_v": "v",
            "n_layers": "l",
            "n_kv_heads": "g",
        }
        return "-".join(f"{short[d]}{self.dims[d]}" for d in short if d in self.dims)

    def inline(self) -> str:
        """The sizes as a Hydra inline mapping, ``{d_model: 64, ...}``."""
        return "{" + ", ".join(f"{k}: {v}" for k, v in self.dims.items()) + "}"


def _family_dims(config: TransformerConfig) -> tuple[str, ...]:
    return tuple(d for d in GROWABLE_DIMS if d != "n_kv_heads" or config.n_kv_heads is not None)


def _size(
    label: str, config: TransformerConfig, recipe: Recipe, origin: str, named: str | None
) -> Size:
    dims = {d: config.sizes()[d] for d in _family_dims(config)}
    if named is not None:
        args: tuple[str, ...] = (f"model={named}",)
    else:
        base = recipe.base_config.sizes()
        changed = (f"model.{d}={v}" for d, v in dims.items() if base.get(d) != v)
        args = (f"model={recipe.base_model}", *changed)
    return Size(
        label=label,
        config=config,
        dims=dims,
        model_args=args,
        origin=origin,
        flops_per_token=train_flops_per_token(config, recipe.seq_len),
    )


def _model_of(name: str, recipe: Recipe) -> TransformerConfig:
    """The architecture of ``model=name`` under the recipe's overrides."""
    cfg = compose([EXPERIMENT, f"model={name}", "growth=none", *recipe.overrides])
    settings = _settings(cfg)
    return model_config(settings, recipe.vocab_size, recipe.seq_len)


def parse_size(text: str) -> str | dict[str, int]:
    """``--sizes`` item: a model config name (``conf/model/NAME.yaml`` must exist), or an
    inline YAML mapping of sizes."""
    if not text.lstrip().startswith("{"):
        if not (CONF_DIR / "model" / f"{text}.yaml").is_file():
            known = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
            raise PlanError(
                f"--sizes {text}: no model config conf/model/{text}.yaml; known: {known}"
            )
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict) or not value:
        raise PlanError(f"--sizes {text!r}: not a mapping like {{d_model: 96, n_layers: 3}}")
    unknown = sorted(set(map(str, value)) - set(GROWABLE_DIMS))
    if unknown:
        raise PlanError(f"--sizes {text!r}: unknown size(s) {unknown}; known: {GROWABLE_DIMS}")
    bad = {k: v for k, v in value.items() if isinstance(v, bool) or not isinstance(v, int)}
    if bad or any(v <= 0 for v in value.values()):
        raise PlanError(f"--sizes {text!r}: sizes must be positive integers")
    return {str(k): int(v) for k, v in value.items()}


def _non_size(config: TransformerConfig) -> dict[str, Any]:
    skip = {*GROWABLE_DIMS, *FROM_DATA, "norm_eps", "rope_inv_freq"}
    return {k: v for k, v in config.to_dict().items() if k not in skip}


def interpolate(start: Size, target: Size, count: int, recipe: Recipe) -> list[Size]:
    """``count`` sizes between ``start`` and ``target``: every dimension geometrically
    interpolated at ``i / (count + 1)`` and rounded (query heads to a multiple of the KV
    heads, ``d_qk`` even under RoPE), so that parameters grow about evenly in log scale."""
    out = []
    for i in range(1, count + 1):
        t = i / (count + 1)
        dims = {
            d: max(a, min(b, round(a * (b / a) ** t)))
            for d, a, b in ((d, start.dims[d], target.dims[d]) for d in start.dims)
        }
        if "n_kv_heads" in dims:
            kv = dims["n_kv_heads"]
            dims["n_heads"] = max(kv, kv * round(dims["n_heads"] / kv))
        if start.config.positions == "rope" and dims["d_qk"] % 2:
            dims["d_qk"] += 1
        try:
            config = start.config.replace(**dims)
        except ValueError:
            continue  # a combination the architecture refuses: left out
        out.append(_size(f"interp{i}", config, recipe, f"interpolated ({t:.2f} of the way)", None))
    return out


#: The widths a scout shrinks (heads and layers stay the start's).
SCOUT_WIDTHS = ("d_model", "d_mlp", "d_qk", "d_v")


def scouts(start: Size, count: int, recipe: Recipe) -> list[Size]:
    """``count`` sizes below ``start``, largest first: each the one above with its widths
    (:data:`SCOUT_WIDTHS`) times ``1/sqrt(2)``, rounded (at least 2; ``d_qk`` even under
    RoPE), so about half its parameters. They are pilots only: at a pilot's small
    compute the compute-optimal size lies below the family (measured: at 1-3% of the
    budget, 0.04-0.08M where the budget's is 0.24-0.68M), and an iso-FLOP slice shows
    where parameters start to pay only if it reaches below its optimum."""
    out: list[Size] = []
    config = start.config
    for i in range(1, count + 1):
        dims = {d: max(2, round(config.sizes()[d] / math.sqrt(2))) for d in SCOUT_WIDTHS}
        if start.config.positions == "rope" and dims["d_qk"] % 2:
            dims["d_qk"] += 1
        if all(dims[d] == config.sizes()[d] for d in dims):
            break  # nothing left to shrink
        config = config.replace(**dims)
        out.append(_size(f"scout{i}", config, recipe, f"scout {i} (pilots only)", None))
    return out


def _from_schedule(name: str, start: Size, recipe: Recipe) -> list[Size]:
    """The sizes after each stage of ``conf/growth/<name>.yaml``, grown from ``start``."""
    from progrow.expand.targets import grown_config

    path = CONF_DIR / "growth" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "growth").glob("*.yaml"))
        raise PlanError(f"--growth {name}: no schedule conf/growth/{name}.yaml; known: {known}")
    loaded = OmegaConf.to_container(OmegaConf.load(path))
    stages = loaded.get("stages") if isinstance(loaded, dict) else None
    if not stages:
        raise PlanError(f"--growth {name}: the schedule has no stages (nothing to grow to)")
    out, config = [], start.config
    for i, stage in enumerate(stages, 1):
        sizes = {k: v for k, v in dict(stage).items() if k in GROWABLE_DIMS and v is not None}
        try:
            config = grown_config(config, sizes)
        except ValueError as err:
            raise PlanError(f"--growth {name}: stage {i} from {start.label}: {err}") from None
        out.append(_size(f"{name}.{i}", config, recipe, f"growth={name} stage {i}", None))
    return out


def build_family(
    specs: Sequence[str], growth: str | None, intermediates: int | None, recipe: Recipe
) -> list[Size]:
    """The family, smallest first: ``specs`` (``--sizes``), the sizes of the ``growth``
    schedule grown from the smallest, and ``intermediates`` interpolated sizes between
    the smallest (the start) and the largest (the target); ``None``: 2 when only a start
    and a target are given, else 0. Duplicates are dropped; each size must be reachable
    from the previous one by growth."""
    parsed = [parse_size(s) for s in specs]
    base = recipe.base_config
    sizes: list[Size] = []
    for i, spec in enumerate(parsed):
        if isinstance(spec, str):
            config = _model_of(spec, recipe)
            differs = sorted(k for k, v in _non_size(config).items() if _non_size(base).get(k) != v)
            if differs:
                raise PlanError(
                    f"--sizes {spec}: differs from {recipe.base_model} in {differs}; a family "
                    "shares everything but the growable sizes"
                )
            sizes.append(_size(spec, config, recipe, f"model={spec}", spec))
        else:
            try:
                config = base.replace(**spec)
            except ValueError as err:
                raise PlanError(f"--sizes {specs[i]!r}: {err}") from None
            sizes.append(_size(f"size{i + 1}", config, recipe, f"--sizes {specs[i]}", None))
    if not sizes:
        sizes.append(
            _size(recipe.base_model, base, recipe, f"model={recipe.base_model}", recipe.base_model)
        )
    sizes = _ordered(sizes)
    if growth is not None:
        sizes = _ordered([*sizes, *_from_schedule(growth, sizes[0], recipe)])
    if len(sizes) < 2:
        raise PlanError(
            f"--sizes {' '.join(specs) or '(none)'}: a family needs a start and a larger "
            "target (two or more sizes, or --growth NAME)"
        )
    _check_growable(sizes)
    count = (2 if len(sizes) == 2 else 0) if intermediates is None else intermediates
    sizes = _ordered([*sizes, *interpolate(sizes[0], sizes[-1], count, recipe)])
    _check_growable(sizes)
    return sizes


def _ordered(sizes: Sequence[Size]) -> list[Size]:
    """By parameters, the first of equal sizes kept."""
    out: list[Size] = []
    for size in sorted(sizes, key=lambda s: (s.params, tuple(s.dims.values()))):
        if not any(s.dims == size.dims for s in out):
            out.append(size)
    return out


def _check_growable(sizes: Sequence[Size]) -> None:
    for small, big in itertools.pairwise(sizes):
        shrinks = sorted(d for d in small.dims if big.dims[d] < small.dims[d])
        if shrinks:
            raise PlanError(
                f"--sizes: {big.label} ({big.inline()}) has more parameters than "
                f"{small.label} ({small.inline()}) but a smaller {', '.join(shrinks)}: growth "
                "never shrinks a dimension, so a family must grow in every one"
            )


def describe(size: Size) -> str:
    """``label (0.12M params)``."""
    return f"{size.label} ({_human(size.params)} params)"


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def nearest(sizes: Sequence[Size], params: float) -> Size:
    """The size whose parameter count is nearest ``params`` in log scale."""
    return min(sizes, key=lambda s: abs(math.log(s.params) - math.log(params)))


def by_dims(sizes: Sequence[Size], dims: Mapping[str, int]) -> Size | None:
    """The size with these dims (extra keys of ``dims`` ignored), if any."""
    return next((s for s in sizes if all(dims.get(d) == v for d, v in s.dims.items())), None)


def conf_growth_dir() -> Path:
    return CONF_DIR / "growth"
