"""Every config in conf/ composes, resolves, validates and builds what the app builds from
it (everything but reading data and training); every growth schedule reaches the same
final size."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from progrow import GrowthCallback, OptimConfig
from progrow.app import ConfigError, RunSettings
from progrow.app.growth_settings import CUSTOM_SCHEDULE, validate_schedule
from progrow.app.settings import model_config, with_compute_budget
from progrow.app.train import CONF_DIR
from progrow.training import LMDataModule

os.environ.setdefault("WANDB_MODE", "disabled")

GROUPS = ("model", "growth", "data", "trainer", "logger", "callbacks", "paths", "experiment")
#: Keys each option needs set to resolve (they are `???` on purpose), or to validate: the
#: shipped schedules grow model=tiny, so the bigger starts are checked as fixed-size runs.
REQUIRED = {("data", "text"): ["data.path=README.md"], ("data", "hf"): [
    "data.path=some/dataset", "data.tokenizer=gpt2"], ("model", "small"): ["growth=none"],
    ("model", "medium"): ["growth=none"], ("model", "llama_small"): ["growth=llama"],
    ("model", "llama_target"): ["growth=none"],
    ("growth", "llama"): ["model=llama_small"], ("model", "scale_target"): ["growth=none"],
    ("model", "scale_start"): ["growth=scale_two_stage"],
    **{("growth", f"scale_{s}"): ["model=scale_start"] for s in ("early", "two_stage",
                                                                 "late")}}  # fmt: skip


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_train(*overrides: str, hydra_cfg: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_cfg)


def settings_of(cfg: DictConfig, tmp_path: Path) -> RunSettings:
    cfg.paths.output_dir = str(tmp_path)
    return RunSettings.from_config(cfg)


def test_conf_dir_is_the_top_level_conf() -> None:
    assert Path(__file__).resolve().parents[1] / "conf" == CONF_DIR
    assert (CONF_DIR / "train.yaml").is_file()


def build_all(settings: RunSettings) -> dict[str, Any]:
    """What ``progrow.app.train.run`` builds before reading data and training, from a
    vocabulary of 256: each step validates its part of the config."""
    data = LMDataModule(**settings.data)  # checks the arguments; reads nothing yet
    start = model_config(settings, vocab_size=256, seq_len=data.seq_len)
    if settings.budget_steps is not None:
        settings, _ = with_compute_budget(settings, start, data.batch_size, data.seq_len)
    validate_schedule(settings.growth, start, settings.max_steps)
    built: dict[str, Any] = {
        "settings": settings,
        "model": start,
        "optim": OptimConfig(**settings.optim, max_steps=settings.max_steps),
        "growth": GrowthCallback(
            settings.growth.schedule, seed=settings.seed, **settings.growth.options
        ),
        "callbacks": [instantiate(c) for c in settings.callbacks.values()],
        "loggers": [instantiate(c) for c in settings.loggers.values()],  # no W&B run starts
    }
    if settings.trainer["accelerator"] != "gpu" or torch.cuda.is_available():
        kwargs = {"callbacks": built["callbacks"], "logger": built["loggers"] or False}
        built["trainer"] = instantiate(settings.trainer, **kwargs, _convert_="all")
    return built


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS for o in options(g)], ids=lambda v: str(v)
)
def test_every_option_validates_and_builds(
    group: str, option: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose_train(f"{group}={option}", *REQUIRED.get((group, option), []))
    built = build_all(settings_of(cfg, tmp_path))
    settings = built["settings"]
    assert settings.max_steps > 0 and built["optim"].max_steps == settings.max_steps
    assert built["growth"].schedule == settings.growth.schedule
    if "trainer" in built:
        assert built["trainer"].max_steps == settings.max_steps


def test_a_schedule_given_on_the_command_line_is_not_labelled_as_the_default(
    tmp_path: Path,
) -> None:
    custom = "growth.stages=[{step: 0.5, d_mlp: 128}]"
    assert settings_of(compose_train(custom), tmp_path).growth.name == CUSTOM_SCHEDULE
    same = (
        "growth.stages=[{step: 0.75, d_model: 64, d_mlp: 256, n_heads: 4, d_qk: 16, d_v: 16, "
        "n_layers: 2}]"
    )
    assert settings_of(compose_train("growth=late", same), tmp_path).growth.name == "late"
    assert settings_of(compose_train("growth=late"), tmp_path).growth.name == "late"
    named = ["growth.name=mine", custom]
    assert settings_of(compose_train(*named), tmp_path).growth.name == "mine"


#: Schedules for another start and final model than model=tiny -> model=small.
GROWTH_MODELS = {
    "llama": ("llama_small", "llama_target"),
    # experiments/scale.py compares these with model=scale_target growth=none
    **{f"scale_{s}": ("scale_start", "scale_target") for s in ("early", "two_stage", "late")},
}


def test_every_growth_schedule_validates_and_ends_at_its_final_model(tmp_path: Path) -> None:
    for name in options("growth"):
        start_model, final_model = GROWTH_MODELS.get(name, ("tiny", "small"))
        target_settings = settings_of(compose_train(f"model={final_model}"), tmp_path)
        target = model_config(target_settings, vocab_size=256, seq_len=64)
        settings = settings_of(compose_train(f"growth={name}", f"model={start_model}"), tmp_path)
        start = model_config(settings, vocab_size=256, seq_len=64)
        validate_schedule(settings.growth, start, settings.max_steps)
        assert settings.growth.name == name
        if name != "none":
            grown = settings.growth.schedule.final_config(start)
            assert settings.growth.schedule.final_sizes(start) == target.sizes(), name
            # The very architecture of the final model (eps rescaled by the hidden growth).
            assert grown.replace(norm_eps=target.norm_eps) == target, name
            assert grown.norm_eps == pytest.approx(target.norm_eps * start.d_model / target.d_model)
            assert all(0 < s.step < settings.max_steps for s in settings.growth.schedule)


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks_instantiate(option: str, tmp_path: Path) -> None:
    settings = settings_of(compose_train(f"callbacks={option}"), tmp_path)
    built = [instantiate(c) for c in settings.callbacks.values()]
    names = {type(c).__name__ for c in built}
    assert {"ModelCheckpoint", "LearningRateMonitor", "StepProgressBar"} <= names


@pytest.mark.parametrize("option", options("logger"))
def test_loggers_instantiate(option: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    settings = settings_of(compose_train(f"logger={option}"), tmp_path)
    built = [instantiate(c) for c in settings.loggers.values()]  # no W&B run starts here
    assert "CSVLogger" in {type(lg).__name__ for lg in built}


@pytest.mark.parametrize("option", options("trainer"))
def test_trainers_instantiate(option: str, tmp_path: Path) -> None:
    settings = settings_of(compose_train(f"trainer={option}"), tmp_path)
    if settings.trainer["accelerator"] == "gpu" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    trainer = instantiate(settings.trainer, logger=False, _convert_="all")
    assert trainer.max_steps == settings.max_steps


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "hydra/launcher").glob("*")))
def test_launchers_compose_and_instantiate(option: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_train(f"hydra/launcher={option}", hydra_cfg=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert isinstance(launcher, dict)
    assert launcher["_target_"].startswith("hydra_plugins.hydra_submitit_launcher")
    built = instantiate(cfg.hydra.launcher, _recursive_=False)  # builds, submits nothing
    assert type(built).__name__ in ("LocalLauncher", "SlurmLauncher")


def test_unknown_group_option_names_it() -> None:
    with pytest.raises(MissingConfigException, match="model/huge"):
        compose_train("model=huge")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["trainer.max_steps=0"], r"trainer\.max_steps=0"),
        (["trainer.max_steps=-5"], r"trainer\.max_steps=-5"),
        (["growth.stages=[{step:0.5,d_mlp:-3}]"], r"growth\.stages.*d_mlp.*-3"),
        (
            ["growth.stages=[{step:0.5,d_mlp:64},{step:0.2,d_v:9}]"],
            r"growth\.stages.*must be greater",
        ),
        (["growth.stages=[{step:0.5,width:9}]"], r"growth\.stages.*unknown.*width"),
        (["+growth.bogus=1"], r"growth\.bogus"),
        (["+model.d_hidden=3"], r"model\.d_hidden"),
        (["+optim.max_steps=3"], r"optim\.max_steps=3"),
        (["data=text"], r"data\.path=\?\?\?"),
        (["ckpt_path=7"], r"ckpt_path=7"),
        (["resume_allow_changes=maybe"], r"resume_allow_changes='maybe'"),
        (
            ["growth.stages=[{step:0.5,d_mlp:128,layer_positions:interleave}]"],
            r"growth\.stages.*layer_positions='interleave'.*n_layers",
        ),
        (["growth.hidden_factor_at=norms"], r"growth\.hidden_factor_at='norms'.*readers"),
        (["growth.qk_factor_at=values"], r"growth\.qk_factor_at='values'.*shared"),
        (
            ["growth.stages=[{step:0.5,d_mlp:128,qk_factor_at:shared}]"],
            r"growth\.stages.*stage 0: qk_factor_at='shared' given without d_qk",
        ),
        (
            ["growth.stages=[{step:0.5,d_model:64,hidden_factor_at:Readers}]"],
            r"growth\.stages.*stage 0: hidden_factor_at='Readers'",
        ),
        (["growth.init=copy"], r"growth\.init='copy': use one of \['zero', 'split', 'stack'\]"),
        (
            ["growth.stages=[{step:0.5,d_mlp:64,init:Split}]"],
            r"growth\.stages.*stage 0: init='Split'",
        ),
    ],
)
def test_bad_config_names_key_and_value(overrides: list[str], match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        settings_of(compose_train(*overrides), tmp_path)


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ("[{step:0.5,d_qk:9}]", r"growth stage 0: d_qk=9 must be even with positions='rope'"),
        (
            "[{step:0.3,n_kv_heads:2},{step:0.5,n_heads:7}]",
            r"growth stage 1: n_heads=7 must be a multiple of n_kv_heads=2",
        ),
        (
            "[{step:0.5,n_kv_heads:2,n_heads:3}]",
            r"growth stage 0: n_heads=3 is below the model.s n_heads=4",
        ),
    ],
)
def test_llama_schedule_is_checked_against_the_model(
    stages: str, match: str, tmp_path: Path
) -> None:
    settings = settings_of(compose_train("experiment=llama", f"growth.stages={stages}"), tmp_path)
    start = model_config(settings, vocab_size=256, seq_len=64)
    with pytest.raises(ConfigError, match=r"growth\.stages \(growth=custom\): " + match):
        validate_schedule(settings.growth, start, settings.max_steps)


def test_growth_hidden_factor_at_places_every_hidden_stage(tmp_path: Path) -> None:
    """growth.hidden_factor_at reaches every stage that grows d_model and only those; a
    stage's own key wins. Unset, it is the readers, and the saved list names it on every
    stage that grows d_model (so the list keeps its meaning if the default changes)."""
    default = settings_of(compose_train(), tmp_path).growth.schedule
    assert all(stage.hidden_factor_at == "readers" for stage in default)
    listed = [("d_model" in s, s.get("hidden_factor_at")) for s in default.to_list()]
    assert listed == [(False, None), (True, "readers"), (True, "readers")]
    gains = settings_of(compose_train("growth.hidden_factor_at=gains"), tmp_path)
    placed = [(("d_model" in s.sizes), s.hidden_factor_at) for s in gains.growth.schedule]
    assert placed == [(False, "readers"), (True, "gains"), (True, "gains")]
    own = "growth.stages=[{step:0.2,d_model:48,hidden_factor_at:readers},{step:0.5,d_model:64}]"
    mixed = settings_of(compose_train("growth.hidden_factor_at=gains", own), tmp_path)
    assert [s.hidden_factor_at for s in mixed.growth.schedule] == ["readers", "gains"]


def test_growth_qk_factor_at_places_every_key_query_stage(tmp_path: Path) -> None:
    """growth.qk_factor_at reaches every stage that grows d_qk (all_six: stage 1) and only
    those, written into the list; a stage's own key wins."""
    default = settings_of(compose_train(), tmp_path).growth.schedule
    assert [s.get("qk_factor_at") for s in default.to_list()] == [None, "keys", None]
    shared = settings_of(compose_train("growth.qk_factor_at=shared"), tmp_path)
    assert [s.get("qk_factor_at") for s in shared.growth.schedule.to_list()] == [
        None,
        "shared",
        None,
    ]
    own = "growth.stages=[{step:0.2,d_qk:16,qk_factor_at:queries},{step:0.5,d_qk:24}]"
    mixed = settings_of(compose_train("growth.qk_factor_at=shared", own), tmp_path)
    assert [s.qk_factor_at for s in mixed.growth.schedule] == ["queries", "shared"]


