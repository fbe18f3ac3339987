"""The growth callback inside ``trainer.fit``: timing, LR, loss continuity, bad schedules,
mixed precision, a user's own module."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lit_utils import (
    TINY_MODEL,
    assert_bitwise_equal,
    datamodule,
    growth,
    lm_module,
    measured,
    params,
    small_delta,
    trainer,
)

from progrow import GrowthCallback, GrowthSchedule, Transformer, TransformerConfig
from progrow.expand import targets
from progrow.training import lm_loss
from progrow.training.fsdp import GrowableModelParallelStrategy
from progrow.training.strategies import check_strategy


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


class Recorder(L.Callback):
    """Records, per optimizer step, the LR used and the model size at the update."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []  # per step, one LR per param group
        self.sizes: list[dict[str, int]] = []
        self.micro_sizes: list[tuple[int, int]] = []  # (global_step, d_mlp) per micro-batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        self.micro_sizes.append((trainer.global_step, pl_module.model.config.d_mlp))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.lrs.append([g["lr"] for g in optimizer.param_groups])
        self.sizes.append(pl_module.model.config.sizes())


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_lr_per_step_identical_to_run_without_growth(cache: Path, schedule: str) -> None:
    runs = {}
    optim = {"schedule": schedule, "decay_fraction": 0.5}
    for name, callbacks in {"grow": [growth()], "fixed": []}.items():
        rec = Recorder()
        module = lm_module(12, optim=optim)
        trainer(12, [*callbacks, rec]).fit(module, datamodule=datamodule(cache))
        runs[name] = rec
    assert len(runs["grow"].lrs) == 12
    assert runs["grow"].lrs == runs["fixed"].lrs
    assert len(set(map(tuple, runs["grow"].lrs))) > 5  # the schedule does move


@pytest.mark.parametrize("accumulate", [1, 3])
def test_fires_at_the_scheduled_optimizer_step(cache: Path, accumulate: int) -> None:
    rec = Recorder()
    cb = growth([{"step": 4, "d_mlp": 20}, {"step": 7, "n_layers": 2}])
    trainer(10, [cb, rec], accumulate_grad_batches=accumulate).fit(
        lm_module(10), datamodule=datamodule(cache)
    )
    assert [e.step for e in cb.events] == [4, 7]
    d_mlp = [s["d_mlp"] for s in rec.sizes]
    assert d_mlp == [12] * 4 + [20] * 6  # the update of step 4 is the first at the new size
    n_layers = [s["n_layers"] for s in rec.sizes]
    assert n_layers == [1] * 7 + [2] * 3
    # Every micro-batch of one optimizer step sees one size. (A stage's step always starts a
    # window in an uninterrupted run; the mid-window case is the resumed test below.)
    assert len(rec.micro_sizes) == 10 * accumulate
    per_step: dict[int, set[int]] = {}
    for step, size in rec.micro_sizes:
        per_step.setdefault(step, set()).add(size)
    assert all(len(sizes) == 1 for sizes in per_step.values())


class SaveAfterBatch(L.Callback):
    """Saves a checkpoint after micro-batch ``batch_idx`` (mid-accumulation if it is not
    the last of its window), as a preemption handler might."""

    def __init__(self, path: Path, batch_idx: int) -> None:
        self.path, self.batch_idx = path, batch_idx

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if args[-1] == self.batch_idx:
            trainer.save_checkpoint(self.path)


