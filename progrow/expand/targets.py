"""What an expansion does to the config, decided and validated without touching a model.

One validator for every place that needs it: the expansions themselves, ``grow`` (which
checks a whole set of targets before the first change), growth schedules (checked
against the starting model before step 0) and compute budgets (which need the config
each stage will produce).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from progrow.config import GROWABLE_DIMS, TransformerConfig, check_positive_int
from progrow.model import rope_inv_freq

#: How an expansion fills its new entries: "zero" (new blocks zero on one side, fresh on
#: the other), "split" (copies of old entries, their outgoing weights split) or, for new
#: layers only, "stack" (copies of old blocks with their outputs kept: NOT preserving).
Init = Literal["zero", "split", "stack"]
INITS: tuple[str, ...] = get_args(Init)


def check_init(value: object, field: str = "init") -> Init:
    """``value`` if it is a known way of filling new entries ("zero", "split", "stack").

    Raises:
        ValueError: naming ``field`` and the value, for anything else.

    Example:
        >>> check_init("split")
        'split'
    """
    if not isinstance(value, str) or value not in INITS:
        raise ValueError(f"{field}={value!r}: use one of {list(INITS)}")
    return value  # type: ignore[return-value]  # checked against Init's values


def spread_sources(n_old: int, n_new: int) -> Tensor:
    """Which old unit each of ``n_new`` units holds when ``n_old`` grow by copies.

    The old units keep their places (``0 .. n_old-1``); the added ones copy old units
    spread evenly over them (every old unit once before any twice), so that growing RoPE
    pairs copies frequencies from the whole table, not only its start.

    Example:
        >>> spread_sources(4, 7).tolist()
        [0, 1, 2, 3, 0, 1, 2]
        >>> spread_sources(4, 6).tolist()
        [0, 1, 2, 3, 0, 2]
    """
    added = torch.arange(n_new - n_old)
    copies = added % n_old if n_new - n_old > n_old else added * n_old // (n_new - n_old)
    return torch.cat([torch.arange(n_old), copies])


def expanded_config(
    config: TransformerConfig, dim: str, value: Any, init: Init = "zero"
) -> TransformerConfig:
    """The config after growing ``dim`` to ``value`` (``config`` itself for an equal size).

    Raises ``ValueError`` naming the dimension and the value for a non-integer, a size
    below the current one, a hidden expansion of a LayerNorm model, a query-head count
    that the KV heads cannot group, or an odd key/query size under RoPE; naming ``init``
    for an unknown way of filling new entries or ``init="stack"`` on another dimension
    than ``n_layers``. ``init`` decides the RoPE frequency table
    of a key/query growth (see :func:`rope_layout` and :func:`rope_split_layout`).
    """
    check_init(init)
    if dim not in GROWABLE_DIMS:
        raise ValueError(f"unknown dimension {dim!r}; the growable ones are {list(GROWABLE_DIMS)}")
    check_positive_int(dim, value)
    current = config.sizes()[dim]
    if value < current:
        raise ValueError(
            f"{dim}={value} is below the model's {dim}={current}: expansions only grow a model"
        )
    if value == current:
        return config
    if init == "stack" and dim != "n_layers":
        raise ValueError(
            f"{dim}={value} with init='stack': stacking copies whole blocks and grows only "
            "n_layers; grow the other dimensions with init='zero' or 'split'"
        )
    if dim == "d_model":
        return _hidden_config(config, value)
    if dim == "n_kv_heads":
        # New KV heads come with a group of new query heads each (the group size is kept).
        if config.n_kv_heads is None:
            return config.replace(n_heads=value)
        return config.replace(n_kv_heads=value, n_heads=value * config.kv_group)
    if dim == "n_heads" and config.n_kv_heads is not None and value % config.n_kv_heads:
        raise ValueError(
            f"n_heads={value} must be a multiple of n_kv_heads={config.n_kv_heads}: new query "
            "heads join the existing KV groups (grow n_kv_heads to add groups)"
        )
    if dim == "d_qk" and config.positions == "rope":
        if value % 2:
            raise ValueError(f"d_qk={value} must be even with positions='rope'")
        layout = rope_layout if init == "zero" else rope_split_layout
        return config.replace(d_qk=value, rope_inv_freq=layout(config, value)[1])
    return config.replace(**{dim: value})


def _hidden_config(config: TransformerConfig, d_model: int) -> TransformerConfig:
    if config.norm != "rmsnorm":
        raise ValueError(
            f"d_model={d_model}: hidden expansion needs norm='rmsnorm', this model has "
            f"norm={config.norm!r}; LayerNorm subtracts the mean over all d_model coordinates, "
            "and zero-padding changes that mean, so the function would not be preserved"
        )
    # RMS over d_model coordinates of [x, 0] is sqrt(h / d_model) times the RMS over h;
    # eps scales with the mean of squares, so it is rescaled by h / d_model (exactness).
    return config.replace(d_model=d_model, norm_eps=config.norm_eps * config.d_model / d_model)


def pins_kv_heads(config: TransformerConfig, sizes: Mapping[str, int]) -> bool:
    """Whether ``grow(**sizes)`` must first make ``n_kv_heads`` explicit.

    ``n_kv_heads=None`` means one KV head per query head, and then adding query heads adds
    KV heads too. Asking for both ``n_kv_heads`` and more ``n_heads`` than that in one call
    means grouped-query attention: the KV count is fixed before the query heads are added.
    """
    if config.n_kv_heads is not None or "n_kv_heads" not in sizes or "n_heads" not in sizes:
        return False
    heads, kv = sizes["n_heads"], sizes["n_kv_heads"]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (heads, kv)):
        return False  # expanded_config reports the bad value
    return heads > max(kv, config.n_heads)


def grown_config(
    config: TransformerConfig, sizes: Mapping[str, int], init: Init = "zero"
) -> TransformerConfig:
    """The config that ``grow(model, **sizes, init=init)`` produces from a model of ``config``.

    Validates every target on the way (``ValueError`` naming the dimension and value).
    """
    check_init(init)
    unknown = sorted(set(sizes) - set(GROWABLE_DIMS))
    if unknown:
        raise ValueError(
            f"unknown dimension(s) {unknown}; the growable dimensions are {list(GROWABLE_DIMS)}"
        )
    for dim in GROWABLE_DIMS:
        if dim == "n_heads" and pins_kv_heads(config, sizes):
            config = config.replace(n_kv_heads=config.n_heads)
        if dim in sizes:
            config = expanded_config(config, dim, sizes[dim], init)
    return config


def rope_layout(config: TransformerConfig, d_qk: int) -> tuple[Tensor, tuple[float, ...] | None]:
    """Where a head's old key/query entries go when ``d_qk`` grows under RoPE, and the
    frequency table of the grown config.

    Hugging Face's layout pairs entry ``i`` with ``i + d/2`` and gives pair ``i`` the
    frequency ``theta**(-2i/d)``. Rebuilding that default table for the new size would
    change every old pair's frequency (and with it the function), so each old pair moves
    to a new pair with the same frequency:

    * default table and ``d_qk = m * k`` (integer ``m``): old pair ``i`` goes to new pair
      ``m * i``, whose default frequency is the old one bit for bit; the config keeps
      ``rope_inv_freq=None`` and stays exportable to Hugging Face;
    * otherwise: old pairs keep their indices, new pairs ``j >= k/2`` get the new size's
      default frequency ``theta**(-2j/d_qk)``, and the whole table is stored in
      ``rope_inv_freq`` (a model Hugging Face's Llama cannot express).

    Returns the positions of the old ``k`` entries in a new head of ``d_qk`` (first half,
    then second half) and the new ``rope_inv_freq``.
    """
    k, half, new_half = config.d_qk, config.d_qk // 2, d_qk // 2
    if config.rope_inv_freq is None and d_qk % k == 0:
        pairs = torch.arange(half) * (d_qk // k)
        table = None
    else:
        pairs = torch.arange(half)
        old = rope_inv_freq(config).tolist()
        new = rope_inv_freq(config.replace(d_qk=d_qk, rope_inv_freq=None)).tolist()
        table = tuple(old + new[half:new_half])
    return torch.cat([pairs, pairs + new_half]), table


def rope_split_layout(config: TransformerConfig, d_qk: int) -> tuple[Tensor, tuple[float, ...]]:
    """Which old entry each entry of a head of ``d_qk`` copies when key/query pairs grow
    by copies under RoPE (``init="split"``), and the grown frequency table.

    A copied entry must rotate with its source, so whole pairs are copied: old pair ``i``
    keeps its index, new pair ``j`` copies old pair ``spread_sources(k/2, d_qk/2)[j]`` and
    its frequency, which the config stores (``rope_inv_freq``).

    Example:
        >>> from progrow import TransformerConfig
        >>> source, table = rope_split_layout(TransformerConfig(d_qk=4, positions="rope"), 6)
        >>> source.tolist(), len(table), table[2] == table[0]
        ([0, 1, 0, 2, 3, 2], 3, True)
    """
    half = config.d_qk // 2
    pairs = spread_sources(half, d_qk // 2)
    old = rope_inv_freq(config).tolist()
    return torch.cat([pairs, pairs + half]), tuple(old[p] for p in pairs.tolist())
