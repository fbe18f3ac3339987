"""Hugging Face interop: import, growth, export, save/load, refusals (progrow.hf).

HF models are built from tiny local configs (no Hub access). Skipped only when
``transformers`` is not installed; CI installs it (the ``hf`` extra).

Hugging Face's ``LlamaRMSNorm`` normalizes in float32 whatever the weights' dtype, so a
float64 Llama is only float32-accurate. The float64 tests compare against HF with that
one line computed in the input's dtype (``exact_llama_norm``), which is what makes a
1e-10 comparison meaningful; the float32 tests use HF as shipped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from hf_utils import (  # noqa: E402
    CASES,
    DTYPES,
    LAYOUT_REFUSALS,
    TOL,
    build,
    exact_llama_norm,
    hf_logits,
    hf_refusals,
    max_diff,
    our_logits,
    tokens_for,
)

from progrow import Transformer, TransformerConfig  # noqa: E402
from progrow.hf import export_problems, from_hf, hf_family, save_hf, to_hf  # noqa: E402


@pytest.fixture(autouse=True)
def _exact_norm_in_float64(request: pytest.FixtureRequest) -> Any:
    with exact_llama_norm():
        yield


# --- import parity ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize(("family", "variant"), CASES)
def test_from_hf_same_logits(family: str, variant: str, dtype: torch.dtype) -> None:
    hf = build(family, variant, dtype)
    model = from_hf(hf)
    assert next(model.parameters()).dtype == dtype and not model.training
    assert hf_family(model.config) == family
    tokens = tokens_for(hf)
    assert max_diff(our_logits(model, tokens), hf_logits(hf, tokens)) <= TOL[dtype]


def test_llama_float32_norm_as_shipped_is_float32_accurate() -> None:
    """Without the exact norm, HF's float64 Llama differs at float32 rounding, not more."""
    hf = build("llama", "gqa_untied", torch.float64)
    model = from_hf(hf)
    tokens = tokens_for(hf)
    ours = our_logits(model, tokens)
    with exact_llama_norm(enabled=False):
        stock = hf_logits(hf, tokens)
    assert 1e-12 < max_diff(ours, stock) < 1e-5


def test_imported_config_fields() -> None:
    hf = build("llama", "mqa_headdim_bias_tied")
    config = from_hf(hf).config
    assert (config.d_model, config.n_heads, config.n_kv_heads, config.d_qk, config.d_v) == (
        20,
        2,
        1,
        14,
        14,
    )
    assert (config.d_mlp, config.rope_theta, config.activation) == (33, 500.0, "gelu_tanh")
    assert config.tie_embeddings and config.attn_bias and config.mlp_bias and config.mlp_gated
    mha = from_hf(build("llama", "mha_tied")).config
    assert mha.n_kv_heads is None  # plain multi-head attention keeps growing KV with Q heads
    gpt = from_hf(build("gpt2", "untied_odd")).config
    assert (gpt.norm, gpt.positions, gpt.d_mlp, gpt.d_qk, gpt.activation) == (
        "layernorm",
        "learned",
        29,
        5,
        "gelu",
    )
    assert not gpt.tie_embeddings and gpt.attn_bias and gpt.mlp_bias


def test_imported_model_shares_no_memory() -> None:
    hf = build("gpt2", "tied")
    model = from_hf(hf)
    with torch.no_grad():
        model.tok_emb.weight.add_(1.0)
    assert not torch.equal(model.tok_emb.weight, hf.transformer.wte.weight)
    assert model.lm_head.weight is model.tok_emb.weight  # tying kept inside progrow


