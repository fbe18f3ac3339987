"""Hugging Face models grown by progrow: export after each expansion and after
compositions, refusals of layouts the family cannot hold, ``save_pretrained`` output that
``AutoModelForCausalLM`` loads and generates with. See test_hf.py for the float64 norm."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from hf_utils import (
    DTYPES,
    EXPORTABLE,
    REFUSED,
    TOL,
    build,
    exact_llama_norm,
    grow_id,
    hf_logits,
    max_diff,
    our_logits,
    tokens_for,
)

from progrow import grow
from progrow.hf import export_problems, from_hf, save_hf, to_hf


@pytest.fixture(autouse=True)
def _exact_norm_in_float64() -> Any:
    with exact_llama_norm():
        yield


# --- growth, then export ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", EXPORTABLE, ids=grow_id)
def test_grown_model_exports_with_the_same_logits(
    case: tuple[str, str, dict[str, Any]], dtype: torch.dtype
) -> None:
    family, variant, sizes = case
    hf = build(family, variant, dtype)
    tokens = tokens_for(hf)
    before = hf_logits(hf, tokens)
    model = from_hf(hf)
    grow(model, **sizes, generator=torch.Generator().manual_seed(0))
    for dim, value in sizes.items():
        assert dim == "layer_positions" or getattr(model.config, dim) == value, dim
    assert max_diff(our_logits(model, tokens), before) <= TOL[dtype]
    exported = to_hf(model, base_config=hf.config)
    assert type(exported) is type(hf)
    assert max_diff(hf_logits(exported, tokens), before) <= TOL[dtype]
    assert exported.config.eos_token_id == hf.config.eos_token_id  # kept from base_config


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: grow_id(c[:3]))
def test_unrepresentable_growth_is_refused_naming_the_dimension(
    case: tuple[str, str, dict[str, Any], str], tmp_path: Any
) -> None:
    family, variant, sizes, message = case
    model = from_hf(build(family, variant))
    grow(model, **sizes, generator=torch.Generator().manual_seed(0))
    assert any(message in problem for problem in export_problems(model.config))
    target = tmp_path / "export"
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        save_hf(model, target)
    assert not target.exists()  # refused before anything was written


def test_hidden_growth_of_gpt2_is_refused_by_the_expansion() -> None:
    model = from_hf(build("gpt2", "tied"))
    with pytest.raises(ValueError, match="layernorm"):
        grow(model, d_model=30)
    assert model.config.d_model == 24


# --- save_pretrained / from_pretrained / generate -------------------------------------------


@pytest.mark.parametrize("case", [EXPORTABLE[7], EXPORTABLE[8], EXPORTABLE[13]], ids=grow_id)
def test_saved_grown_model_loads_with_auto_class_and_generates(
    case: tuple[str, str, dict[str, Any]], tmp_path: Any
) -> None:
    from transformers import AutoModelForCausalLM

    family, variant, sizes = case
    hf = build(family, variant, torch.float32)
    tokens = tokens_for(hf)
    before = hf_logits(hf, tokens)
    model = from_hf(hf)
    grow(model, **sizes, generator=torch.Generator().manual_seed(0))
    save_hf(model, tmp_path / "grown", base_config=hf.config)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "grown").eval()
    assert type(loaded) is type(hf)
    assert loaded.config.hidden_size == model.config.d_model
    assert max_diff(hf_logits(loaded, tokens), before) <= TOL[torch.float32]
    out = loaded.generate(tokens[:, :4], max_new_tokens=5, do_sample=False)
    assert out.shape == (3, 9)
    with torch.no_grad():  # greedy continuation equals progrow's own argmax
        assert torch.equal(out[:, 4], model(tokens[:, :4])[:, -1].argmax(-1))
