"""Optimizer layout across a growth: which param group, and which position in it, every
parameter of a grown module takes.

Growth replaces parameter objects, so the optimizer is matched to the module by name: a
grown or renamed parameter keeps its old slot, a wholly new one joins the group of its
siblings (the same parameter of the other layers), and each group is ordered as
``configure_optimizers`` would build it on the grown module (:mod:`progrow.surgery` moves
the state that goes with them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from progrow.model import Transformer
from progrow.record import ExpansionRecord

#: ``group_for_new(name, param)``: the group index of a wholly new parameter, or ``None``.
GroupForNew = Callable[[str, nn.Parameter], "int | None"]
#: ``param_order(module)``: per group, its parameters' names in order.
ParamOrder = Callable[[nn.Module], list[list[str]]]


def param_names(module: nn.Module) -> dict[int, str]:
    """``{id(param): name}`` for ``module``; record it BEFORE growing.

    Example:
        >>> from progrow import Transformer, TransformerConfig
        >>> names = param_names(Transformer(TransformerConfig(d_model=8, n_layers=1)))
        >>> sorted(names.values())[:2]
        ['blocks.0.attn.k.weight', 'blocks.0.attn.o.weight']
    """
    return {id(p): name for name, p in module.named_parameters()}


def prefix_of(module: nn.Module, model: Transformer) -> str:
    """Name prefix of ``model``'s parameters inside ``module`` (e.g. ``"model."``).

    Example:
        >>> from progrow import TransformerConfig
        >>> outer = nn.Module(); outer.net = Transformer(TransformerConfig(n_layers=1))
        >>> prefix_of(outer, outer.net)
        'net.'
    """
    target = model.tok_emb.weight
    for name, param in module.named_parameters():
        if param is target:
            return name[: -len("tok_emb.weight")]
    raise ValueError(f"the Transformer's parameters are not registered in {type(module).__name__}")


def layout_options(groups: Sequence[Sequence[str]]) -> dict[str, Any]:
    """``group_for_new`` and ``param_order`` that give an optimizer exactly ``groups``.

    ``groups`` lists, per param group, the parameter names of an optimizer built over the
    grown module (e.g. by ``configure_optimizers``): after :func:`update_optimizer` with
    these options the live optimizer has the same groups in the same order, so its
    ``state_dict()`` loads onto that fresh optimizer param by param. A new parameter the
    layout leaves out stays out of the optimizer.

    Example:
        >>> options = layout_options([["b", "a"], ["c"]])
        >>> options["group_for_new"]("c", None), options["param_order"](None)
        (1, [['b', 'a'], ['c']])
    """
    where = {name: g for g, names in enumerate(groups) for name in names}
    order = [list(names) for names in groups]
    return {
        "group_for_new": lambda name, param: where.get(name),
        "param_order": lambda module: [list(names) for names in order],
    }


def layer_pattern(name: str) -> str:
    """``blocks.3.mlp.fc.bias`` -> ``blocks.#.mlp.fc.bias``: the same parameter of any layer."""
    return ".".join("#" if part.isdigit() else part for part in name.split("."))


def sibling_group(name: str, names_per_group: list[list[str]]) -> int | None:
    key = layer_pattern(name)
    groups = {
        g for g, names in enumerate(names_per_group) for n in names if layer_pattern(n) == key
    }
    if not groups:
        return None  # no sibling in this optimizer: neither is the new parameter
    if len(groups) > 1:
        raise ValueError(
            f"new parameter {name!r}: its siblings ({key}) are in param groups "
            f"{sorted(groups)}; pass group_for_new to choose one"
        )
    return groups.pop()


def existing_names(
    optimizer: torch.optim.Optimizer,
    record: ExpansionRecord,
    old_names: dict[int, str],
    params: dict[str, nn.Parameter],
    known: frozenset[str],
) -> tuple[dict[str, Tensor], list[list[str]]]:
    """Per group, the grown names of its parameters; and each one's old object."""
    renamed = {c.old_name: c.name for c in record.changes.values()}
    old_by_new: dict[str, Tensor] = {}
    names_per_group: list[list[str]] = []
    for g, group in enumerate(optimizer.param_groups):
        names: list[str] = []
        for p in group["params"]:
            if id(p) not in old_names:
                raise ValueError(
                    f"param group {g} holds a parameter of shape {tuple(p.shape)} missing from "
                    "old_names: take param_names(module) before growing, on the same module"
                )
            old = old_names[id(p)]
            new = renamed.get(old, old)
            if new not in params:
                raise ValueError(f"parameter {old!r} (now {new!r}) is not in the grown module")
            unknown = sorted(set(optimizer.state.get(p, {})) - known)
            if unknown:
                raise ValueError(
                    f"{type(optimizer).__name__} state of {old!r} has unknown key(s) {unknown}: "
                    "cannot tell how growth should transform them"
                )
            if "param_names" in group and group["param_names"][len(names)] != old:
                raise ValueError(
                    f"param group {g} names {group['param_names'][len(names)]!r} "
                    f"but old_names says {old!r}"
                )
            names.append(new)
            old_by_new[new] = p
        names_per_group.append(names)
    return old_by_new, names_per_group


def add_new_params(
    names_per_group: list[list[str]],
    new: Sequence[str],
    params: dict[str, nn.Parameter],
    group_for_new: GroupForNew | None,
) -> None:
    for name in new:
        if name not in params:
            raise ValueError(f"new parameter {name!r} of the record is not in the module")
        g = (
            group_for_new(name, params[name])
            if group_for_new is not None
            else sibling_group(name, names_per_group)
        )
        if g is None:
            continue  # not this optimizer's parameter
        if isinstance(g, bool) or not (isinstance(g, int) and 0 <= g < len(names_per_group)):
            raise ValueError(f"group_for_new({name!r}) gave {g!r}, not a param group index")
        names_per_group[g].append(name)
    flat = [n for names in names_per_group for n in names]
    if len(set(flat)) != len(flat):
        raise ValueError("the record maps two optimizer parameters to the same name")


def ordered(
    names_per_group: list[list[str]],
    module: nn.Module,
    params: dict[str, nn.Parameter],
    param_order: ParamOrder | None,
) -> list[list[str]]:
    if param_order is None:
        rank = {name: i for i, name in enumerate(params)}
        return [sorted(names, key=rank.__getitem__) for names in names_per_group]
    order = [list(names) for names in param_order(module)]
    if len(order) != len(names_per_group) or any(
        sorted(o) != sorted(n) for o, n in zip(order, names_per_group, strict=False)
    ):
        raise ValueError(
            f"param_order must list each group's parameters exactly: got {order}, "
            f"expected permutations of {names_per_group}"
        )
    return order
