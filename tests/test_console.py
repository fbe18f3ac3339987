"""The app's console helpers: config errors as one line, unused run folders removed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException, OverrideParseException

from progrow.app import ConfigError
from progrow.app.console import remove_if_unused, user_error
from progrow.app.grow import main as grow_main


def _raised_from(cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        return outer


def test_config_errors_become_one_line() -> None:
    assert user_error(ConfigError("trainer.max_steps=0: must be positive")) == (
        "trainer.max_steps=0: must be positive"
    )
    try:
        yaml.safe_load("stages:\n  - {step: 0.5, d_mlp: 128\n")
    except yaml.YAMLError as err:
        message = user_error(_raised_from(err))
    assert message is not None and message.startswith("YAML syntax error in ")
    assert "line 3" in message and "\n" not in message
    parse = OverrideParseException("growth.stages=[{", "no viable alternative\nSee the docs")
    assert user_error(parse) == (
        "cannot parse the override 'growth.stages=[{': no viable alternative See the docs"
    )
    composition = ConfigCompositionException("Could not find 'growth/x'\nConfig search path:\n a")
    assert user_error(composition) == "Could not find 'growth/x'"


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyError("x"), ZeroDivisionError()])
def test_other_errors_keep_their_traceback(error: Exception) -> None:
    assert user_error(error) is None


def test_only_a_folder_holding_nothing_but_hydra_files_is_removed(tmp_path: Path) -> None:
    unused = tmp_path / "unused"
    (unused / ".hydra").mkdir(parents=True)
    (unused / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (unused / "train.log").write_text("Seed set to 0\n")
    assert remove_if_unused(unused) and not unused.exists()
    used = tmp_path / "used"
    (used / ".hydra").mkdir(parents=True)
    (used / "checkpoints").mkdir()
    (used / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert not remove_if_unused(used) and (used / "checkpoints" / "last.ckpt").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file\n")
    assert not remove_if_unused(mine) and (mine / "notes.txt").is_file()
    assert not remove_if_unused(tmp_path / "missing")


@pytest.mark.parametrize("full", [False, True])
def test_main_reports_a_config_error_in_one_line_unless_full_errors_were_asked_for(
    full: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """In-process ``progrow-train trainer.max_steps=0``. A DDP rank re-runs the command
    with the HYDRA_FULL_ERROR=1 its parent set, so the user's choice travels in its own
    variable; neither is left behind."""
    from progrow.app.train import FULL_ERROR_ENV, main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROGROW_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv(FULL_ERROR_ENV, raising=False)
    if full:
        monkeypatch.setenv(FULL_ERROR_ENV, "1")  # as a rank started by a full-error launch
    monkeypatch.setattr("sys.argv", ["progrow-train", "trainer.max_steps=0"])
    if full:
        with pytest.raises(ConfigError, match=r"trainer\.max_steps=0"):
            main()
    else:
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == (
            "progrow-train: error: trainer.max_steps=0: must be a positive integer\n"
        )
        assert FULL_ERROR_ENV not in os.environ
    assert "HYDRA_FULL_ERROR" not in os.environ
    assert not list((tmp_path / "logs").rglob("*.log"))  # no run folder left behind


@pytest.mark.parametrize(
    ("branches", "message"),
    [
        (["wide:d_mlp=24", "wide:d_mlp=32"], r"--branch name\(s\) \['wide'\] given more than once"),
        (["../up:d_mlp=24"], r"--branch='\.\./up:d_mlp=24': expected NAME"),
        (["a/b:d_mlp=24"], r"--branch='a/b:d_mlp=24': expected NAME"),
    ],
)
def test_progrow_grow_refuses_branch_names_that_would_lose_an_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], branches: list[str], message: str
) -> None:
    """A repeated name would silently keep only its last sizes; a name with a folder in it
    would write outside -o. Both are refused before the checkpoint is even read."""
    argv = ["missing.ckpt", "-o", str(tmp_path / "family")]
    for branch in branches:
        argv += ["--branch", branch]
    with pytest.raises(SystemExit) as exit_info:
        grow_main(argv)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "family").exists()


def _composition_error(*overrides: str) -> BaseException:
    from hydra import compose, initialize_config_dir

    from progrow.app.config_values import CONF_DIR

    with (
        pytest.raises(ConfigCompositionException) as info,
        initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"),
    ):
        compose("train", overrides=list(overrides))
    return info.value


@pytest.mark.parametrize(
    ("override", "tail"),
    [
        ("trainer.max_stepz=100", "; did you mean trainer.max_steps?"),
        ("seeed=1", "; did you mean seed?"),
        ("trainr.max_steps=3", "; did you mean trainer.max_steps?"),
        ("growth.stages.0.stepp=3", "; did you mean growth.stages.0.step?"),
        ("zzzqqq.xx=3", " (to add it, use +zzzqqq.xx=3)"),
    ],
)
def test_a_typo_in_a_key_names_the_closest_existing_key(override: str, tail: str) -> None:
    """Hydra's advice for an unknown key is to add it with ``+``; for a typo the closest
    key of the composed config is what the user meant."""
    key = override.split("=")[0]
    assert user_error(_composition_error(override)) == f"{key}: no such key in the config{tail}"


def test_main_names_the_closest_key_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from progrow.app.train import FULL_ERROR_ENV, main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROGROW_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv(FULL_ERROR_ENV, raising=False)
    monkeypatch.setattr("sys.argv", ["progrow-train", "trainer.max_stepz=100"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "progrow-train: error: trainer.max_stepz: no such key in the config; did you mean "
        "trainer.max_steps?\n"
    )
