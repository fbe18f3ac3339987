"""The package's layers: the pure core imports without Lightning; the entry points resolve.

Run in subprocesses so that what this test session already imported does not hide an
import, and with the checkout first on ``PYTHONPATH`` so that the checkout is tested, not
an installed copy.
"""

from __future__ import annotations

import ast
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
    "progrow.moments",
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
    assert len(targets) == 5, scripts
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


def _import_graph() -> dict[str, set[str]]:
    """Module -> the progrow modules it imports, at module level or inside functions
    (``ast``, so an import in a function body counts as much as one at the top)."""
    root = REPO / "progrow"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package
                    for _ in range(node.level - 1):
                        up = up.rpartition(".")[0]
                    base = f"{up}.{base}" if base else up
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]  # fmt: skip
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target.split(".")[0] == "progrow" and resolve(target) != name:
                    graph[name].add(resolve(target))
                elif target.split(".")[0] != "progrow":
                    graph[name].add(f"<{target.split('.')[0]}>")
    return graph


#: The pure core: no Lightning, no Hydra, nothing from the layers above, even in functions.
CORE_PREFIXES = (
    *("progrow.config", "progrow.model", "progrow.expand", "progrow.record", "progrow.events"),
    *("progrow.surgery", "progrow.offline", "progrow.schedule", "progrow.flops", "progrow.optim"),
    *(
        "progrow.optimizer_layout",
        "progrow.moments",
        "progrow.factor_placement",
        "progrow.loss",
        "progrow.checkpoint_files",
    ),
    *("progrow.data", "progrow.hf"),
)
#: Layers, lowest first: a module may import its own layer and the ones below.
LAYERS = (CORE_PREFIXES, ("progrow.training",), ("progrow.app", "progrow.train"))


def _layer(module: str) -> int | None:
    for level, prefixes in enumerate(LAYERS):
        if module.startswith(prefixes):
            return level
    return None


def test_no_import_circle_and_no_import_upward() -> None:
    graph = _import_graph()
    upward = [
        f"{src} -> {dst}"
        for src, targets in graph.items()
        for dst in targets
        if not dst.startswith("<")
        and _layer(src) is not None
        and _layer(dst) is not None
        and _layer(dst) > _layer(src)  # type: ignore[operator]
    ]
    assert not upward, upward
    heavy = {"<lightning>", "<pytorch_lightning>", "<lightning_fabric>", "<hydra>", "<omegaconf>"}
    core_heavy = [f"{m} -> {t}" for m, ts in graph.items() if _layer(m) == 0 for t in ts & heavy]
    assert not core_heavy, core_heavy
    # Circles: a module reaching itself through the graph (the package __init__ files,
    # which re-export lazily, are left out: they import downward only).
    edges = {
        m: {t for t in ts if not t.startswith("<") and t != "progrow"} for m, ts in graph.items()
    }
    for start in edges:
        seen, todo = set(), list(edges[start])
        while todo:
            node = todo.pop()
            assert node != start, f"import circle through {start}"
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
