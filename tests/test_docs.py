"""The repository stands alone: no text points outside it, and its own doc links resolve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import progrow

REPO = Path(progrow.__file__).resolve().parents[1]
#: Phrases that point readers at material they do not have (built up so this file does
#: not match itself).
OUTSIDE = re.compile("|".join([r"shared" + r"/", r"\bthe " + r"notes\b", r"notes " + r"on the"]))
TEXT = (".py", ".md", ".yaml", ".toml", ".sbatch", ".cfg", ".txt", "Makefile", "run")


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / line for line in out.splitlines() if line.endswith(TEXT)]


def test_nothing_cites_material_outside_the_repository() -> None:
    hits = [
        f"{path.relative_to(REPO)}:{i}: {line.strip()}"
        for path in tracked_files()
        if path.is_file()
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("doc", ["docs/expansions.md", "docs/lightning-growth.md"])
def test_docs_exist_and_are_linked(doc: str) -> None:
    assert (REPO / doc).is_file()
    assert f"]({doc})" in (REPO / "README.md").read_text()


def test_relative_markdown_links_resolve() -> None:
    broken = []
    for path in tracked_files():
        if path.suffix != ".md" or not path.is_file():
            continue
        for target in re.findall(r"\]\(([^)#\s]+)", path.read_text()):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(REPO)} -> {target}")
    assert not broken, broken
