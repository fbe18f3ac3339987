"""The package's layers: the pure core imports without Lightning; the entry points resolve.

Run in subprocesses so that what this test session already imported does not hide an
import, and with the checkout first on ``PYTHONPATH`` so that the checkout is tested, not
an installed copy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import progrow

REPO = Path(progrow.__file__).resolve().parents[1]

#: The pure core: model, expansions, records, optimizer surgery, schedules, FLOPs, data.
CORE = [
    "progrow",
    "progrow.config",
    "progrow.model",
    "progrow.expand",
    "progrow.record",
    "progrow.events",
    "progrow.surgery",
    "progrow.offline",
    "progrow.schedule",
    "progrow.flops",
    "progrow.optim",
    "progrow.data",
    "progrow.data.cache",
    "progrow.data.hf",
    "progrow.hf",
]


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pure_core_imports_without_lightning() -> None:
    code = (
        "import sys\n"
        f"for name in {CORE!r}: __import__(name)\n"
        "import progrow\n"
        "print(progrow.__file__)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'lightning_fabric', 'torchmetrics', 'hydra', "
        "'transformers', 'datasets')))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    file, heavy = result.stdout.strip().splitlines()[-2:]
    assert Path(file).resolve() == REPO / "progrow" / "__init__.py"
    assert heavy == "[]", f"the pure core imported {heavy}"


def test_lazy_names_and_entry_points_resolve() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    scripts = pyproject.split("[project.scripts]")[1].split("\n[")[0]
    targets = [*re.findall(r'^\S+ = "(\S+)"', scripts, re.MULTILINE), "progrow.train:main"]
    assert len(targets) == 4, scripts
    code = (
        "import importlib, lightning\n"
        "from progrow import GrowthCallback, LMDataModule, LMModule\n"
        "from progrow.training import GrowthCallback as G\n"
        "assert GrowthCallback is G and callable(LMModule) and callable(LMDataModule)\n"
        f"for target in {targets!r}:\n"
        "    module, func = target.split(':')\n"
        "    assert callable(getattr(importlib.import_module(module), func)), target\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_lazy_names_are_typed_for_users() -> None:
    # mypy checks this file (``make lint``, ``.ci/run``): with an untyped lazy
    # ``progrow.__getattr__`` these names would be ``object`` and the annotations below
    # would not type-check.
    from progrow import GrowthCallback, LMModule, OptimConfig, TransformerConfig

    callback: GrowthCallback = GrowthCallback([{"step": 1, "d_mlp": 8}])
    module: LMModule = LMModule(TransformerConfig(vocab_size=16, d_model=8), OptimConfig())
    steps: list[int] = [stage.step for stage in callback.schedule]
    assert steps == [1] and module.model.config.d_model == 8
