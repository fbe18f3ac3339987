"""Declared dependency floors: they cover what the code needs, and what runs satisfies them."""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest
from conftest import REPO
from packaging.requirements import Requirement

from progrow._versions import (
    MIN_TORCH,
    MIN_TRANSFORMERS,
    check_torch,
    check_transformers,
    parse_version,
)


def declared() -> dict[str, Requirement]:
    pyproject = (REPO / "pyproject.toml").read_text()
    block = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    return {
        (req := Requirement(line)).name: req for line in re.findall(r'^\s*"([^"]+)"', block, re.M)
    }


def floor(req: Requirement) -> tuple[int, int]:
    (low,) = [s.version for s in req.specifier if s.operator == ">="]
    return parse_version(low)


def test_torch_floor_covers_the_features_used() -> None:
    torch_req = declared()["torch"]
    assert floor(torch_req) == MIN_TORCH >= (2, 6)  # DataLoader(in_order=...)
    assert not torch_req.specifier.contains("3.0")  # a range, but below the next major


def test_installed_versions_satisfy_the_declared_ranges() -> None:
    for name, req in declared().items():
        installed = version(name).split("+")[0]
        assert req.specifier.contains(installed, prereleases=True), (name, installed, req)


def test_lightning_floor_is_the_tested_minor() -> None:
    assert floor(declared()["lightning"]) == (2, 6)


@pytest.mark.parametrize(
    ("torch_version", "ok"),
    [("2.5.1", False), ("2.6.0+cu124", True), ("2.13.0+cpu", True), ("1.13.1", False)],
)
def test_old_torch_is_refused_with_a_clear_message(torch_version: str, ok: bool) -> None:
    if ok:
        check_torch(torch_version)
    else:
        with pytest.raises(
            ImportError, match=rf"progrow needs torch>=2\.6 .*torch {torch_version}"
        ):
            check_torch(torch_version)


def test_transformers_floor_is_the_hf_extras_and_old_ones_are_refused() -> None:
    """progrow.hf reads Llama's rope_parameters (transformers 5): an older transformers
    would import a Llama model with its RoPE settings ignored, so it is refused."""
    pyproject = (REPO / "pyproject.toml").read_text()
    (line,) = re.findall(r'^hf = \[.*"(transformers[^"]+)".*\]', pyproject, re.M)
    assert floor(Requirement(line)) == MIN_TRANSFORMERS
    check_transformers("5.24.0")
    with pytest.raises(ImportError, match=r"transformers>=5\.0 .*transformers 4\.57\.1"):
        check_transformers("4.57.1")
