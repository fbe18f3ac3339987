"""The levers against the growth tax, each an option of the growth step: the learning
rate after growth (``rewarmup_from``, ``lr_fan_in_exponent``), the optimizer state
(``optimizer_state``), and deliberate departures from function preservation
(``shrink_perturb``, ``new_noise``). Each does what it says, is refused when bad, and is
exact on resume and in offline growth."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lit_utils import assert_bitwise_equal, datamodule, growth, lm_module, params, trainer

from progrow import GrowthCallback, GrowthSchedule, GrowthStep, Transformer, TransformerConfig
from progrow.expand.targets import Init
from progrow.model import fresh_init
from progrow.offline import grow_checkpoint_file
from progrow.optim import lr_multiplier
from progrow.optimizer_layout import param_names
from progrow.perturb import carried
from progrow.record import ExpansionRecord
from progrow.surgery import (
    OptimizerState,
    SurgeryOptions,
    grow_with_optimizers,
    optimizer_state_by_name,
)

CFG = TransformerConfig(
    vocab_size=11, max_seq_len=6, d_model=7, d_mlp=5, n_heads=3, d_qk=3, d_v=2, n_layers=2,
    norm_eps=1e-2,
)  # fmt: skip
# Every dimension, new layers between the old ones.
SIZES = dict(d_mlp=9, n_heads=4, d_v=5, d_qk=5, d_model=13, n_layers=4)
TOKENS = torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; the machine is shared
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def loss(model: Transformer) -> torch.Tensor:
    logits = model(TOKENS[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), TOKENS[:, 1:].reshape(-1))


def grown(
    init: Init = "zero", **options: Any
) -> tuple[Transformer, ExpansionRecord, torch.Generator]:
    """The seed-0 model grown to ``SIZES`` with ``options``; also the stage generator,
    in the state the growth left it."""
    torch.manual_seed(0)
    model = Transformer(CFG)
    generator = torch.Generator().manual_seed(7)
    step = GrowthStep(SIZES, layer_positions="interleave", init=init, **options)
    record = grow_with_optimizers(model, model, [], step, generator=generator)
    return model, record, generator


def new_entries(name: str, param: torch.Tensor, record: ExpansionRecord) -> torch.Tensor:
    """Bool mask of ``param``'s entries that the growth created."""
    if name in record.new:
        return torch.ones(param.shape, dtype=torch.bool)
    if name in record.changes:
        return ~carried(record.changes[name])
    return torch.zeros(param.shape, dtype=torch.bool)


# -- new_noise ----------------------------------------------------------------------


def test_new_noise_fills_the_zero_side_of_new_blocks_only() -> None:
    plain, record, _ = grown()
    noisy, _, _ = grown(new_noise=1e-3)
    noisy_params = dict(noisy.named_parameters())
    noise: list[torch.Tensor] = []
    filled = set()
    for name, p in plain.named_parameters():
        q = noisy_params[name].detach()
        zero_side = new_entries(name, p, record) & (p.detach() == 0) & (p.dim() >= 2)
        assert torch.equal(q[~zero_side], p.detach()[~zero_side]), name  # all else kept
        assert bool((q[zero_side] != 0).all()), name
        noise.append(q[zero_side])
        if bool(zero_side.any()):
            filled.add(name)
    # The zero sides: new embedding columns, W_O / W2 columns of new units and rows of new
    # hidden coordinates, the outputs of new layers (1 and 3, interleaved).
    for name in ("tok_emb.weight", "blocks.0.attn.o.weight", "blocks.0.mlp.proj.weight",
                 "blocks.1.attn.o.weight", "blocks.3.mlp.proj.weight"):  # fmt: skip
        assert name in filled, name
    drawn = torch.cat(noise)
    assert drawn.numel() > 500 and 0.9e-3 < float(drawn.std()) < 1.1e-3


