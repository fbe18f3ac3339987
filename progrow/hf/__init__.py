"""Hugging Face interop: import a ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` as a
:class:`progrow.Transformer`, grow it, and export it back to its family.

``transformers`` is an optional dependency (``pip install -e .[hf]``), imported only when
a function here needs it.

The family of a progrow model is derived from its config, so it survives checkpoints,
growth and ``deepcopy`` without any extra state: rotary positions mean Llama, learned
positions mean GPT-2 (``to_hf(model, family=...)`` overrides). What the HF config holds
besides the architecture (token ids, ``name_or_path``, generation defaults, ...) is not
part of a progrow model; pass the original config as ``base_config`` to keep it.

Example:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> hf = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    >>> model = from_hf(hf)
    >>> model.config.positions, model.config.n_kv_heads, hf_family(model.config)
    ('rope', 1, 'llama')
    >>> type(to_hf(model, base_config=hf.config)).__name__
    'LlamaForCausalLM'
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from progrow._versions import check_transformers
from progrow.config import TransformerConfig
from progrow.hf import gpt2, llama
from progrow.hf._common import Family
from progrow.model import Transformer

#: The supported families by name (``to_hf(family=...)``).
FAMILIES: dict[str, Family] = {"llama": llama.FAMILY, "gpt2": gpt2.FAMILY}


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "progrow.hf needs the `transformers` package: pip install -e .[hf]"
        ) from err
    check_transformers(transformers.__version__)
    return transformers


def _family_of_hf(hf_model: Any) -> Family:
    transformers = _require_transformers()
    for family in FAMILIES.values():
        if isinstance(hf_model, getattr(transformers, family.hf_class)):
            return family
    supported = ", ".join(f.hf_class for f in FAMILIES.values())
    raise ValueError(
        f"from_hf: unsupported model class {type(hf_model).__name__}; supported: {supported}"
    )


def from_hf(hf_model: Any) -> Transformer:
    """A :class:`progrow.Transformer` computing the same logits as ``hf_model``.

    Supports ``LlamaForCausalLM`` (grouped-query attention, any ``head_dim``, attention and
    MLP biases, tied or untied embeddings, default RoPE) and ``GPT2LMHeadModel`` (Conv1D
    weights transposed, the fused ``c_attn`` split into q, k, v). The result has the
    HF model's dtype and device, is in eval mode, and shares no memory with it.

    Args:
        hf_model: The Hugging Face causal language model.

    Returns:
        The progrow model. Its config says the family (see :func:`hf_family`).

    Raises:
        ValueError: The class or a config field is not supported (named with its value),
            before anything is built.
    """
    family = _family_of_hf(hf_model)
    config = family.config_from_hf(hf_model.config)
    hf_params = dict(hf_model.named_parameters(remove_duplicate=False))
    params = family.params_from_hf(hf_params, config)
    first = next(iter(hf_params.values()))
    model = Transformer(config).to(device=first.device, dtype=first.dtype)
    _load_exactly(model, params, "progrow")
    return model.eval()


def hf_family(config: TransformerConfig) -> str:
    """The family a config exports to by default: ``llama`` (rope) or ``gpt2`` (learned)."""
    return "llama" if config.positions == "rope" else "gpt2"


def export_problems(config: TransformerConfig, family: str | None = None) -> list[str]:
    """Every reason the family cannot represent ``config``, each naming field and value.

    Empty when :func:`to_hf` would succeed. Cheap (no ``transformers`` import), so an
    app can check a growth schedule's final sizes before training.
    """
    return _family(config, family).problems(config)


def check_exportable(config: TransformerConfig, family: str | None = None) -> str:
    """Raise ``ValueError`` listing :func:`export_problems`; return the family name."""
    chosen = _family(config, family)
    problems = chosen.problems(config)
    if problems:
        raise ValueError(
            f"to_hf: this model cannot be written as {chosen.hf_class}: " + "; ".join(problems)
        )
    return chosen.name


def to_hf(model: Transformer, family: str | None = None, base_config: Any | None = None) -> Any:
    """The Hugging Face model of ``model``'s family with the same logits.

    Args:
        model: A progrow Transformer, e.g. one from :func:`from_hf`, grown or not.
        family: ``"llama"`` or ``"gpt2"``; default :func:`hf_family` of the config.
        base_config: An HF config (typically the imported model's ``.config``) whose
            fields other than the architecture (token ids, ``name_or_path``, ...) are kept.
            Without it the token ids (bos, eos, pad) are left unset.

    Returns:
        A ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` in eval mode, on the model's device
        and in its dtype, sharing no memory with it.

    Raises:
        ValueError: The family cannot represent the model's layout (every reason, each
            naming the field and its value), or ``base_config`` is of another family;
            before anything is built.
    """
    name = check_exportable(model.config, family)
    chosen = FAMILIES[name]
    base = base_config.to_dict() if base_config is not None else {}
    if base.get("model_type", name) != name:  # the families' names are HF's model types
        raise ValueError(
            f"to_hf: base_config.model_type={base['model_type']!r} does not match the "
            f"family {name!r}"
        )
    transformers = _require_transformers()
    first = next(iter(model.parameters()))
    hf_config = chosen.hf_config(model.config, base, transformers)
    hf_config.dtype = first.dtype
    with _no_init(transformers):
        hf_model = getattr(transformers, chosen.hf_class)(hf_config)
    hf_model.to(device=first.device, dtype=first.dtype)
    # Parameters only (tied ones under both names): the state dict also holds the config.
    state = {k: v.detach() for k, v in model.named_parameters(remove_duplicate=False)}
    _load_exactly(hf_model, chosen.params_to_hf(state, model.config), "Hugging Face")
    return hf_model.eval()


def save_hf(
    model: Transformer,
    folder: str | os.PathLike[str],
    family: str | None = None,
    base_config: Any | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face model folder (``save_pretrained``).

    The folder then loads with ``AutoModelForCausalLM.from_pretrained(folder)``. A model
    its family cannot represent, or a folder that exists and is not empty, is refused
    before anything is written.

    Args:
        model: The progrow model.
        folder: Where to write (created).
        family: As for :func:`to_hf`.
        base_config: As for :func:`to_hf`.

    Returns:
        The folder.
    """
    check_exportable(model.config, family)
    path = Path(folder)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"save_hf: folder={str(path)!r} exists and is not empty")
    to_hf(model, family, base_config).save_pretrained(path)
    return path


def _family(config: TransformerConfig, family: str | None) -> Family:
    name = hf_family(config) if family is None else family
    if name not in FAMILIES:
        raise ValueError(f"family={family!r}: must be one of {sorted(FAMILIES)}")
    return FAMILIES[name]


@contextlib.contextmanager
def _no_init(transformers: Any) -> Iterator[None]:
    """Skip the random init of a model whose every weight is loaded right after."""
    init = getattr(getattr(transformers, "initialization", None), "no_init_weights", None)
    with init() if init is not None else contextlib.nullcontext():
        yield


def _load_exactly(module: torch.nn.Module, params: dict[str, Tensor], side: str) -> None:
    """Copy ``params`` into ``module``'s parameters; every parameter must be covered."""
    own = dict(module.named_parameters(remove_duplicate=False))
    missing = sorted(set(own) - set(params))
    unknown = sorted(set(params) - set(own))
    if missing or unknown:  # a mapping bug, not a user error
        raise RuntimeError(f"{side} parameters not mapped: {missing}; unknown: {unknown}")
    with torch.no_grad():
        for name, param in own.items():
            value = params[name]
            if value.shape != param.shape:
                raise RuntimeError(
                    f"{side} parameter {name}: shape {tuple(value.shape)} mapped onto "
                    f"{tuple(param.shape)}"
                )
            param.copy_(value)


__all__ = [
    "FAMILIES",
    "check_exportable",
    "export_problems",
    "from_hf",
    "hf_family",
    "save_hf",
    "to_hf",
]