# --- round trip --------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_round_trip_is_exact(family: str, variant: str) -> None:
    hf = build(family, variant, torch.float32)
    back = to_hf(from_hf(hf), base_config=hf.config)
    assert type(back) is type(hf)
    original, restored = hf.state_dict(), back.state_dict()
    assert original.keys() == restored.keys()
    for name, value in original.items():
        assert torch.equal(value, restored[name]), name
    for field in ("hidden_size", "num_attention_heads", "vocab_size", "tie_word_embeddings"):
        assert getattr(back.config, field) == getattr(hf.config, field), field
    assert back.config.to_dict()["architectures"] == [type(hf).__name__]
    again = from_hf(back)
    assert again.config == from_hf(hf).config


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize(("family", "variant"), CASES)
def test_to_hf_same_logits(family: str, variant: str, dtype: torch.dtype) -> None:
    hf = build(family, variant, dtype)
    model = from_hf(hf)
    exported = to_hf(model)
    assert next(exported.parameters()).dtype == dtype and not exported.training
    assert exported.config.eos_token_id is None  # no base_config: token ids not guessed
    tokens = tokens_for(hf)
    assert max_diff(hf_logits(exported, tokens), our_logits(model, tokens)) <= TOL[dtype]


# --- refusals on progrow layouts and on HF models -------------------------------------------


@pytest.mark.parametrize(
    ("family", "fields", "message"), LAYOUT_REFUSALS, ids=[m for _, _, m in LAYOUT_REFUSALS]
)
def test_to_hf_refuses_layouts_the_family_cannot_hold(
    family: str, fields: dict[str, Any], message: str
) -> None:
    model = Transformer(TransformerConfig(**fields))
    with pytest.raises(ValueError, match=re.escape(message)):
        to_hf(model, family=family)


def test_default_progrow_model_lists_every_reason() -> None:
    problems = export_problems(TransformerConfig())  # learned positions: GPT-2 family
    assert [p.split(":")[0] for p in problems] == ["norm='rmsnorm'"]
    problems = export_problems(TransformerConfig(), family="llama")
    assert {p.split(":")[0] for p in problems} == {"positions='learned'", "mlp_gated=False"}
    with pytest.raises(ValueError, match="family='bert'"):
        to_hf(Transformer(TransformerConfig(n_layers=1)), family="bert")


@pytest.mark.parametrize("case", hf_refusals(), ids=lambda c: c[0])
def test_from_hf_refuses_unsupported_models_naming_the_field(case: tuple[str, Any, str]) -> None:
    _, make, message = case
    with pytest.raises(ValueError, match=re.escape(message)):
        from_hf(make())


def test_to_hf_refuses_a_base_config_of_another_family() -> None:
    model = from_hf(build("llama", "gqa_untied"))
    gpt2_config = build("gpt2", "tied").config
    with pytest.raises(ValueError, match=r"base_config\.model_type='gpt2'"):
        to_hf(model, base_config=gpt2_config)


def test_save_hf_refuses_a_non_empty_folder(tmp_path: Any) -> None:
    model = from_hf(build("gpt2", "tied"))
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        save_hf(model, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(("family", "variant"), [CASES[1], CASES[4]])
def test_save_hf_loads_with_auto_class_and_generates(
    family: str, variant: str, tmp_path: Any
) -> None:
    from transformers import AutoModelForCausalLM

    hf = build(family, variant, torch.float32)
    model = from_hf(hf)
    tokens = tokens_for(hf)
    assert save_hf(model, tmp_path / "out", base_config=hf.config) == tmp_path / "out"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(loaded) is type(hf)
    assert max_diff(hf_logits(loaded, tokens), our_logits(model, tokens)) <= TOL[torch.float32]
    out = loaded.generate(tokens[:, :4], max_new_tokens=5, do_sample=False)
    assert out.shape == (3, 9)
    with torch.no_grad():  # the first greedy token is progrow's own argmax
        assert torch.equal(out[:, 4], model(tokens[:, :4])[:, -1].argmax(-1))


# --- the README's example ------------------------------------------------------------------


def test_docstring_examples_of_progrow_hf_run() -> None:
    import doctest

    import progrow.hf

    result = doctest.testmod(progrow.hf)
    assert result.attempted > 0 and result.failed == 0


def readme_section_code(heading: str) -> str:
    """The first ```python block under ``## heading`` of the README."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_hugging_face_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # it writes ./grown-llama
    exec(compile(readme_section_code("Grow a Hugging Face model"), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "LlamaForCausalLM 96 4"
    assert float(out[1].split(":")[1]) < 1e-5
    assert out[2] == "torch.Size([2, 12])"
    assert (tmp_path / "grown-llama" / "config.json").is_file()