def test_new_noise_moves_the_loss_by_order_sigma_and_lets_both_sides_learn() -> None:
    torch.manual_seed(0)
    before = float(loss(Transformer(CFG)).detach())
    deltas = {}
    for std in (0.0, 1e-4, 1e-3):
        model, _, _ = grown(new_noise=std)
        deltas[std] = abs(float(loss(model).detach()) - before)
    assert deltas[0.0] < 1e-6  # exact without it
    assert 0 < deltas[1e-4] < deltas[1e-3] < 1e-2
    assert deltas[1e-3] / deltas[1e-4] == pytest.approx(10, rel=0.2)  # linear in sigma
    # W1's new rows (new MLP units) get a gradient at the first step only with noise on
    # their W2 columns: zero blocks on one side keep the other side still.
    for std, moves in ((0.0, False), (1e-3, True)):
        model, _, _ = grown(new_noise=std)
        loss(model).backward()
        grad = dict(model.named_parameters())["blocks.0.mlp.fc.weight"].grad
        assert grad is not None
        assert bool(grad[CFG.d_mlp :].abs().sum() > 0) is moves


# -- shrink_perturb -----------------------------------------------------------------


@pytest.mark.parametrize("init", ["zero", "split"])
def test_shrink_perturb_is_exactly_shrink_theta_plus_noise_eps(init: Init) -> None:
    plain, record, generator = grown(init)  # the generator as the growth left it
    shrunk, _, _ = grown(init, shrink_perturb={"shrink": 0.6, "noise": 0.3})
    shrunk_params = dict(shrunk.named_parameters())
    changed = 0
    for name, p in plain.named_parameters():
        q = shrunk_params[name].detach()
        if p.dim() < 2 or name in record.new:  # gains, biases, new layers: as grown
            assert torch.equal(q, p.detach()), name
            continue
        eps = fresh_init(p.shape, name, plain.config, generator)  # the next draws, in order
        old = ~new_entries(name, p, record)
        expected = torch.where(old, 0.6 * p.detach() + 0.3 * eps, p.detach())
        assert torch.equal(q, expected), name
        changed += int(old.sum())
    assert changed > 500


def test_shrink_perturb_rescale_only_draws_nothing() -> None:
    plain, record, generator = grown()
    state = generator.get_state()
    shrunk, _, after = grown(shrink_perturb={"shrink": 0.5})
    assert torch.equal(after.get_state(), state)
    weight = dict(shrunk.named_parameters())["blocks.0.attn.q.weight"].detach()
    old = ~new_entries("blocks.0.attn.q.weight", weight, record)
    before = dict(plain.named_parameters())["blocks.0.attn.q.weight"].detach()
    assert torch.equal(weight[old], 0.5 * before[old])


# -- optimizer_state ----------------------------------------------------------------

OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]]], torch.optim.Optimizer]] = {
    "adamw": lambda g: torch.optim.AdamW(g, lr=1e-2),
    "adam_amsgrad": lambda g: torch.optim.Adam(g, lr=1e-2, amsgrad=True),
    "sgd_momentum": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, dampening=0.1),
}


