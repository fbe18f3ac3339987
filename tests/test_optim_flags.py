"""AdamW's ``foreach``/``fused`` choice survives growth inside ``trainer.fit``.

The growth callback edits the live optimizer in place (``progrow.surgery.update_optimizer``
replaces each group's params and the state, nothing else), so every group keeps the
implementation it was built with. Checked both ways: the flags in ``param_groups`` after
the last growth, and which of torch's AdamW implementations the steps after it ran.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch.optim.adam as torch_adam
from lit_utils import datamodule, growth, lm_module, trainer

#: Implementations torch's Adam/AdamW dispatch to (looked up at call time).
IMPLEMENTATIONS = {
    "_single_tensor_adam": "single",
    "_multi_tensor_adam": "foreach",
    "_fused_adam": "fused",
}
MAX_STEPS = 10  # growth at steps 4 and 8 (lit_utils.TWO_STAGES)


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the implementation of every AdamW group update from now on."""
    calls: list[str] = []
    for attr, label in IMPLEMENTATIONS.items():
        original = getattr(torch_adam, attr)

        def spy(
            *args: Any, _fn: Callable[..., Any] = original, _label: str = label, **kw: Any
        ) -> Any:
            calls.append(_label)
            return _fn(*args, **kw)

        monkeypatch.setattr(torch_adam, attr, spy)
    return calls


@pytest.mark.parametrize(
    ("flags", "implementation"),
    [
        ({"foreach": False, "fused": False}, "single"),
        ({"foreach": True}, "foreach"),  # not CPU's default (single-tensor)
        ({"fused": True}, "fused"),  # fused AdamW runs on CPU since torch 2.4
    ],
    ids=["foreach=False,fused=False", "foreach=True", "fused=True"],
)
def test_adamw_implementation_survives_growth(
    flags: dict[str, bool], implementation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = lm_module(MAX_STEPS, optim=flags)
    calls = _count_calls(monkeypatch)
    fit = trainer(MAX_STEPS, [growth()])
    fit.fit(module, datamodule(tmp_path / "cache"))
    assert module.model.config.n_layers == 3  # both stages grew
    (optimizer,) = fit.optimizers
    assert len(optimizer.param_groups) == 2
    for group in optimizer.param_groups:
        for key, value in flags.items():
            assert group[key] is value, (key, group[key])
    # One call per param group and step, all steps (after both growths too) alike.
    assert calls == [implementation] * (2 * MAX_STEPS)
