"""The growth-tax levers from the app: ``growth.<option>`` reaches the stages and the
callback (and the optimizer groups it needs), is part of the run identity, and a bad
value is refused before training, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from progrow import TransformerConfig
from progrow.app import ConfigError, RunSettings
from progrow.app.job import optimizer_and_growth
from progrow.app.resume import identity_changes, run_identity
from progrow.app.train import CONF_DIR


def settings(tmp_path: Path, *overrides: str) -> RunSettings:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    cfg.paths.output_dir = str(tmp_path)
    return RunSettings.from_config(cfg)


def test_app_options_reach_the_stages_and_the_callback(tmp_path: Path) -> None:
    run = settings(
        tmp_path,
        "growth.shrink_perturb={shrink: 0.8, noise: 0.1}",
        "growth.new_noise=0.001",
        "growth.optimizer_state=reset_old",
        "growth.rewarmup_steps=5",
        "growth.rewarmup_from=0.25",
        "growth.lr_fan_in_exponent=1",
        "growth.lr_width_exponent=0",
        "growth.stages=[{step: 0.2, d_mlp: 128}, {step: 0.4, n_heads: 4, new_noise: 0.0}]",
    )
    stages = run.growth.schedule.to_list()
    assert stages[0]["shrink_perturb"] == {"shrink": 0.8, "noise": 0.1}
    assert stages[0]["new_noise"] == 0.001
    assert "new_noise" not in stages[1]  # a stage's own key wins
    assert run.optim["fan_in_groups"] is True  # the per-fan-in LR needs its groups
    optim, cb = optimizer_and_growth(run)
    assert optim.fan_in_groups and cb.optimizer_state == "reset_old"
    assert (cb.lr.rewarmup_from, cb.lr.lr_fan_in_exponent) == (0.25, 1.0)
    # A change of any of them is a change of the run (refused on resume).
    base = settings(tmp_path)
    model = TransformerConfig(vocab_size=256, max_seq_len=16)
    changes = "; ".join(identity_changes(run_identity(base, model, "d"),
                                         run_identity(run, model, "d")))  # fmt: skip
    for key in ("growth.optimizer_state carry -> reset_old", "growth.rewarmup_from 0.0 -> 0.25",
                "growth.lr_fan_in_exponent 0.0 -> 1", "growth schedule"):  # fmt: skip
        assert key in changes, key


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["growth.optimizer_state=reset"], r"growth: optimizer_state='reset'"),
        (["growth.shrink_perturb={shrink: 2}"], r"growth\.shrink_perturb=.*shrink must be"),
        (["growth.new_noise=-1"], r"growth\.new_noise=-1: must be a number >= 0"),
        (["growth.rewarmup_from=0.5"], r"growth: rewarmup_from=0.5 needs rewarmup_steps > 0"),
        (["growth.lr_fan_in_exponent=1"], r"growth: lr_fan_in_exponent=1 with lr_width_exp"),
        (
            ["growth.lr_fan_in_exponent=1", "growth.lr_width_exponent=0",
             "+optim.fan_in_groups=false"],
            r"optim\.fan_in_groups=false with growth\.lr_fan_in_exponent=1",
        ),
    ],
)  # fmt: skip
def test_app_refuses_bad_values_naming_the_key(
    overrides: list[str], match: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=match):
        optimizer_and_growth(settings(tmp_path, *overrides))