def configure(model: torch.nn.Module, name: str) -> torch.optim.Optimizer:
    named = list(model.named_parameters())
    return OPTIMIZERS[name](
        [
            {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
        ]
    )


def step(model: Transformer, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    loss(model).backward()
    opt.step()


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("mode", ["reset_old", "reset_all"])
def test_reset_starts_state_afresh_as_a_new_optimizer(mode: OptimizerState, opt_name: str) -> None:
    torch.manual_seed(0)
    model = Transformer(CFG)
    opt = configure(model, opt_name)
    for _ in range(3):
        step(model, opt)
    before = optimizer_state_by_name(opt, model)
    sizes = {"d_mlp": 9, "n_layers": 3}  # the MLPs change; attention and norms do not
    record = grow_with_optimizers(
        model, model, [opt], GrowthStep(sizes), SurgeryOptions(optimizer_state=mode),
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    changed = {n for n, c in record.changes.items() if not c.is_identity} | set(record.new)
    assert "blocks.0.mlp.fc.weight" in changed and "blocks.2.mlp.fc.weight" in changed
    assert "blocks.0.attn.q.weight" not in changed
    afresh = {n for n, _ in model.named_parameters()} if mode == "reset_all" else changed
    state = optimizer_state_by_name(opt, model)
    for name, p in model.named_parameters():
        if name not in afresh:  # carried as it was
            assert all(torch.equal(v, before[name][k]) for k, v in state[name].items()), name
        elif opt_name == "sgd_momentum":  # torch starts the buffer from the next gradient
            assert name not in state, name
        else:
            assert float(state[name]["step"]) == 0, name
            moments = {k: v for k, v in state[name].items() if k != "step"}
            assert len(moments) == (3 if opt_name == "adam_amsgrad" else 2)
            assert all(v.shape == p.shape and not v.any() for v in moments.values()), name
    # The next step of every reset parameter is a new optimizer's first step, bit for bit.
    fresh_model = copy.deepcopy(model)
    fresh_opt = configure(fresh_model, opt_name)
    step(model, opt)
    step(fresh_model, fresh_opt)
    fresh = dict(fresh_model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, fresh[name]) is (name in afresh), name


def test_reset_keeps_the_groups_and_their_hyperparameters() -> None:
    torch.manual_seed(0)
    model = Transformer(CFG)
    opt = configure(model, "adamw")
    step(model, opt)
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    grow_with_optimizers(model, model, [opt], {"d_mlp": 9}, SurgeryOptions("zero", "reset_all"))
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == hyper
    fresh = configure(model, "adamw")  # the groups a new optimizer has, in its order
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [
        [id(p) for p in g["params"]] for g in fresh.param_groups
    ]


# -- bad values: refused when built, naming the option -----------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"optimizer_state": "reset"}, r"optimizer_state='reset': use one of"),
        (
            {"optimizer_state": "reset_old", "new_moments": "bias_corrected"},
            r"optimizer_state='reset_old' with new_moments='bias_corrected'",
        ),
        ({"rewarmup_steps": 3, "rewarmup_from": 1.0}, r"rewarmup_from must be .* \[0, 1\)"),
        ({"rewarmup_steps": 3, "rewarmup_from": -0.1}, r"rewarmup_from must be"),
        ({"rewarmup_steps": 3, "rewarmup_from": True}, r"rewarmup_from must be"),
        ({"rewarmup_from": 0.5}, r"rewarmup_from=0.5 needs rewarmup_steps > 0"),
        ({"lr_fan_in_exponent": -1}, r"lr_fan_in_exponent must be a number in \[0, 4\]"),
        ({"lr_fan_in_exponent": float("nan")}, r"lr_fan_in_exponent must be"),
        (
            {"lr_fan_in_exponent": 1.0, "lr_width_exponent": 1.0},
            r"lr_fan_in_exponent=1.0 with lr_width_exponent=1.0",
        ),
    ],
)
def test_bad_callback_option_is_refused_naming_it(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GrowthCallback([{"step": 3, "d_mlp": 16}], **options)


@pytest.mark.parametrize(
    ("stage", "match"),
    [
        ({"shrink_perturb": {"shrink": 0}}, r"stage 0: shrink_perturb=.*shrink must be .*\(0, 1\]"),
        ({"shrink_perturb": {"shrink": 1.5}}, r"shrink_perturb=.*shrink must be"),
        ({"shrink_perturb": {"noise": -0.1}}, r"shrink_perturb=.*noise must be a number >= 0"),
        ({"shrink_perturb": {"scale": 0.5}}, r"shrink_perturb=.*unknown key\(s\) \['scale'\]"),
        ({"shrink_perturb": 0.5}, r"shrink_perturb=0.5: must be a mapping"),
        ({"new_noise": -1e-3}, r"stage 0: new_noise=-0.001: must be a number >= 0"),
        ({"new_noise": "small"}, r"new_noise='small'"),
    ],
)
def test_bad_stage_option_is_refused_naming_it(stage: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GrowthSchedule([{"step": 3, "d_mlp": 16, **stage}])


def test_bad_option_leaves_the_model_and_optimizer_unchanged() -> None:
    torch.manual_seed(0)
    model = Transformer(CFG)
    opt = configure(model, "adamw")
    step(model, opt)
    before = params(model)
    fresh: Any = "fresh"
    shrink: Any = {"shrink": 2.0}
    bad: list[Callable[[], tuple[GrowthStep, SurgeryOptions]]] = [
        lambda: (GrowthStep({"d_mlp": 9}), SurgeryOptions(optimizer_state=fresh)),
        lambda: (GrowthStep({"d_mlp": 9}, new_noise=-1.0), SurgeryOptions()),
        lambda: (GrowthStep({"d_mlp": 9}, shrink_perturb=shrink), SurgeryOptions()),
    ]
    for options in bad:  # refused when built, before the model or optimizer is touched
        with pytest.raises(ValueError):
            grow_with_optimizers(model, model, [opt], *options())
        assert model.config == CFG
        assert_bitwise_equal(params(model), before)


# -- in a fit: the LR per group, resume and offline growth ---------------------------

FIT_STAGES = [
    {"step": 3, "d_model": 12, "d_mlp": 16},
    {"step": 6, "d_mlp": 24, "n_heads": 3, "n_layers": 2},
]


class GroupLR(L.Callback):
    """Each step's LR per param group (as the optimizer step uses it), by the group's
    first parameter's name."""

    def __init__(self) -> None:
        self.lrs: dict[int, dict[str, float]] = {}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        names = param_names(pl_module)
        self.lrs[trainer.global_step] = {
            names[id(g["params"][0])]: g["lr"] for g in optimizer.param_groups
        }


def fan_in(name: str, t: int) -> int | None:
    """The fan-in of weight ``name`` at step ``t`` of ``FIT_STAGES`` (None: not scaled)."""
    d_model, heads, d_mlp = (8, 2, 12) if t < 3 else (12, 2, 16) if t < 6 else (12, 3, 24)
    if name.endswith(("attn.q.weight", "attn.k.weight", "attn.v.weight", "mlp.fc.weight",
                      "lm_head.weight")):  # fmt: skip
        return d_model
    if name.endswith("attn.o.weight"):
        return heads * 3  # d_v = 3
    if name.endswith("mlp.proj.weight"):
        return d_mlp
    return None


def test_fan_in_lr_per_group_at_every_step_across_growth(cache: Path) -> None:
    module = lm_module(9, optim={"fan_in_groups": True})
    recorder = GroupLR()
    cb = growth(FIT_STAGES, lr_fan_in_exponent=1.5, rewarmup_steps=2, rewarmup_from=0.5)
    run = trainer(9, [cb, recorder], precision="64-true")
    run.fit(module, datamodule=datamodule(cache))
    cfg = module.optim_config
    ramp = {3: 0.75, 4: 1.0, 6: 0.75, 7: 1.0}  # 0.5 + 0.5 * (i + 1) / 2 after each growth
    scaled = set()
    for t in range(9):
        assert len(recorder.lrs[t]) == len(run.optimizers[0].param_groups)
        for name, lr in recorder.lrs[t].items():
            now, final = fan_in(name, t), fan_in(name, 8)
            factor = 1.0 if now is None or final is None else (final / now) ** 1.5
            expected = cfg.lr * lr_multiplier(t, cfg) * (ramp.get(t, 1.0) * factor)
            assert lr == pytest.approx(expected, rel=1e-12, abs=0), (t, name)
            if factor != 1.0:
                scaled.add(name.rsplit(".", 2)[-2])
    assert scaled == {"q", "k", "v", "o", "fc", "proj", "lm_head"}
    # The scheduled LR is back in the groups, no hook is left.
    optimizer = run.optimizers[0]
    last = run.lr_scheduler_configs[0].scheduler.get_last_lr()
    assert [g["lr"] for g in optimizer.param_groups] == last
    assert not optimizer._optimizer_step_pre_hooks


def test_fan_in_lr_refuses_a_group_of_mixed_fan_ins_before_step_zero(cache: Path) -> None:
    class FailIfTrained(L.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            raise AssertionError("trained with mixed groups")

    module = lm_module(9)  # one decay group: embeddings and every matrix
    cb = growth(FIT_STAGES, lr_fan_in_exponent=1.0)
    with pytest.raises(ValueError, match=r"lr_fan_in_exponent: param group 0 of optimizer 0 "
                       r"mixes parameters whose fan-ins differ .*fan_in_groups=True"):  # fmt: skip
        trainer(9, [cb, FailIfTrained()]).fit(module, datamodule=datamodule(cache))


LEVER_STAGES: list[dict[str, Any]] = [
    {"step": 4, "d_mlp": 20, "d_model": 12, "n_heads": 3, "new_noise": 0.01,
     "shrink_perturb": {"shrink": 0.8, "noise": 0.2}},
    {"step": 8, "n_layers": 3, "d_qk": 5, "d_v": 4, "layer_positions": "interleave",
     "new_noise": 0.01},
]  # fmt: skip
LEVERS = dict(optimizer_state="reset_old", rewarmup_steps=2, rewarmup_from=0.5,
              lr_fan_in_exponent=1.0)  # fmt: skip
MAX_STEPS = 12


def lever_module(seed: int = 0) -> L.LightningModule:
    return lm_module(MAX_STEPS, seed=seed, optim={"fan_in_groups": True})


@pytest.fixture(scope="module")
def lever_run(
    cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, torch.Tensor], GrowthCallback]:
    """Every lever at once, grown in the loop; checkpoints every 2 steps (the one at a
    growth step is written before that growth)."""
    ckpt_dir = tmp_path_factory.mktemp("levers")
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1, filename="{step}"
    )
    module = lever_module()
    cb = growth(LEVER_STAGES, **LEVERS)  # on_loss_jump="raise", loss_tolerance=1e-5
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        trainer(MAX_STEPS, [cb, ckpt], enable_checkpointing=True).fit(
            module, datamodule=datamodule(cache)
        )
    assert not [w for w in warned if "probe loss" in str(w.message)]  # expected: no warning
    return ckpt_dir, params(module), cb


def test_perturbing_stages_jump_as_expected_without_raising(
    lever_run: tuple[Path, dict[str, torch.Tensor], GrowthCallback],
) -> None:
    _, _, cb = lever_run
    assert [e.step for e in cb.events] == [4, 8]
    for event in cb.events:
        assert event.loss_delta is not None and abs(event.loss_delta) > 1e-5  # above tolerance


def test_expected_jump_is_logged(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    module = lm_module(6)
    cb = growth([{"step": 2, "d_mlp": 16, "shrink_perturb": {"shrink": 0.5}}])
    with caplog.at_level(logging.INFO):
        trainer(6, [cb]).fit(module, datamodule=datamodule(cache))
    assert "growth stage 0 at step 2 changed the probe loss by" in caplog.text
    assert "as expected: its shrink_perturb/new_noise change the function" in caplog.text


@pytest.mark.parametrize("start", ["step=4.ckpt", "step=6.ckpt"])
def test_levers_resume_bitwise(
    lever_run: tuple[Path, dict[str, torch.Tensor], GrowthCallback], cache: Path, start: str
) -> None:
    """From before the first growth (which is then drawn again) and between the stages."""
    ckpt_dir, expected, _ = lever_run
    module = lever_module(seed=123)
    cb = growth(LEVER_STAGES, **LEVERS)
    trainer(MAX_STEPS, [cb]).fit(module, datamodule=datamodule(cache), ckpt_path=ckpt_dir / start)
    assert_bitwise_equal(params(module), expected)


def test_levers_offline_growth_equals_in_fit_growth(
    lever_run: tuple[Path, dict[str, torch.Tensor], GrowthCallback], cache: Path, tmp_path: Path
) -> None:
    """Offline growth takes the stage's perturbations from the checkpoint's schedule and
    resets the optimizer state as asked; resuming it ends where the in-fit run did."""
    ckpt_dir, expected, _ = lever_run
    out = tmp_path / "grown.ckpt"
    sizes = {k: LEVER_STAGES[0][k] for k in ("d_mlp", "d_model", "n_heads")}
    grow_checkpoint_file(ckpt_dir / "step=4.ckpt", out, sizes, optimizer_state="reset_old")
    module = lever_module(seed=123)
    cb = growth(LEVER_STAGES, **LEVERS)
    trainer(MAX_STEPS, [cb]).fit(module, datamodule=datamodule(cache), ckpt_path=out)
    assert_bitwise_equal(params(module), expected)