def test_growth_init_fills_every_stage_without_its_own(tmp_path: Path) -> None:
    """growth.init reaches every stage; a stage's own init wins; the default (zero) is
    left out of the saved list."""
    default = settings_of(compose_train(), tmp_path).growth.schedule
    assert all(stage.init == "zero" for stage in default)
    assert all("init" not in s for s in default.to_list())
    split = settings_of(compose_train("growth.init=split"), tmp_path).growth.schedule
    assert [s.init for s in split] == ["split"] * len(split)
    assert all(s["init"] == "split" for s in split.to_list())
    own = "growth.stages=[{step:0.2,d_model:48,init:zero},{step:0.5,d_model:64}]"
    mixed = settings_of(compose_train("growth.init=split", own), tmp_path).growth.schedule
    assert [s.init for s in mixed] == ["zero", "split"]


def sbatch_overrides() -> list[str]:
    """The Hydra overrides ``slurm/train.sbatch`` passes itself, less those set from shell
    variables (``trainer=$TRAINER``, devices, nodes) and ``hydra.*``."""
    script = (CONF_DIR.parent / "slurm" / "train.sbatch").read_text()
    block = script.split("-m progrow.train \\\n", 1)[1].split('"$@"', 1)[0]
    words = [line.strip().rstrip("\\").strip() for line in block.splitlines()]
    return [w for w in words if w and "$" not in w and not w.startswith("hydra.")]


@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["growth=width_first"],
        ["model=medium", "growth=none"],
        ["model=medium", "growth.stages=[{step: 0.5, d_mlp: 4096, n_layers: 12}]"],
    ],
    ids=["as_shipped", "width_first", "medium", "medium_grown"],
)
def test_the_slurm_script_runs_as_written(trainer: str, extra: list[str], tmp_path: Path) -> None:
    """``sbatch slurm/train.sbatch [growth=...]`` (slurm/README.md) builds: its model and
    the shipped growth schedules fit together (the SLURM test overrides the model)."""
    overrides = sbatch_overrides()
    assert "ckpt_path=auto" in overrides  # the script was read
    cfg = compose_train(f"trainer={trainer}", *overrides, *extra)
    build_all(settings_of(cfg, tmp_path))