def test_never_grows_mid_accumulation_even_when_resumed_there(cache: Path, tmp_path: Path) -> None:
    # Stopped after micro-batch 4 of windows of 3 (batches 3-5 make optimizer step 1),
    # then resumed with a stage at step 1, already due: the first resumed micro-batch is
    # the last of step 1's window, so the growth must wait for step 2's first micro-batch.
    path = tmp_path / "mid.ckpt"
    trainer(2, [SaveAfterBatch(path, 4)], accumulate_grad_batches=3).fit(
        lm_module(4), datamodule=datamodule(cache)
    )
    rec = Recorder()
    cb = growth([{"step": 1, "d_mlp": 20}])
    trainer(4, [cb, rec], accumulate_grad_batches=3).fit(
        lm_module(4), datamodule=datamodule(cache), ckpt_path=str(path)
    )
    assert rec.micro_sizes[0] == (1, 12)  # resumed inside step 1's window, not grown
    assert [e.step for e in cb.events] == [2]
    assert [s["d_mlp"] for s in rec.sizes] == [12, 20, 20]  # steps 1, 2, 3


def test_loss_continuity_logged_and_within_tolerance(cache: Path, tmp_path: Path) -> None:
    cb = growth(loss_tolerance=1e-5)
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="run")
    module = lm_module(12)
    trainer(12, [cb], logger=logger, log_every_n_steps=1).fit(module, datamodule=datamodule(cache))
    assert len(cb.events) == 2
    for event in map(measured, cb.events):
        assert small_delta(event)
        assert event.params > event.params_before  # type: ignore[operator]
        assert 3.0 < event.loss_before < 7.0  # type: ignore[operator]  # a real loss (ln 256 = 5.5)
    assert module.model.config.sizes() == {
        "d_mlp": 20, "n_kv_heads": 3, "n_heads": 3, "d_v": 4, "d_qk": 5, "d_model": 12,
        "n_layers": 3,
    }  # fmt: skip
    text = (Path(logger.log_dir) / "metrics.csv").read_text()
    header = text.splitlines()[0].split(",")
    for key in ("growth/loss_before", "growth/loss_after", "growth/loss_delta", "growth/stage",
                "growth/params", "compute/flops", "compute/tokens", "train/loss"):  # fmt: skip
        assert key in header, key
    rows = [dict(zip(header, line.split(","), strict=True)) for line in text.splitlines()[1:]]
    deltas = [float(r["growth/loss_delta"]) for r in rows if r["growth/loss_delta"]]
    assert len(deltas) == 2 and all(abs(d) <= 1e-5 for d in deltas)


def test_growth_seconds_time_the_growth_not_the_probes(cache: Path) -> None:
    """An event's ``seconds`` is the expansion, the surgery and the re-wrap: the two probe
    forwards around it (here made 0.3 s each) are not in it."""

    def slow_loss(pl_module: Any, batch: torch.Tensor) -> torch.Tensor:
        time.sleep(0.3)
        return lm_loss(pl_module.model, batch)

    callback = growth(loss_fn=slow_loss)
    trainer(10, [callback]).fit(lm_module(10), datamodule=datamodule(cache))
    assert len(callback.events) == 2
    seconds = [event.seconds for event in callback.events]
    assert all(s is not None and 0 < s < 0.3 for s in seconds), seconds


def test_loss_jump_raises_or_warns(cache: Path) -> None:
    def shifted_loss(pl_module: Any, batch: torch.Tensor) -> torch.Tensor:
        # A loss that depends on the parameter count: growth "jumps" it on purpose.
        return lm_loss(pl_module.model, batch) + pl_module.model.num_params() * 1e-3

    with pytest.raises(RuntimeError, match="growth stage 0 at step 4 changed the probe loss"):
        trainer(10, [growth(loss_fn=shifted_loss)]).fit(lm_module(10), datamodule=datamodule(cache))
    with pytest.warns(UserWarning, match="above loss_tolerance"):
        trainer(10, [growth(loss_fn=shifted_loss, on_loss_jump="warn")]).fit(
            lm_module(10), datamodule=datamodule(cache)
        )


