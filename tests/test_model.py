"""TransformerConfig validation and round-trip, and parameter counts."""

from __future__ import annotations

import math
from typing import Any

import pytest
from conftest import tiny_config

from progrow import Transformer, TransformerConfig

BAD_FIELDS = [
    ("vocab_size", 0),
    ("max_seq_len", -1),
    ("d_model", 2.5),
    ("d_mlp", "8"),
    ("n_heads", True),
    ("d_qk", 0),
    ("d_v", -3),
    ("n_layers", None),
    ("norm_eps", -1e-5),
    ("norm_eps", math.nan),
    ("norm_eps", math.inf),
    ("norm_eps", True),
    ("norm_eps", "1e-5"),
    ("activation", "tanh"),
    ("norm", "batchnorm"),
    ("final_norm", 1),
    ("tie_embeddings", "yes"),
    ("dropout", 1.0),
    ("dropout", -0.1),
    ("dropout", True),
    ("dropout", math.nan),
    ("init_std", 0),
    ("init_std", -0.02),
    ("init_std", True),
    ("init_std", math.inf),
    ("init_std", math.nan),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_bad_field_raises_naming_it(field: str, value: Any) -> None:
    with pytest.raises(
        ValueError, match=rf"^{field}\b.*{value!r}" if value is not math.nan else field
    ):
        TransformerConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        tiny_config().replace(**{field: value})


def test_unknown_field_in_from_dict_raises() -> None:
    data = tiny_config().to_dict() | {"d_ff": 3}
    with pytest.raises(ValueError, match="d_ff"):
        TransformerConfig.from_dict(data)


def test_round_trip() -> None:
    config = tiny_config(tie_embeddings=True, norm="layernorm", activation="relu", dropout=0.1)
    data = config.to_dict()
    assert TransformerConfig.from_dict(data) == config
    assert set(data) >= {"d_model", "d_mlp", "n_heads", "d_qk", "d_v", "n_layers"}
    assert config.sizes() == {
        "d_mlp": 5,
        "n_heads": 3,
        "d_v": 2,
        "d_qk": 3,
        "d_model": 7,
        "n_layers": 2,
    }


@pytest.mark.parametrize("final_norm", [True, False])
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("tied", [False, True])
def test_num_params(tied: bool, norm: str, final_norm: bool) -> None:
    config = tiny_config(tie_embeddings=tied, norm=norm, final_norm=final_norm)
    model = Transformer(config)
    expected = sum(p.numel() for p in model.parameters())
    assert config.num_params() == model.num_params() == expected


def test_model_rejects_too_long_sequence() -> None:
    import torch

    config = tiny_config()
    with pytest.raises(ValueError, match="max_seq_len=9"):
        Transformer(config)(torch.zeros(1, 10, dtype=torch.long))
