"""The README's two commands are what a new user runs: check that they install what
they need and that CI runs them first, exactly as written."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO


def _first_commands(text: str) -> list[str]:
    """The commands of the README's first ```bash block, comments dropped."""
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block is not None, "README has no bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_make_train_and_make_test() -> None:
    assert _first_commands((REPO / "README.md").read_text()) == ["make train", "make test"]


def test_ci_runs_the_readme_commands_first_as_written() -> None:
    """No prepared venv, no extras, no environment set before them: the user's path."""
    lines = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    commands = [line for line in lines if not line.startswith(("set ", "cd ", "started=", "echo "))]
    assert commands[:2] == ["make test", "make train"], commands[:4]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
@pytest.mark.parametrize(
    ("target", "extras"), [("test", '".[dev,hf]"'), ("train", '"."'), ("venv", '".[dev,hf]"')]
)
def test_make_installs_what_the_target_needs(target: str, extras: str, tmp_path: Path) -> None:
    """``make test`` brings the Hugging Face extra: the parity tests run, not skip."""
    venv = tmp_path / "venv"  # not there: make prints the whole install it would do
    out = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert f"{venv}/bin/pip install -e {extras}" in out.stdout, out.stdout
