"""``torch.compile`` across growth (progrow.training.compiled, ``LMModule(compile=...)``).

* No graph breaks in any block variant, before and after growth (dynamo's ``explain``).
* A compiled growing run agrees with the eager one (losses, growth probes, final
  parameters) and compiles each size once: no recompilation storm, no stale graph.
* A compiled, grown run resumes exactly.

The default suite compiles with the ``aot_eager`` backend (dynamo and AOT autograd, no
code generation: seconds on CPU); the ``slow`` test uses inductor, what ``compile=true``
runs by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import make_model, make_tokens, tiny_config
from expansion_table import BLOCK_VARIANTS, COMPOSITIONS, GPT2_LAYERNORM
from lit_utils import TINY_MODEL, datamodule, growth, params, small_delta, trainer

from progrow import LMModule, grow
from progrow.training.compiled import compile_options, graphs_compiled, is_compiled

VARIANTS: dict[str, dict[str, Any]] = {"base": {}, "gpt2": GPT2_LAYERNORM, **BLOCK_VARIANTS}
MAX_STEPS = 12  # growth at steps 4 and 8 (lit_utils.TWO_STAGES)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch.compiler.reset()


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_no_graph_breaks_before_and_after_growth(variant: dict[str, Any]) -> None:
    cfg = tiny_config(**variant)
    model = make_model(cfg, dtype=torch.float32).train()
    for when in ("before", "after"):
        tokens = make_tokens(model.config)[:, :-1]
        explained = torch._dynamo.explain(model)(tokens)
        reasons = [str(r.reason) for r in explained.break_reasons]
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), (when, reasons)
        if when == "before":
            _grow_every_dimension(model)
    assert model.config.n_layers > cfg.n_layers and model.config.d_mlp > cfg.d_mlp


def _grow_every_dimension(model: Any) -> None:
    """All seven expansions (the table's composition), or, for LayerNorm blocks, which
    have no exact hidden expansion, every other dimension."""
    generator = torch.Generator().manual_seed(0)
    if model.config.norm == "rmsnorm":
        COMPOSITIONS["grow-all-interleave"](model, generator, "zero")
        return
    c = model.config
    sizes = dict(d_mlp=c.d_mlp + 2, d_v=c.d_v + 1, d_qk=c.d_qk + 1, n_layers=c.n_layers + 1)
    grow(model, **sizes, n_heads=c.n_heads + 1, generator=generator)


def test_the_graph_counter_is_dynamos() -> None:
    """graphs_compiled reads a private dynamo counter: this fails if torch moves it."""
    before = graphs_compiled()
    torch.compile(lambda x: x * 2 + 1, backend="eager")(torch.ones(3))
    assert graphs_compiled() == before + 1


def test_compile_options_are_checked() -> None:
    assert compile_options(False) is None and compile_options(None) is None
    assert compile_options(True) == {}
    assert compile_options({"backend": "aot_eager", "mode": None}) == {"backend": "aot_eager"}
    with pytest.raises(ValueError, match=r"\['bakend'\]"):
        compile_options({"bakend": "inductor"})


def _module(compile: Any, seed: int = 0) -> LMModule:
    torch.manual_seed(seed)
    optim = {"lr": 1e-2, "warmup_steps": 3, "max_steps": MAX_STEPS, "weight_decay": 0.1}
    return LMModule(TINY_MODEL, optim, compile=compile)


def _fit(cache: Path, compile: Any, **kwargs: Any) -> tuple[LMModule, Any]:
    module, cb = _module(compile), growth()
    callbacks: list[L.Callback] = [cb, *kwargs.pop("callbacks", [])]
    ckpt_path = kwargs.pop("ckpt_path", None)
    trainer(MAX_STEPS, callbacks, **kwargs).fit(
        module, datamodule=datamodule(cache), ckpt_path=ckpt_path
    )
    return module, cb


def check_compiled_matches_eager(cache: Path, backend: str, atol: float) -> LMModule:
    eager, eager_cb = _fit(cache, None)
    compiled, compiled_cb = _fit(cache, {"backend": backend})
    assert is_compiled(compiled.model) and not is_compiled(eager.model)
    assert [e.step for e in compiled_cb.events] == [e.step for e in eager_cb.events] == [4, 8]
    assert all(small_delta(e) for e in compiled_cb.events)
    for mine, theirs in zip(compiled_cb.events, eager_cb.events, strict=True):
        assert mine.loss_before == pytest.approx(theirs.loss_before, abs=atol)
    want, got = params(eager), params(compiled)
    assert want.keys() == got.keys()  # no _orig_mod. prefix: checkpoints stay eager-shaped
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=atol, msg=name)
    # One compile per size: at the start and after each growth, a few graphs each (the
    # training step; the eval-mode probe compiles inside the growth), never more.
    stats = compiled.compile_stats
    assert [s["step"] for s in stats] == [0, 4, 8]
    assert all(1 <= s["graphs"] <= 2 for s in stats), stats
    return compiled


def test_compiled_growth_matches_eager(cache: Path) -> None:
    """aot_eager runs the same kernels as eager: agreement to float32 rounding."""
    check_compiled_matches_eager(cache, "aot_eager", atol=1e-5)


@pytest.mark.slow
def test_inductor_growth_matches_eager(cache: Path) -> None:
    """Inductor fuses and reorders: a looser tolerance after 12 AdamW steps."""
    check_compiled_matches_eager(cache, "inductor", atol=1e-4)


def test_compiled_grown_run_resumes_exactly(cache: Path, tmp_path: Path) -> None:
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=6, save_top_k=-1, filename="{step}"
    )
    options = {"backend": "aot_eager"}
    full, _ = _fit(cache, options, callbacks=[ckpt], enable_checkpointing=True)
    torch.compiler.reset()
    resumed, cb = _fit(cache, options, ckpt_path=str(tmp_path / "step=6.ckpt"))
    assert is_compiled(resumed.model) and [e.step for e in cb.events] == [4, 8]
    want, got = params(full), params(resumed)
    assert want.keys() == got.keys()
    for name, value in want.items():
        assert torch.equal(got[name], value), name