def test_stacked_layers_jump_the_loss_raise_or_warn_and_are_logged(
    cache: Path, tmp_path: Path
) -> None:
    """init="stack" copies blocks with their outputs (not preserving): the probe loss
    jumps, the default check (on_loss_jump="raise") refuses it, "warn" lets it through
    with a warning and the jump is logged as growth/loss_delta."""
    stage = [{"step": 4, "n_layers": 2, "init": "stack"}]
    with pytest.raises(RuntimeError, match="growth stage 0 at step 4 changed the probe loss"):
        trainer(6, [growth(stage)]).fit(lm_module(6), datamodule=datamodule(cache))
    cb = growth(stage, on_loss_jump="warn")
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="run")
    with pytest.warns(UserWarning, match="above loss_tolerance"):
        trainer(6, [cb], logger=logger, log_every_n_steps=1).fit(
            lm_module(6), datamodule=datamodule(cache)
        )
    jump = measured(cb.events[0]).loss_delta
    assert jump is not None and abs(jump) > 1e-3
    text = (Path(logger.log_dir) / "metrics.csv").read_text()
    header = text.splitlines()[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in text.splitlines()[1:]]
    assert [float(r["growth/loss_delta"]) for r in rows if r["growth/loss_delta"]] == [
        pytest.approx(jump)
    ]


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ([{"step": 5, "d_mlp": 20}, {"step": 5, "n_layers": 2}], "stage 1: step=5 must be greater"),
        ([{"step": 3, "d_mlp": 20}, {"step": 6, "d_mlp": 16}], "stage 1: d_mlp=16 shrinks"),
        ([{"step": 3, "d_foo": 20}], r"stage 0: unknown field\(s\) \['d_foo'\]"),
        ([{"step": -1, "d_mlp": 20}], "stage 0: step must be >= 0, got -1"),
        ([{"step": 3, "d_mlp": 0}], "stage 0: d_mlp must be a positive integer, got 0"),
        ([{"step": 3, "d_mlp": 2.5}], "stage 0: d_mlp must be a positive integer, got 2.5"),
        ([{"step": 3}], "stage 0: no target size"),
        ([{"d_mlp": 20}], "stage 0: missing field 'step'"),
        ([{"step": 0.5, "d_mlp": 20}], r"stage 0: step=0.5 is a fraction of max_steps"),
        ([{"step": 3, "n_layers": 3, "layer_positions": "middle"}], "layer_positions='middle'"),
        (
            [{"step": 3, "d_mlp": 20, "layer_positions": "interleave"}],
            r"stage 0: layer_positions='interleave' given without n_layers",
        ),
        (
            [{"step": 3, "d_model": 12, "hidden_factor_at": "norms"}],
            r"stage 0: hidden_factor_at='norms': use one of \['gains', 'readers'\]",
        ),
        (
            [{"step": 3, "d_mlp": 20, "hidden_factor_at": "readers"}],
            r"stage 0: hidden_factor_at='readers' given without d_model",
        ),
        (
            [{"step": 3, "d_qk": 5, "qk_factor_at": "values"}],
            r"stage 0: qk_factor_at='values': use one of \['keys', 'queries', 'shared'\]",
        ),
        (
            [{"step": 3, "d_model": 12, "qk_factor_at": "shared"}],
            r"stage 0: qk_factor_at='shared' given without d_qk",
        ),
        (
            [{"step": 3, "d_mlp": 20, "init": "copy"}],
            r"stage 0: init='copy': use one of \['zero', 'split', 'stack'\]",
        ),
    ],
)
def test_bad_schedule_fails_when_built(stages: list[dict[str, Any]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GrowthCallback(stages)


class FailIfTrained(L.Callback):
    def on_train_batch_start(self, *args: Any) -> None:
        raise AssertionError("training started although the schedule is invalid")


@pytest.mark.parametrize(
    ("stages", "model", "match"),
    [
        ([{"step": 12, "d_mlp": 20}], {}, r"stage 0: step=12 is past the end .*max_steps=10"),
        ([{"step": 2, "d_mlp": 8}], {}, "stage 0: d_mlp=8 is below the model's d_mlp=12"),
        (
            [{"step": 2, "d_model": 16}],
            {"norm": "layernorm"},
            "stage 0: d_model=16: hidden expansion needs norm=.rmsnorm.",
        ),
        (
            [{"step": 2, "n_layers": 3, "layer_positions": [0, 7]}],
            {},
            r"stage 0: layer_positions: .*out of range",
        ),
    ],
)
def test_bad_schedule_fails_before_step_zero(
    cache: Path, stages: list[dict[str, Any]], model: dict[str, Any], match: str
) -> None:
    module = lm_module(10, **model)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        trainer(10, [GrowthCallback(stages), FailIfTrained()]).fit(
            module, datamodule=datamodule(cache)
        )
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_fractional_steps() -> None:
    schedule = GrowthSchedule([{"step": 0.25, "d_mlp": 20}, {"step": 0.5, "n_layers": 2}],
                              max_steps=40)  # fmt: skip
    assert [s.step for s in schedule] == [10, 20]


def test_unsupported_strategy_is_refused() -> None:
    # FSDP1 (and DeepSpeed, any other strategy) points to growing the checkpoint offline.
    with pytest.raises(RuntimeError, match=r"does not support the FSDPStrategy.*progrow-grow"):
        check_strategy(FSDPStrategy())
    # Plain ModelParallelStrategy cannot resume a grown sharded checkpoint.
    needs = r"needs progrow\.training\.GrowableModelParallelStrategy"
    with pytest.raises(RuntimeError, match=needs):
        check_strategy(ModelParallelStrategy())
    check_strategy(GrowableModelParallelStrategy())


class UserModule(L.LightningModule):
    """A user's own module: the Transformer at ``self.net``, plain Adam, no progrow base."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Transformer(TransformerConfig(**TINY_MODEL))
        self.head_bias = torch.nn.Parameter(torch.zeros(1))  # a parameter outside the model

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return lm_loss(self.net, batch) + self.head_bias.pow(2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_users_own_module_grows_and_resumes(cache: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = UserModule()
    cb = growth(model_attr="net")
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=6, save_top_k=-1, filename="{step}"
    )
    trainer(12, [cb, ckpt], enable_checkpointing=True).fit(module, datamodule=datamodule(cache))
    assert module.net.config.n_layers == 3 and len(cb.events) == 2
    # A fresh module of the starting size, other values, resumes between the stages (step
    # 6) and ends bitwise where the uninterrupted run did: weights, the parameter outside
    # the Transformer, Adam's state across the second growth.
    torch.manual_seed(1)
    resumed = UserModule()
    cb2 = growth(model_attr="net")
    trainer(12, [cb2]).fit(
        resumed, datamodule=datamodule(cache), ckpt_path=str(tmp_path / "step=6.ckpt")
    )
    assert resumed.net.config == module.net.config
    assert [e.step for e in cb2.events] == [4, 8]  # stage 0 restored, stage 1 grown again
    assert_bitwise_equal(params(resumed), params(module))
    # The callback rebuilt the model for the resume only: a later load of another size
    # fails instead of shrinking the model under its optimizer.
    with pytest.raises(RuntimeError, match="size mismatch for"):
        resumed.net.load_state_dict(UserModule().net.state_dict())
    assert resumed.net.config == module.net.config


#: bf16 autocast moves the probe loss by about 1.2e-4 across TWO_STAGES; a hidden expansion
#: without its norm_eps rescale moves it by 3.7e-3. The tolerance sits between the two.
BF16_TOLERANCE = 1e-3


@pytest.mark.parametrize("eps_rescaled", [True, False], ids=["exact", "eps_not_rescaled"])
def test_bf16_mixed_precision(
    cache: Path, monkeypatch: pytest.MonkeyPatch, eps_rescaled: bool
) -> None:
    if not eps_rescaled:
        # The tolerance must be tight enough to catch a real defect under bf16 noise:
        # drop hidden expansion's eps rescale and the growth must be flagged.
        exact = targets._hidden_config
        monkeypatch.setattr(
            targets, "_hidden_config", lambda c, h: exact(c, h).replace(norm_eps=c.norm_eps)
        )
    cb = growth(loss_tolerance=BF16_TOLERANCE)
    module = lm_module(10)
    run = trainer(10, [cb], precision="bf16-mixed")
    if not eps_rescaled:
        with pytest.raises(RuntimeError, match=r"growth stage 0 .* changed the probe loss"):
            run.fit(module, datamodule=datamodule(cache))
        return
    run.fit(module, datamodule=datamodule(cache))
    assert len(cb.events) == 2
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert all(small_delta(e, BF16_TOLERANCE) for e in cb.events)


def test_stage_at_step_zero_and_noop_stage(cache: Path) -> None:
    cb = growth([{"step": 0, "d_mlp": 20}, {"step": 3, "d_mlp": 20, "n_heads": 2}])
    module = lm_module(5)
    trainer(5, [cb]).fit(module, datamodule=datamodule(cache))
    assert [e.step for e in cb.events] == [0]  # stage 1 asks for sizes already reached
    assert module.model.config.d_mlp == 20


class GainRecorder(L.Callback):
    """The first block's attention-norm gain at each update (after growth, before the
    optimizer moves it)."""

    def __init__(self) -> None:
        self.gains: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.gains.append(pl_module.model.blocks[0].norm_attn.weight.detach().clone())


@pytest.mark.parametrize("factor_at", ["gains", "readers"])
def test_stage_places_the_hidden_factor(cache: Path, factor_at: str) -> None:
    """A stage's hidden_factor_at reaches the expansion inside fit: the new gain entries
    are sqrt(h/h') on the gains, a fresh 1 when the readers carry the factor."""
    stage = {"step": 2, "d_model": 12, "hidden_factor_at": factor_at}
    rec = GainRecorder()
    cb = growth([stage])
    trainer(3, [cb, rec]).fit(lm_module(3), datamodule=datamodule(cache))
    assert cb.schedule.to_list()[0]["hidden_factor_at"] == factor_at  # always written
    new_entries = rec.gains[2][8:]
    expected = (8 / 12) ** 0.5 if factor_at == "gains" else 1.0
    assert torch.equal(new_entries, torch.full_like(new_entries, expected))


class QKRecorder(L.Callback):
    """The first block's W_Q and W_K at the start of each batch (before or after a growth
    callback's growth, depending on where it is listed)."""

    def __init__(self) -> None:
        self.weights: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        attn = pl_module.model.blocks[0].attn
        self.weights.append((attn.q.weight.detach().clone(), attn.k.weight.detach().clone()))


_QK_FACTORS = {
    "keys": (1.0, (5 / 3) ** 0.5),
    "queries": ((5 / 3) ** 0.5, 1.0),
    "shared": ((5 / 3) ** 0.25, (5 / 3) ** 0.25),
}


@pytest.mark.parametrize("factor_at", list(_QK_FACTORS))
def test_stage_places_the_key_query_factor(cache: Path, factor_at: str) -> None:
    """A stage's qk_factor_at reaches the expansion inside fit: the old W_Q and W_K rows
    (2 heads, d_qk 3 -> 5: rows 0-2 and 5-7) come out times the placement's factors."""
    before, after = QKRecorder(), QKRecorder()
    cb = growth([{"step": 2, "d_qk": 5, "qk_factor_at": factor_at}])
    trainer(3, [before, cb, after]).fit(lm_module(3), datamodule=datamodule(cache))
    assert cb.schedule.to_list()[0]["qk_factor_at"] == factor_at  # always written
    old_rows = torch.tensor([0, 1, 2, 5, 6, 7])
    (old_q, old_k), (new_q, new_k) = before.weights[2], after.weights[2]
    q, k = _QK_FACTORS[factor_at]
    assert torch.equal(new_q[old_rows], old_q * q) and torch.equal(new_k[old_rows], old_k * k)


class ProjRecorder(L.Callback):
    """The first block's W2 (``mlp.proj.weight``) at each update, before the step."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.weights.append(pl_module.model.blocks[0].mlp.proj.weight.detach().clone())


@pytest.mark.parametrize("init", ["zero", "split"])
def test_stage_init_reaches_the_expansion(cache: Path, init: str) -> None:
    """A stage's init reaches the expansion inside fit (the loss check raises on a jump):
    W2's new columns are zero with "zero" and none is with "split"; only "split" is written
    into the stage list (older lists match the default)."""
    stage = {"step": 2, "d_mlp": 20, "init": init}
    rec = ProjRecorder()
    cb = growth([stage])
    trainer(3, [cb, rec]).fit(lm_module(3), datamodule=datamodule(cache))
    assert cb.schedule[0].init == init
    assert cb.schedule.to_list()[0].get("init", "zero") == init
    assert ("init" in cb.schedule.to_list()[0]) == (init == "split")
    new_columns = rec.weights[2][:, 12:]
    assert new_columns.shape[1] == 8
    zero_columns = int((new_columns == 0).all(dim=0).sum())
    assert zero_columns == (8 if init == "zero" else 0)


def test_resumed_placement_change_is_warned_for_stages_ahead() -> None:
    """A saved stage list placing the hidden factor on the gains read against a schedule
    on the default readers: a warning per hidden stage still ahead, none when the
    placements agree; the same change on a stage already grown is refused."""
    stages = [{"step": 2, "d_model": 12}, {"step": 4, "d_mlp": 20}, {"step": 6, "d_model": 16}]
    placed = [{**s, "hidden_factor_at": "gains"} if "d_model" in s else s for s in stages]
    ahead = [*placed[:2], {**placed[2], "hidden_factor_at": "readers"}]
    event = {"stage": 0, "step": 2, "params_before": 1, "params": 2, "sizes": {}}
    cb = growth(ahead)
    with pytest.warns(UserWarning, match=r"stage \d") as caught:
        cb.load_state_dict({"events": [event], "schedule": placed})
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "stage 2 (step 6): hidden_factor_at was 'gains', now 'readers'" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        growth(placed).load_state_dict({"events": [event], "schedule": placed})
    with pytest.raises(ValueError, match="already grew per another schedule"):
        growth(stages).load_state_dict({"events": [event], "schedule": placed})


#: Grown at step 2 (stage 0), checkpointed at step 4, stage 1 still ahead.
SAVED_STAGES = [{"step": 2, "d_mlp": 20}, {"step": 6, "n_layers": 2}]


@pytest.fixture(scope="module")
def grown_once(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grown_once") / "step4.ckpt"
    trainer(8, [growth(SAVED_STAGES), SaveAfterBatch(path, 3)]).fit(
        lm_module(8), datamodule=datamodule(cache)
    )
    return path


def test_resume_under_another_schedule_in_a_grown_stage_is_refused(
    cache: Path, grown_once: Path
) -> None:
    """A stage inserted before the one already grown makes the new stage 0 grow again
    with stage 0's seed, logged as a second "stage 0": refused before any step, naming
    both schedules; resume_allow_changes=True continues with a warning naming both."""
    inserted = [{"step": 1, "d_model": 12}, *SAVED_STAGES]
    rec = Recorder()
    both = (
        r"the checkpoint's schedule: \[\{'step': 2, 'd_mlp': 20\}, .*\]; "
        r"this callback's: \[\{'step': 1, 'd_model': 12, .*\]"
    )
    with pytest.raises(ValueError, match=r"already grew per another schedule \(stage 0 .*" + both):
        trainer(8, [growth(inserted), rec]).fit(
            lm_module(8), datamodule=datamodule(cache), ckpt_path=str(grown_once)
        )
    assert rec.lrs == []  # refused before any optimizer step
    allowed = growth(inserted, resume_allow_changes=True)
    with pytest.warns(UserWarning, match=r"differs in a stage already grown: stage 0 .*" + both):
        trainer(8, [allowed]).fit(
            lm_module(8), datamodule=datamodule(cache), ckpt_path=str(grown_once)
        )
    with pytest.raises(ValueError, match="resume_allow_changes must be True or False"):
        growth(inserted, resume_allow_changes="yes")


def test_resume_under_another_schedule_ahead_warns_naming_both(
    cache: Path, grown_once: Path
) -> None:
    changed = [SAVED_STAGES[0], {"step": 6, "n_layers": 3}]
    cb = growth(changed)
    with pytest.warns(UserWarning) as caught:
        trainer(8, [cb]).fit(lm_module(8), datamodule=datamodule(cache), ckpt_path=str(grown_once))
    (message,) = [str(w.message) for w in caught if "GrowthCallback" in str(w.message)]
    assert "differs in a stage still ahead: stage 1 (step 6): n_layers was 2, now 3" in message
    assert f"the checkpoint's schedule: {GrowthSchedule(SAVED_STAGES).to_list()}" in message
    assert f"this callback's: {cb.schedule.to_list()}" in message
    assert [(e.stage, e.step) for e in cb.events] == [(0, 2), (1, 6)]


class CompiledModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model: Any = torch.compile(Transformer(TransformerConfig(**TINY_MODEL)))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return lm_loss(self.model, batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


@pytest.mark.slow
def test_compiled_model_grows_and_recompiles(cache: Path) -> None:
    # Growth edits the Transformer under the torch.compile wrapper in place; dynamo's
    # shape guards fail and it recompiles. (About 2 minutes on 2 CPU cores: slow.)
    torch.manual_seed(0)
    module = CompiledModule()
    cb = growth()
    trainer(10, [cb]).fit(module, datamodule=datamodule(cache))
    assert [e.step for e in cb.events] == [4, 8]
    assert all(small_delta(e) for e in cb.events)
    assert module.model._orig_mod.config.n_layers == 3


LLAMA_MODEL: dict[str, Any] = dict(
    activation="silu", mlp_gated=True, mlp_bias=False, positions="rope", d_qk=4, n_heads=4,
    n_kv_heads=2,
)  # fmt: skip
# KV heads with their query heads (4 -> 6 query heads), a non-integer RoPE growth (the
# frequency table goes into the config), then query heads into the groups and the rest.
LLAMA_STAGES: list[dict[str, Any]] = [
    {"step": 3, "n_kv_heads": 3, "d_qk": 6},
    {"step": 6, "n_heads": 9, "d_model": 12, "d_mlp": 20, "n_layers": 2},
]


def test_llama_blocks_grow_kv_heads_inside_fit_and_resume_exactly(
    cache: Path, tmp_path: Path
) -> None:
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}"
    )
    cb = growth(LLAMA_STAGES)
    module = lm_module(9, **LLAMA_MODEL)
    trainer(9, [cb, ckpt], enable_checkpointing=True).fit(module, datamodule=datamodule(cache))
    config = module.model.config
    assert (config.n_kv_heads, config.n_heads, config.d_qk, config.d_model) == (3, 9, 6, 12)
    assert config.rope_inv_freq is not None and len(config.rope_inv_freq) == 3
    assert [e.step for e in cb.events] == [3, 6]
    assert all(small_delta(e) for e in cb.events)
    # Resumed between the stages (from the checkpoint at step 4): bitwise the same run.
    resumed = lm_module(9, seed=123, **LLAMA_MODEL)
    trainer(9, [growth(LLAMA_STAGES)]).fit(
        resumed, datamodule=datamodule(cache), ckpt_path=str(tmp_path / "step=4.ckpt")
    )
    assert resumed.model.config == config
    assert_bitwise_equal(params(resumed), params(module))
