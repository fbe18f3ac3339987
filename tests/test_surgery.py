"""Optimizer-state surgery across every expansion and every supported optimizer."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest
import torch
import torch.nn.functional as F
from expansion_table import ALL_CASES, BLOCK_VARIANTS, COMPOSITIONS, ExpansionCase
from torch.testing import assert_close

from progrow import (
    ExpansionRecord,
    Transformer,
    TransformerConfig,
    add_heads,
    add_layers,
    expand_hidden,
    expand_mlp,
    expand_qk,
    expand_value,
    grow,
)
from progrow.moments import StateTransport
from progrow.optimizer_layout import layout_options, param_names
from progrow.surgery import optimizer_state_by_name, update_optimizer

# Odd sizes, so that a transposed or misplaced index cannot pass by accident.
CFG = TransformerConfig(
    vocab_size=11, max_seq_len=6, d_model=7, d_mlp=5, n_heads=3, d_qk=3, d_v=2, n_layers=2,
    norm_eps=1e-2,
)  # fmt: skip

Grow = Callable[[Transformer, torch.Generator], ExpansionRecord]


def _all(m: Transformer, g: torch.Generator, init: Literal["zero", "split"]) -> ExpansionRecord:
    """Six expansions in one grow, with zero blocks or split copies."""
    return grow(
        m, d_mlp=9, n_heads=4, d_v=5, d_qk=5, d_model=13, n_layers=4,
        layer_positions="interleave", init=init, generator=g,
    )  # fmt: skip


EXPANSIONS: dict[str, Grow] = {
    "d_mlp": lambda m, g: expand_mlp(m, 9, generator=g),
    "n_heads": lambda m, g: add_heads(m, 4, generator=g),
    "d_v": lambda m, g: expand_value(m, 5, generator=g),
    "d_qk": lambda m, g: expand_qk(m, 5, generator=g),
    "d_qk-queries": lambda m, g: expand_qk(m, 5, factor_at="queries", generator=g),
    "d_qk-shared": lambda m, g: expand_qk(m, 5, factor_at="shared", generator=g),
    "d_model": lambda m, g: expand_hidden(m, 13, generator=g),
    "d_model-gains": lambda m, g: expand_hidden(m, 13, factor_at="gains", generator=g),
    "n_layers": lambda m, g: add_layers(m, 4, positions="interleave", generator=g),
    "all": lambda m, g: _all(m, g, "zero"),
    "d_mlp-split": lambda m, g: expand_mlp(m, 9, init="split", generator=g),
    "d_model-split": lambda m, g: expand_hidden(m, 13, init="split", generator=g),
    "all-split": lambda m, g: _all(m, g, "split"),
}

Groups = list[dict[str, Any]]
OPTIMIZERS: dict[str, Callable[[Groups], torch.optim.Optimizer]] = {
    "adam": lambda g: torch.optim.Adam(g, lr=1e-2),
    "adamw_foreach": lambda g: torch.optim.AdamW(g, lr=1e-2, foreach=True),
    "adamw_amsgrad": lambda g: torch.optim.AdamW(g, lr=1e-2, foreach=False, amsgrad=True),
    "adamw_fused": lambda g: torch.optim.AdamW(g, lr=1e-2, fused=True),
    "sgd_momentum": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9),
    "sgd": lambda g: torch.optim.SGD(g, lr=0.1),
}
SQUARES = ("exp_avg_sq", "max_exp_avg_sq")


def group_names(model: torch.nn.Module) -> list[list[str]]:
    """What a ``configure_optimizers`` would list: decay = 2-D weights, then the rest."""
    named = list(model.named_parameters())
    return [[n for n, p in named if p.dim() >= 2], [n for n, p in named if p.dim() < 2]]


def configure(model: torch.nn.Module, opt_name: str) -> torch.optim.Optimizer:
    params = dict(model.named_parameters())
    decay, no_decay = group_names(model)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": 0.1},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]
    return OPTIMIZERS[opt_name](groups)


TOKENS = torch.randint(
    0, CFG.vocab_size, (3, CFG.max_seq_len), generator=torch.Generator().manual_seed(0)
)


def train_step(model: Transformer, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    logits = model(TOKENS[:, :-1])
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), TOKENS[:, 1:].reshape(-1)).backward()
    opt.step()


def trained(
    opt_name: str, steps: int = 2, config: TransformerConfig = CFG
) -> tuple[Transformer, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Transformer(config)
    opt = configure(model, opt_name)
    for _ in range(steps):
        train_step(model, opt)
    return model, opt


def hyperparameters(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def group_param_names(opt: torch.optim.Optimizer, model: torch.nn.Module) -> list[list[str]]:
    names = param_names(model)
    return [[names[id(p)] for p in g["params"]] for g in opt.param_groups]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # These models are tiny: on a shared 2-core machine, intra-op threads only contend.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def _fused_cpu_available() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    try:
        p.grad = torch.ones(2)
        torch.optim.AdamW([p], fused=True).step()
    except (RuntimeError, ValueError):  # pragma: no cover - depends on the torch build
        OPTIMIZERS.pop("adamw_fused", None)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("expansion", list(EXPANSIONS))
def test_surgery_carries_state_and_resumes_exactly(expansion: str, opt_name: str) -> None:
    if opt_name not in OPTIMIZERS:
        pytest.skip("fused AdamW is not available on this CPU build")
    model, opt = trained(opt_name)
    record = check_surgery(model, opt, opt_name, EXPANSIONS[expansion])
    if expansion in ("d_qk", "d_qk-queries", "d_qk-shared", "d_model", "d_model-gains", "all"):
        assert any(c.factor != 1.0 for c in record.changes.values())
    if expansion.endswith("split"):
        assert any(c.twins is not None for c in record.changes.values())


# The new blocks (gate, biases, GQA's KV heads, RoPE's key layout) and the n_kv_heads
# expansion need no special case in the surgery: the record says it all.
SURGERY_VARIANTS = {k: BLOCK_VARIANTS[k] for k in ("llama", "gated-biases-rope-gqa")}


@pytest.mark.parametrize("variant", SURGERY_VARIANTS.values(), ids=SURGERY_VARIANTS.keys())
@pytest.mark.parametrize("case", [*ALL_CASES, "all"], ids=str)
def test_surgery_on_modern_blocks(case: ExpansionCase | str, variant: dict[str, Any]) -> None:
    config = CFG.replace(**variant)
    model, opt = trained("adamw_amsgrad", config=config)
    expand: Grow = COMPOSITIONS["grow-all-interleave"] if isinstance(case, str) else case.apply
    record = check_surgery(model, opt, "adamw_amsgrad", expand)
    assert record.new_config != config


def check_surgery(
    model: Transformer, opt: torch.optim.Optimizer, opt_name: str, expand: Grow
) -> ExpansionRecord:
    """Grow ``model`` with ``expand``, move ``opt``'s state, and check every rule: the
    hyperparameters and groups, old moments at their new places (rescaled by the record's
    factor), zeros elsewhere, the step kept, and an exact resume from the saved states."""
    hyper = hyperparameters(opt)
    before = copy.deepcopy(optimizer_state_by_name(opt, model))
    names = param_names(model)
    record = expand(model, torch.Generator().manual_seed(1))

    update_optimizer(opt, record, names, model)

    assert hyperparameters(opt) == hyper
    # Every param once, new ones with their siblings, in a fresh configure_optimizers order.
    assert group_param_names(opt, model) == group_names(model)
    after = optimizer_state_by_name(opt, model)
    if opt_name == "sgd":
        assert before == {} and after == {}
    keys = {k for state in before.values() for k in state}
    steps = {float(s["step"]) for s in before.values() if "step" in s}
    assert len(steps) <= 1
    for name, param in model.named_parameters():
        if opt_name == "sgd":
            continue
        state = after[name]
        assert set(state) == keys, name
        if "step" in state:
            assert float(state["step"]) in steps and state["step"].dim() == 0
        change = record.changes.get(name)
        for key, value in state.items():
            if key == "step":
                continue
            assert value.shape == param.shape and value.dtype == param.dtype, (name, key)
            if name in record.new:
                assert not value.any(), (name, key)
            elif change is None:
                assert torch.equal(value, before[name][key]), (name, key)
            else:
                scale = 1.0 / change.factor**2 if key in SQUARES else 1.0 / change.factor
                assert torch.equal(change.take(value), before[change.old_name][key] * scale)
                is_new = torch.ones_like(value, dtype=torch.bool)
                is_new[change.positions()] = False
                if change.twins is not None:  # twins: their source's moments, own factor
                    twins = change.twins
                    src = before[change.old_name][key][
                        torch.meshgrid(*[s.clamp(min=0) for s in twins.source], indexing="ij")
                    ]
                    factor = twins.factor.expand(change.new_shape)
                    expected = src / factor**2 if key in SQUARES else src / factor
                    is_twin = is_new & twins.derived()
                    expected = expected.to(value.dtype)
                    assert_close(value[is_twin], expected[is_twin], rtol=1e-6, atol=0)
                    is_new &= ~is_twin
                assert not value[is_new].any(), (name, key)

    # Exact resume: a fresh grown model and optimizer loading the saved states.
    fresh = Transformer(model.config)
    fresh.load_state_dict(copy.deepcopy(model.state_dict()))
    fresh_opt = configure(fresh, opt_name)
    fresh_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(2):
        train_step(model, opt)
        train_step(fresh, fresh_opt)
    for (name, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q), name
    return record


@pytest.mark.parametrize("opt_name", ["adamw_foreach", "adamw_amsgrad"])
@pytest.mark.parametrize("expansion", ["d_qk", "all"])
def test_bias_corrected_fills_new_second_moments_with_typical_value(
    expansion: str, opt_name: str
) -> None:
    model, opt = trained(opt_name)
    before = copy.deepcopy(optimizer_state_by_name(opt, model))
    names = param_names(model)
    record = EXPANSIONS[expansion](model, torch.Generator().manual_seed(1))
    update_optimizer(opt, record, names, model, new_moments="bias_corrected")
    after = optimizer_state_by_name(opt, model)
    for name, change in record.changes.items():
        is_new = torch.ones(change.new_shape, dtype=torch.bool)
        is_new[change.positions()] = False
        for key in SQUARES if opt_name == "adamw_amsgrad" else SQUARES[:1]:
            old = before[change.old_name][key] * (1.0 / change.factor**2)
            assert torch.equal(change.take(after[name][key]), old)
            assert torch.all(after[name][key][is_new] == old.mean()), (name, key)
        assert not after[name]["exp_avg"][is_new].any()
    for name in record.new:  # mean over the same parameter of the old layers, grown
        leaf = name.split(".", 2)[2]
        siblings = [s for n, s in after.items() if n.endswith(leaf) and n not in record.new]
        typical = torch.stack([s["exp_avg_sq"].mean() for s in siblings]).mean()
        torch.testing.assert_close(
            after[name]["exp_avg_sq"], typical.expand(after[name]["exp_avg_sq"].shape),
            rtol=1e-5, atol=0.0,
        )  # fmt: skip
        assert not after[name]["exp_avg"].any()
    train_step(model, opt)


def test_scheduler_stays_attached_and_lr_is_unchanged() -> None:
    def lrs(grow_at: int | None) -> list[list[float]]:
        model, opt = trained("adamw_foreach", steps=0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
        out = []
        for step in range(6):
            if step == grow_at:
                names = param_names(model)
                update_optimizer(opt, EXPANSIONS["all"](model, torch.Generator()), names, model)
                assert sched.optimizer is opt
            train_step(model, opt)
            sched.step()
            out.append([g[k] for g in opt.param_groups for k in ("lr", "initial_lr")])
        return out

    assert lrs(grow_at=3) == lrs(grow_at=None)


def test_before_any_step_new_params_get_no_state() -> None:
    model, opt = trained("adamw_foreach", steps=0)
    names = param_names(model)
    update_optimizer(opt, EXPANSIONS["all"](model, torch.Generator()), names, model)
    assert len(opt.state) == 0 and group_param_names(opt, model) == group_names(model)
    train_step(model, opt)


def _assert_untouched(opt: torch.optim.Optimizer, groups: list[list[int]], state: dict) -> None:
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == groups
    assert {id(p): set(s) for p, s in opt.state.items()} == state


@pytest.mark.parametrize("make", [torch.optim.RMSprop, torch.optim.Adagrad])
def test_unsupported_optimizer_raises_naming_it(make: Callable[..., torch.optim.Optimizer]) -> None:
    torch.manual_seed(0)
    model = Transformer(CFG)
    opt = make(model.parameters(), lr=1e-2)
    train_step(model, opt)
    groups = [[id(p) for p in g["params"]] for g in opt.param_groups]
    state = {id(p): set(s) for p, s in opt.state.items()}
    names = param_names(model)
    record = expand_mlp(model, 9)
    with pytest.raises(TypeError, match=make.__name__):
        update_optimizer(opt, record, names, model)
    _assert_untouched(opt, groups, state)


def test_unknown_state_key_or_missing_name_raises_and_changes_nothing() -> None:
    model, opt = trained("adamw_foreach", steps=1)
    head = model.lm_head.weight  # replaced in the model by the growth below
    opt.state[head]["my_ema"] = torch.zeros(())
    groups = [[id(p) for p in g["params"]] for g in opt.param_groups]
    state = {id(p): set(s) for p, s in opt.state.items()}
    names = param_names(model)
    record = EXPANSIONS["all"](model, torch.Generator())
    with pytest.raises(ValueError, match="my_ema"):
        update_optimizer(opt, record, names, model)
    _assert_untouched(opt, groups, state)
    del opt.state[head]["my_ema"]
    del names[id(head)]
    state = {id(p): set(s) for p, s in opt.state.items()}
    with pytest.raises(ValueError, match="old_names"):
        update_optimizer(opt, record, names, model)
    _assert_untouched(opt, groups, state)


def test_group_for_new_overrides_the_sibling_rule() -> None:
    model, opt = trained("adamw_foreach", steps=1)
    names = param_names(model)
    record = add_layers(model, 3, positions=[0])  # old blocks 0, 1 become 1, 2
    update_optimizer(opt, record, names, model, group_for_new=lambda name, p: 0)
    new_in_group_1 = [n for n in group_names(model)[1] if n.startswith("blocks.0.")]
    assert new_in_group_1 and all(n in record.new for n in new_in_group_1)
    rank = {n: i for i, n in enumerate(dict(model.named_parameters()))}
    expected_0 = sorted(group_names(model)[0] + new_in_group_1, key=rank.__getitem__)
    expected_1 = [n for n in group_names(model)[1] if n not in new_in_group_1]
    assert group_param_names(opt, model) == [expected_0, expected_1]
    train_step(model, opt)


def test_param_order_overrides_module_order_and_is_checked() -> None:
    model, opt = trained("adamw_foreach", steps=1)
    groups = [[id(p) for p in g["params"]] for g in opt.param_groups]
    state = {id(p): set(s) for p, s in opt.state.items()}
    names = param_names(model)
    record = EXPANSIONS["all"](model, torch.Generator())
    with pytest.raises(ValueError, match="param_order"):
        update_optimizer(opt, record, names, model, param_order=lambda m: group_names(m)[::-1])
    _assert_untouched(opt, groups, state)
    reverse = [g[::-1] for g in group_names(model)]
    update_optimizer(opt, record, names, model, param_order=lambda m: reverse)
    assert group_param_names(opt, model) == reverse
    train_step(model, opt)


def test_new_layer_with_siblings_in_several_groups_needs_group_for_new() -> None:
    torch.manual_seed(0)
    model = Transformer(CFG)
    per_block = [{"params": list(b.parameters())} for b in model.blocks]
    rest = [p for n, p in model.named_parameters() if not n.startswith("blocks.")]
    opt = torch.optim.AdamW([*per_block, {"params": rest}])
    names = param_names(model)
    record = add_layers(model, 3)
    with pytest.raises(ValueError, match="group_for_new"):
        update_optimizer(opt, record, names, model)
    update_optimizer(opt, record, names, model, group_for_new=lambda name, p: 1)
    per_layer = len(list(model.blocks[0].parameters()))
    assert [len(g["params"]) for g in opt.param_groups[:2]] == [per_layer, 2 * per_layer]


def test_named_param_groups_are_renamed() -> None:
    torch.manual_seed(0)
    model = Transformer(CFG)
    opt = torch.optim.AdamW(model.named_parameters(), lr=1e-2)
    train_step(model, opt)
    names = param_names(model)
    update_optimizer(opt, EXPANSIONS["all"](model, torch.Generator()), names, model)
    assert opt.param_groups[0]["param_names"] == [n for n, _ in model.named_parameters()]
    fresh = Transformer(model.config)
    fresh.load_state_dict(model.state_dict())
    fresh_opt = torch.optim.AdamW(fresh.named_parameters(), lr=1e-2)
    fresh_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    train_step(model, opt)
    train_step(fresh, fresh_opt)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)


def test_new_parameter_state_takes_dtype_and_device_from_the_parameter() -> None:
    # The group's first state belongs to a float64 parameter outside the Transformer: the
    # new layer's state must still be float32 like the new parameters themselves.
    torch.manual_seed(0)
    outer = torch.nn.Module()
    outer.scale = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    outer.net = Transformer(CFG)
    opt = torch.optim.AdamW([outer.scale, *outer.net.parameters()], lr=1e-2)
    loss = outer.net(torch.randint(0, CFG.vocab_size, (2, 5))).float().pow(2).mean()
    (loss + outer.scale.pow(2).sum()).backward()
    opt.step()
    names = param_names(outer)
    record = add_layers(outer.net, CFG.n_layers + 1).prefixed("net.")
    update_optimizer(opt, record, names, outer)
    for name in record.new:
        param = outer.get_parameter(name)
        for key, value in opt.state[param].items():
            if key != "step":
                assert value.dtype == param.dtype == torch.float32, (name, key, value.dtype)
                assert value.device == param.device


def test_layout_options_give_a_fresh_optimizers_groups_and_leave_others_out() -> None:
    # Two optimizers: one over the blocks (sorted by name), one over the rest. After a new
    # layer, each holds what it would hold built over the grown model, in its order.
    torch.manual_seed(0)
    model = Transformer(CFG)

    def build(m: Transformer) -> list[torch.optim.Optimizer]:
        named = sorted(m.named_parameters())
        blocks = [p for n, p in named if n.startswith("blocks.")]
        rest = [p for n, p in reversed(named) if not n.startswith("blocks.")]
        return [torch.optim.AdamW(blocks, lr=1e-2), torch.optim.AdamW(rest, lr=1e-2)]

    opts = build(model)
    model(TOKENS[:, :-1]).float().pow(2).mean().backward()
    for opt in opts:
        opt.step()
    names = param_names(model)
    record = add_layers(model, CFG.n_layers + 1, positions=[0])
    layout = [group_param_names(opt, model) for opt in build(model)]
    for opt, groups in zip(opts, layout, strict=True):
        update_optimizer(opt, record, names, model, **layout_options(groups))
    assert [group_param_names(opt, model) for opt in opts] == layout
    # Default options: the optimizer holding no sibling of the new layer leaves it out.
    names = param_names(model)
    record = add_layers(model, CFG.n_layers + 2)
    update_optimizer(opts[1], record, names, model)
    assert not set(group_param_names(opts[1], model)[0]) & set(record.new)


def test_transport_reads_and_writes_each_state_once_and_changes_no_value() -> None:
    """A transport (as under FSDP2: gather on read, shard on write) sees every old state
    once and every carried state once; a value-preserving one gives the plain result."""
    plain_model, plain_opt = trained("adamw_foreach")
    model, opt = trained("adamw_foreach")
    names, plain_names = param_names(model), param_names(plain_model)
    with_state = len(opt.state)
    update_optimizer(
        plain_opt, EXPANSIONS["all"](plain_model, torch.Generator().manual_seed(0)),
        plain_names, plain_model,
    )  # fmt: skip
    reads: list[torch.Tensor] = []
    writes: list[torch.Tensor] = []

    def read(param: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
        reads.append(param)
        return {k: v.clone() for k, v in state.items()}

    def write(param: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
        writes.append(param)
        return {k: v.clone() for k, v in state.items()}

    record = EXPANSIONS["all"](model, torch.Generator().manual_seed(0))
    update_optimizer(opt, record, names, model, transport=StateTransport(read, write))
    assert len(reads) == with_state and len({id(p) for p in reads}) == with_state
    assert len(writes) == len(opt.state) == len({id(p) for p in writes}) > with_state
    expected = optimizer_state_by_name(plain_opt, plain_model)
    got = optimizer_state_by_name(opt, model)
    assert expected.keys() == got.keys()
    for name, state in expected.items():
        for key, value in state.items():
            assert torch.equal(value, got[name][key]), (name, key)
