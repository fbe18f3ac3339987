"""Bad input to the expansions raises ``ValueError`` naming the dimension and the value,
before anything changes; equal sizes are no-ops."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from conftest import make_model, snapshot, tiny_config
from expansion_table import ALL_CASES, EXPANSIONS, ExpansionCase
from torch import nn

from progrow import (
    GrowthSchedule,
    Transformer,
    TransformerConfig,
    add_heads,
    add_layers,
    expand_hidden,
    expand_qk,
    grow,
)

Before = tuple[dict[str, nn.Parameter], dict[str, torch.Tensor], TransformerConfig]


def capture(model: Transformer) -> Before:
    """The parameter objects, a copy of every tensor in the state dict, and the config."""
    state = {name: t.detach().clone() for name, t in model.state_dict().items()}
    return dict(model.named_parameters()), state, model.config


def assert_unchanged(model: Transformer, before: Before) -> None:
    """The model holds the very same parameter objects, with the same values, and config."""
    params_before, values_before, config = before
    assert model.config == config
    params = dict(model.named_parameters())
    assert list(params) == list(params_before)
    for name, p in params.items():
        assert p is params_before[name], name
    state = model.state_dict()
    assert state.keys() == values_before.keys()
    for name, value in state.items():
        assert torch.equal(value, values_before[name]), name


BAD_VALUES = [
    pytest.param("below", id="below"),
    pytest.param(0, id="zero"),
    pytest.param(-3, id="negative"),
    pytest.param(2.5, id="float"),
    pytest.param("8", id="str"),
    pytest.param(True, id="bool"),
]


def _bad(case: ExpansionCase, model: Transformer, value: Any) -> Any:
    return model.config.sizes()[case.dim] - 1 if value == "below" else value


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("case", EXPANSIONS, ids=repr)
def test_bad_target_raises_and_changes_nothing(case: ExpansionCase, value: Any) -> None:
    model = make_model(tiny_config())
    value = _bad(case, model, value)
    before_call = capture(model)
    config = model.config
    match = rf"{case.dim}\b.*{re.escape(repr(value))}"
    with pytest.raises(ValueError, match=match):
        case.fn(model, value, **case.kwargs)
    assert_unchanged(model, before_call)
    # Through grow(), alongside a good target: nothing at all is applied.
    good = "d_mlp" if case.dim != "d_mlp" else "n_heads"
    with pytest.raises(ValueError, match=match):
        grow(model, **{good: getattr(config, good) + 2, case.dim: value})
    assert_unchanged(model, before_call)


@pytest.mark.parametrize("case", ALL_CASES, ids=repr)
def test_equal_size_is_a_noop(case: ExpansionCase) -> None:
    model = make_model(tiny_config())
    before_call = capture(model)
    config = model.config
    before = snapshot(model)
    record = case.fn(model, config.sizes()[case.dim], **case.kwargs)
    assert record.is_noop
    assert_unchanged(model, before_call)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_grow_to_current_sizes_is_a_noop() -> None:
    model = make_model(tiny_config())
    before_call = capture(model)
    config = model.config
    sizes: dict[str, Any] = config.sizes()
    assert grow(model, **sizes).is_noop
    assert_unchanged(model, before_call)


def test_hidden_expansion_of_layernorm_model_raises() -> None:
    model = make_model(tiny_config(norm="layernorm"))
    before_call = capture(model)
    match = r"d_model=13.*rmsnorm.*mean"
    with pytest.raises(ValueError, match=match):
        expand_hidden(model, 13)
    assert_unchanged(model, before_call)
    with pytest.raises(ValueError, match=match):
        grow(model, d_mlp=11, n_heads=5, d_model=13, n_layers=3)
    assert_unchanged(model, before_call)


BAD_POSITIONS = [
    pytest.param([0, 0], r"positions=\[0, 0\] has duplicates", id="duplicates"),
    pytest.param([0], r"positions=\[0\] must list 2", id="too-few"),
    pytest.param([0, 1, 2], r"positions=\[0, 1, 2\] must list 2", id="too-many"),
    pytest.param([0, 4], r"positions=\[0, 4\]: \[4\] out of range", id="past-end"),
    pytest.param([-1, 0], r"positions=\[-1, 0\]: \[-1\] out of range", id="negative"),
    pytest.param([0.0, 1], r"positions must be integers, got \[0\.0\]", id="float"),
    pytest.param([True, 1], r"positions must be integers, got \[True\]", id="bool"),
    pytest.param("middle", r"positions must be .*'middle'", id="unknown-mode"),
]


@pytest.mark.parametrize(("positions", "match"), BAD_POSITIONS)
def test_bad_layer_positions_raise_and_change_nothing(positions: Any, match: str) -> None:
    model = make_model(tiny_config())  # 2 layers -> 4
    before_call = capture(model)
    with pytest.raises(ValueError, match=match):
        add_layers(model, 4, positions=positions)
    assert_unchanged(model, before_call)
    with pytest.raises(ValueError, match=match):
        grow(model, d_mlp=11, d_model=13, n_layers=4, layer_positions=positions)
    assert_unchanged(model, before_call)


def test_grow_unknown_dimension_raises_and_changes_nothing() -> None:
    model = make_model(tiny_config())
    before_call = capture(model)
    with pytest.raises(ValueError, match=r"d_foo.*d_mlp"):
        grow(model, d_mlp=11, d_foo=3)
    assert_unchanged(model, before_call)


def test_expansion_of_non_transformer_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"progrow\.Transformer"):
        expand_hidden(nn.Linear(3, 3), 5)  # type: ignore[arg-type]


LLAMA = dict(
    activation="silu", mlp_gated=True, mlp_bias=False, positions="rope", d_qk=6, n_heads=6,
    n_kv_heads=3,
)  # fmt: skip
BLOCK_REFUSALS = [
    pytest.param(
        add_heads, 7, {"n_heads": 7}, r"n_heads=7 must be a multiple of n_kv_heads=3", id="gqa"
    ),
    pytest.param(
        expand_qk, 7, {"d_qk": 7}, r"d_qk=7 must be even with positions='rope'", id="rope-odd"
    ),
    pytest.param(
        None,
        None,
        {"n_kv_heads": 4, "n_heads": 6},
        r"n_heads=6 is below the model's n_heads=8",
        id="kv-growth-brings-query-heads",
    ),
]


@pytest.mark.parametrize(("fn", "value", "sizes", "match"), BLOCK_REFUSALS)
def test_block_layout_refusals_change_nothing(fn: Any, value: Any, sizes: Any, match: str) -> None:
    model = make_model(tiny_config(**LLAMA))
    before_call = capture(model)
    if fn is not None:
        with pytest.raises(ValueError, match=match):
            fn(model, value)
        assert_unchanged(model, before_call)
    with pytest.raises(ValueError, match=match):
        grow(model, d_mlp=11, **sizes)
    assert_unchanged(model, before_call)
    with pytest.raises(ValueError, match=rf"growth stage 0: {match}"):
        GrowthSchedule([{"step": 1, **sizes}]).validate_for(model.config)


@pytest.mark.parametrize("value", ["Keys", "values", None, 1])
def test_bad_key_query_factor_placement_raises_and_changes_nothing(value: Any) -> None:
    model = make_model(tiny_config())
    before_call = capture(model)
    with pytest.raises(ValueError, match=rf"factor_at={re.escape(repr(value))}.*shared"):
        expand_qk(model, 5, factor_at=value)
    assert_unchanged(model, before_call)
    # Through grow(), with other targets that come first: nothing at all is applied.
    with pytest.raises(ValueError, match=rf"qk_factor_at={re.escape(repr(value))}"):
        grow(model, d_mlp=11, d_qk=5, qk_factor_at=value)
    assert_unchanged(model, before_call)


@pytest.mark.parametrize("value", ["Readers", "norms", None, 1])
def test_bad_hidden_factor_placement_raises_and_changes_nothing(value: Any) -> None:
    model = make_model(tiny_config())
    before_call = capture(model)
    with pytest.raises(ValueError, match=rf"factor_at={re.escape(repr(value))}.*readers"):
        expand_hidden(model, 13, factor_at=value)
    assert_unchanged(model, before_call)
    # Through grow(), with other targets that come first: nothing at all is applied.
    with pytest.raises(ValueError, match=rf"hidden_factor_at={re.escape(repr(value))}"):
        grow(model, d_mlp=11, d_model=13, hidden_factor_at=value)
    assert_unchanged(model, before_call)


@pytest.mark.parametrize("value", ["foo", "Split", None, 0])
@pytest.mark.parametrize("case", EXPANSIONS, ids=repr)
def test_bad_init_raises_naming_it_and_changes_nothing(case: ExpansionCase, value: Any) -> None:
    model = make_model(tiny_config())
    before_call = capture(model)
    match = rf"init={re.escape(repr(value))}: use one of \['zero', 'split', 'stack'\]"
    with pytest.raises(ValueError, match=match):
        case.fn(model, case.target(model.config), init=value)
    assert_unchanged(model, before_call)
    with pytest.raises(ValueError, match=match):
        sizes: dict[str, Any] = {"d_mlp": 11, case.dim: case.target(model.config)}
        grow(model, **sizes, init=value)
    assert_unchanged(model, before_call)
