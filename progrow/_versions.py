"""The oldest torch progrow runs on, checked when progrow is imported.

The floor is what the code needs, not a guess: ``DataLoader(in_order=...)`` (the
resumable training stream, :mod:`progrow.data.batches`) exists from torch 2.6 on. The
test suite runs on the versions the Makefile installs (torch 2.13, lightning 2.6);
``pyproject.toml`` declares the same floors (tests/test_versions.py keeps them in step).
"""

from __future__ import annotations

import re

#: Oldest supported torch (major, minor): ``DataLoader(in_order=...)``.
MIN_TORCH = (2, 6)


def parse_version(version: str) -> tuple[int, int]:
    """``"2.6.0+cu124"`` -> ``(2, 6)``.

    Example:
        >>> parse_version("2.13.0+cpu"), parse_version("2.6.0a0+git1234")
        ((2, 13), (2, 6))
    """
    match = re.match(r"(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"cannot read a version from {version!r}")
    return int(match.group(1)), int(match.group(2))


def check_floor(who: str, package: str, version: str, floor: tuple[int, int], why: str) -> None:
    """Raise ImportError, naming both versions, if ``version`` of ``package`` is older than
    ``floor``; ``why`` says what needs it and how to get a newer one."""
    if parse_version(version) < floor:
        low = ".".join(map(str, floor))
        raise ImportError(
            f"{who} needs {package}>={low} ({why}); this environment has {package} {version}"
        )


def check_torch(version: str) -> None:
    """Raise ImportError, naming both versions, if ``version`` is older than the floor."""
    why = "DataLoader(in_order=...); install a newer torch for your platform, pytorch.org"
    check_floor("progrow", "torch", version, MIN_TORCH, why)


#: Oldest supported transformers (the ``hf`` extra): Llama's RoPE settings are read from
#: ``config.rope_parameters``, which transformers 4.x does not have (it would import a
#: Llama 3 model with the default theta and its RoPE scaling silently ignored).
MIN_TRANSFORMERS = (5, 0)


def check_transformers(version: str) -> None:
    """Raise ImportError, naming both versions, if ``version`` is older than the floor."""
    why = "config.rope_parameters; pip install -e .[hf]"
    check_floor("progrow.hf", "transformers", version, MIN_TRANSFORMERS, why)


def _check_installed() -> None:
    import torch

    check_torch(torch.__version__)


_check_installed()
