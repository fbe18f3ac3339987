"""The callback at the Lightning boundary: batch shapes, launchers, optimizer order,
checkpoints without a prior fit, LR re-warmup."""

from __future__ import annotations

import copy
import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lit_utils import (
    TINY_MODEL,
    Rows,
    assert_bitwise_equal,
    datamodule,
    growth,
    lm_module,
    params,
    small_delta,
    trainer,
)
from torch.utils.data import DataLoader, Dataset, TensorDataset

from progrow import LMModule, Transformer, TransformerConfig
from progrow.training import lm_loss
from progrow.training.architecture import load_architecture, optimizer_param_names
from progrow.training.fsdp import GrowableModelParallelStrategy

STAGES = [{"step": 2, "d_mlp": 16, "d_model": 10}, {"step": 4, "n_layers": 2}]


def token_rows(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, TINY_MODEL["max_seq_len"] + 1),
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip


class DictRows(Dataset):
    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


class BatchModule(L.LightningModule):
    """A user's module whose batches are tuples (TensorDataset) or dicts (HF style)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Transformer(TransformerConfig(**TINY_MODEL))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        tokens = batch["input_ids"] if isinstance(batch, dict) else batch[0]
        return lm_loss(self.model, tokens)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


@pytest.mark.parametrize("shape", ["tuple", "dict"])
def test_default_probe_reads_tuple_and_dict_batches(shape: str) -> None:
    rows = token_rows()
    data = TensorDataset(rows) if shape == "tuple" else DictRows(rows)
    torch.manual_seed(0)
    module = BatchModule()
    cb = growth(STAGES)
    trainer(6, [cb]).fit(module, DataLoader(data, batch_size=4))
    assert [e.step for e in cb.events] == [2, 4]
    assert all(small_delta(e) for e in cb.events)
    assert all(3.0 < (e.loss_before or 0.0) < 7.0 for e in cb.events)  # a real next-token loss


class PairModule(BatchModule):
    """A user's module trained on ``(inputs, targets)`` pairs (``TensorDataset(x, y)``)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return torch.nn.functional.cross_entropy(
            self.model(inputs).flatten(0, 1), targets.flatten()
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)  # the probe sees the initial model


def test_default_probe_scores_inputs_against_targets() -> None:
    """An ``(x, y)`` batch whose targets are not ``x`` shifted: the logged loss before
    growth is the user's loss on the probe pair, not the loss of ``x`` read as tokens."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, TINY_MODEL["max_seq_len"]), generator=gen)
    y = torch.randint(0, 256, x.shape, generator=gen)
    torch.manual_seed(0)
    module = PairModule()
    start = copy.deepcopy(module.model).eval()
    cb = growth(STAGES[:1])
    trainer(3, [cb]).fit(module, DataLoader(TensorDataset(x, y), batch_size=4))
    with torch.no_grad():
        pair_loss = torch.nn.functional.cross_entropy(start(x[:4]).flatten(0, 1), y[:4].flatten())
        tokens_loss = lm_loss(start, x[:4])
    (event,) = cb.events
    assert event.loss_before == pytest.approx(float(pair_loss), rel=1e-6)
    assert abs(float(tokens_loss) - float(pair_loss)) > 1e-3
    assert small_delta(event)


class FailIfStepped(L.Callback):
    def on_before_optimizer_step(self, *args: Any) -> None:
        raise AssertionError("an optimizer step ran although the probe batch is unusable")


@pytest.mark.parametrize(
    "batch",
    [
        {"tokens": torch.zeros(4, 17, dtype=torch.long)},  # no input_ids
        (torch.randn(4, 17),),  # floats: not token ids
    ],
    ids=["dict_without_input_ids", "float_tuple"],
)
def test_unusable_batch_without_loss_fn_fails_at_the_first_batch(batch: Any) -> None:
    class Module(BatchModule):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.model.tok_emb.weight.sum()

    rows: Any = [batch] * 8  # a list is a fine map-style dataset
    with pytest.raises(ValueError, match=r"probe batch is .*Pass loss_fn="):
        trainer(6, [growth(STAGES), FailIfStepped()]).fit(
            Module(), DataLoader(rows, batch_size=None)
        )


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_spawn_launchers_are_refused_at_setup(strategy: str) -> None:
    cpu_trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=10,
                            logger=False, enable_checkpointing=False)  # fmt: skip
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match=r"start_method=.*Use strategy='ddp'"):
        growth(STAGES).setup(cpu_trainer, BatchModule(), "fit")


def test_bias_corrected_moments_are_refused_under_fsdp_at_setup() -> None:
    strategy = GrowableModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    cpu_trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=10,
                            logger=False, enable_checkpointing=False)  # fmt: skip
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"new_moments='bias_corrected' is not supported"):
        growth(STAGES, new_moments="bias_corrected").setup(cpu_trainer, BatchModule(), "fit")
    growth(STAGES).setup(cpu_trainer, BatchModule(), "fit")  # "zero" passes


def test_popen_ddp_passes_the_strategy_check() -> None:
    cpu_trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=10,
                            logger=False, enable_checkpointing=False)  # fmt: skip
    torch.manual_seed(0)
    growth(STAGES).setup(cpu_trainer, BatchModule(), "fit")


class UserLM(L.LightningModule):
    """A user's module with every entry point: the Transformer at ``self.net``, restored
    at the checkpoint's (grown) size by ``load_architecture`` in ``on_load_checkpoint``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Transformer(TransformerConfig(**TINY_MODEL))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        load_architecture(self, checkpoint, "net")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return lm_loss(self.net, batch[0])

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = lm_loss(self.net, batch[0])
        self.log("val_loss", loss)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = lm_loss(self.net, batch[0])
        self.log("test_loss", loss)
        return loss

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0][:, :-1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def loader() -> DataLoader:
    return DataLoader(TensorDataset(token_rows(16)), batch_size=4)


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, UserLM]:
    """A user's module grown twice (steps 2 and 4), checkpoints at steps 3 and 6."""
    folder = tmp_path_factory.mktemp("grown")
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=folder, every_n_train_steps=3, save_top_k=-1, filename="{step}"
    )
    torch.manual_seed(0)
    module = UserLM()
    trainer(6, [growth(STAGES, model_attr="net"), ckpt], enable_checkpointing=True).fit(
        module, DataLoader(TensorDataset(token_rows()), batch_size=4)
    )
    assert module.net.config.n_layers == 2 and module.net.config.d_model == 10
    return folder, module.eval()


def outputs(module: UserLM) -> torch.Tensor:
    with torch.no_grad():
        return module.net(token_rows(2, seed=1)[:, :-1])


def test_torch_save_of_the_module_after_fit(grown: tuple[Path, UserLM]) -> None:
    _, module = grown
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.net.config == module.net.config
    torch.testing.assert_close(outputs(loaded), outputs(module), rtol=0, atol=0)


def test_deepcopy_loads_a_checkpoint_without_touching_the_original(
    grown: tuple[Path, UserLM],
) -> None:
    # EMA/SWA callbacks deep-copy the module; loading into the copy must change the copy.
    folder, module = grown
    before = {k: v.clone() for k, v in module.state_dict().items()}
    twin = copy.deepcopy(module)
    between = torch.load(folder / "step=3.ckpt", weights_only=False)
    trainer(6, [], limit_val_batches=2).validate(
        twin, loader(), ckpt_path=str(folder / "step=3.ckpt"), verbose=False
    )
    assert twin.net.config.n_layers == 1 and twin.net.config.d_model == 10  # stage 0 only
    assert torch.equal(twin.net.lm_head.weight, between["state_dict"]["net.lm_head.weight"])
    assert module.net.config.n_layers == 2
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("entry", ["validate", "test", "predict", "load_from_checkpoint"])
def test_grown_checkpoint_loads_without_a_prior_fit(grown: tuple[Path, UserLM], entry: str) -> None:
    folder, module = grown
    path = str(folder / "step=6.ckpt")
    torch.manual_seed(1)
    fresh = UserLM()  # the starting size, other values
    if entry == "load_from_checkpoint":
        fresh = UserLM.load_from_checkpoint(path)
    else:
        results = getattr(trainer(6, [], limit_val_batches=2), entry)(
            fresh, loader(), ckpt_path=path
        )
        assert results
    assert fresh.net.config == module.net.config
    torch.testing.assert_close(outputs(fresh.eval()), outputs(module), rtol=0, atol=0)


class BareLM(UserLM):
    """A user's module that does not restore the architecture itself."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pass


def test_only_an_explicit_rebuild_restores_a_grown_checkpoint(
    grown: tuple[Path, UserLM],
) -> None:
    """Without load_architecture a grown checkpoint fails to load (the model never changes
    size by itself); the growth callback rebuilds it while it resumes a fit, and only
    then: afterwards a load of another size fails again."""
    folder, module = grown
    torch.manual_seed(1)
    with pytest.raises(RuntimeError, match="size mismatch for"):
        trainer(6, [], limit_val_batches=2).validate(
            BareLM(), loader(), ckpt_path=str(folder / "step=6.ckpt"), verbose=False
        )
    resumed = BareLM()
    trainer(6, [growth(STAGES, model_attr="net")]).fit(
        resumed, loader(), ckpt_path=str(folder / "step=3.ckpt")
    )
    assert resumed.net.config == module.net.config
    with pytest.raises(RuntimeError, match="size mismatch for"):
        resumed.net.load_state_dict(BareLM().net.state_dict())


def test_checkpoint_from_before_the_state_dict_carried_the_config_is_refused(
    tmp_path: Path,
) -> None:
    # Checkpoints of that time kept the config only under checkpoint["progrow"] and had no
    # format version: refused by name, not restored at the wrong size.
    module = lm_module(6)
    fit = trainer(6, [growth(STAGES)])
    fit.fit(module, DataLoader(Rows(token_rows()), batch_size=4))
    fit.save_checkpoint(tmp_path / "new.ckpt")
    old = torch.load(tmp_path / "new.ckpt", weights_only=False)
    del old["state_dict"]["model._extra_state"]
    del old["progrow"]["format"]
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match=r"progrow checkpoint format none.*reads format 1"):
        LMModule.load_from_checkpoint(tmp_path / "old.ckpt")
    loaded = LMModule.load_from_checkpoint(tmp_path / "new.ckpt")
    assert loaded.model.config == module.model.config


class SortedOrder(UserLM):
    """configure_optimizers lists the parameters sorted by name, not in module order."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return lm_loss(self.net, batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for _, p in sorted(self.named_parameters())], lr=1e-2)


class ThreeGroups(SortedOrder):
    """Three groups with their own hyperparameters, each in its own order."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        named = list(self.named_parameters())
        embeddings = [p for n, p in reversed(named) if "emb" in n or "lm_head" in n]
        matrices = [p for n, p in sorted(named, reverse=True) if "blocks" in n and p.ndim == 2]
        vectors = [p for n, p in named if p.ndim == 1]
        return torch.optim.AdamW(
            [
                {"params": vectors, "weight_decay": 0.0},
                {"params": matrices, "weight_decay": 0.1},
                {"params": embeddings, "lr": 3e-3},
            ],
            lr=1e-2,
        )


def group_names(module: L.LightningModule, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    return optimizer_param_names(module, [optimizer])[0]


@pytest.mark.parametrize("module_class", [SortedOrder, ThreeGroups])
def test_optimizer_follows_configure_optimizers_and_resumes_exactly(
    module_class: type[SortedOrder], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = tmp_path_factory.getbasetemp() / "cache"
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1, filename="{step}"
    )
    torch.manual_seed(0)
    full = module_class()
    run = trainer(6, [growth(STAGES, model_attr="net"), ckpt], enable_checkpointing=True)
    run.fit(full, datamodule=datamodule(cache))
    # The live optimizer holds what configure_optimizers builds on a fresh grown module.
    fresh = module_class()
    fresh.net.rebuild(full.net.config)
    assert group_names(full, run.optimizers[0]) == group_names(fresh, fresh.configure_optimizers())
    # A run resumed between the stages ends bitwise where the uninterrupted one did.
    torch.manual_seed(1)
    resumed = module_class()
    trainer(6, [growth(STAGES, model_attr="net")]).fit(
        resumed, datamodule=datamodule(cache), ckpt_path=str(tmp_path / "step=3.ckpt")
    )
    assert resumed.net.config == full.net.config
    assert_bitwise_equal(params(resumed), params(full))


class PerBlockGroups(SortedOrder):
    """One param group per block: adding a block changes the number of groups."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        blocks = [{"params": list(block.parameters())} for block in self.net.blocks]
        rest = [p for n, p in self.named_parameters() if ".blocks." not in f".{n}"]
        return torch.optim.AdamW([*blocks, {"params": rest}], lr=1e-2)


def test_group_options_pass_through_the_callback(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.getbasetemp() / "cache"
    stages = [{"step": 1, "n_layers": 2}]
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="param_order must list each group"):
        trainer(3, [growth(stages, model_attr="net")]).fit(
            PerBlockGroups(), datamodule=datamodule(cache)
        )
    module = PerBlockGroups()
    run = trainer(3, [growth(stages, model_attr="net", group_for_new=lambda name, p: 0)])
    run.fit(module, datamodule=datamodule(cache))
    groups = group_names(module, run.optimizers[0])
    assert len(groups) == 2 and {n for n in groups[0] if n.startswith("net.blocks.1.")}


class AppliedLR(L.Callback):
    """The LR each SGD step really applied: minus the change of the weight with the
    largest gradient, divided by that gradient (plain SGD: no momentum, no decay)."""

    def __init__(self) -> None:
        self.applied: dict[int, float] = {}
        self._before: tuple[int, int, float, float] | None = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        weight = pl_module.net.lm_head.weight
        i = int(weight.grad.abs().argmax())
        before, grad = weight.detach().flatten()[i].item(), weight.grad.flatten()[i].item()
        self._before = (trainer.global_step, i, before, grad)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        assert self._before is not None
        step, i, before, grad = self._before
        after = pl_module.net.lm_head.weight.detach().flatten()[i].item()
        if after != before:  # a step the GradScaler skipped changes nothing
            self.applied[step] = (before - after) / grad


class DecayingSGD(SortedOrder):
    """Plain SGD, LR 0.1 / (1 + step)."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 / (1 + t))
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def test_rewarmup_ramps_the_lr_applied_and_logged_and_leaves_nothing_behind(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = tmp_path_factory.getbasetemp() / "cache"
    applied = AppliedLR()
    monitor = L.pytorch.callbacks.LearningRateMonitor(logging_interval="step")
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="run")
    torch.manual_seed(0)
    module = DecayingSGD()
    cb = growth([{"step": 4, "d_mlp": 16}], model_attr="net", rewarmup_steps=3)
    # The monitor listed first: the callback must still scale before the monitor reads.
    run = trainer(10, [monitor, cb, applied], logger=logger, log_every_n_steps=1,
                  precision="64-true")  # fmt: skip
    run.fit(module, datamodule=datamodule(cache))
    scale = {4: 1 / 3, 5: 2 / 3}  # step 6 is the window's last: full LR again
    expected = [0.1 / (1 + t) * scale.get(t, 1.0) for t in range(10)]
    assert [applied.applied[t] for t in range(10)] == pytest.approx(expected, rel=1e-9)
    rows = list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").open()))
    logged = [float(r["lr-SGD"]) for r in rows if r.get("lr-SGD")]
    assert logged == pytest.approx(expected, rel=1e-6)
    # Nothing left: the scheduler's LR in the groups, no progrow hook on the optimizer.
    optimizer = run.optimizers[0]
    last = run.lr_scheduler_configs[0].scheduler.get_last_lr()
    assert [g["lr"] for g in optimizer.param_groups] == last
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


@pytest.mark.parametrize("rewarmup", [0, 2])
def test_width_exponent_scales_the_lr_until_the_final_width(
    tmp_path_factory: pytest.TempPathFactory, rewarmup: int
) -> None:
    cache = tmp_path_factory.getbasetemp() / "cache"
    applied = AppliedLR()
    torch.manual_seed(0)
    module = DecayingSGD()
    # d_model 8 -> 12 -> 16: the factor (16 / width) ** 1.5 is 2**1.5, then (4/3)**1.5,
    # then 1; a re-warmup ramp multiplies it after each growth.
    stages = [{"step": 3, "d_model": 12}, {"step": 6, "d_model": 16, "d_mlp": 16}]
    cb = growth(stages, model_attr="net", lr_width_exponent=1.5, rewarmup_steps=rewarmup)
    run = trainer(9, [cb, applied], precision="64-true")
    run.fit(module, datamodule=datamodule(cache))
    width = {t: 2.0**1.5 if t < 3 else (4 / 3) ** 1.5 if t < 6 else 1.0 for t in range(9)}
    ramp = {3: 0.5, 6: 0.5} if rewarmup else {}
    expected = [0.1 / (1 + t) * width[t] * ramp.get(t, 1.0) for t in range(9)]
    assert [applied.applied[t] for t in range(9)] == pytest.approx(expected, rel=1e-9)
    optimizer = run.optimizers[0]  # the scheduled LR is back in the groups, no hook left
    last = run.lr_scheduler_configs[0].scheduler.get_last_lr()
    assert [g["lr"] for g in optimizer.param_groups] == last
    assert not optimizer._optimizer_step_pre_hooks


@pytest.mark.parametrize("bad", [-0.5, True, "1", float("nan"), 5.0])
def test_width_exponent_rejects_bad_values(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"lr_width_exponent must be a number in \[0, 4\], got"):
        growth([{"step": 3, "d_model": 12}], lr_width_exponent=bad)


class SkipsAStep(SortedOrder):
    """SGD with a chainable scheduler (it reads the group's LR); at step 4, the first
    re-warmup step, the loss is infinite and the GradScaler skips the optimizer step."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = lm_loss(self.net, batch)
        return loss * float("inf") if self.trainer.global_step == 4 else loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.8)
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def test_rewarmup_with_a_step_skipped_by_the_grad_scaler(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cache = tmp_path_factory.getbasetemp() / "cache"
    applied = AppliedLR()
    torch.manual_seed(0)
    module = SkipsAStep()
    cb = growth([{"step": 4, "d_mlp": 16}], model_attr="net", rewarmup_steps=3,
                on_loss_jump="ignore")  # fmt: skip
    fp16 = MixedPrecision("16-mixed", "cpu")
    run = trainer(8, [cb, applied], plugins=[fp16])
    run.fit(module, datamodule=datamodule(cache))
    # Step 4 was skipped; step 5 ran at 2/3 of its LR; the scheduler stepped 8 times from
    # the scheduled LR, never from a scaled one.
    scale = {5: 2 / 3}
    expected = {t: 0.1 * 0.8**t * scale.get(t, 1.0) for t in (0, 1, 2, 3, 5, 6, 7)}
    assert applied.applied.keys() == expected.keys()
    for t, lr in expected.items():
        assert applied.applied[t] == pytest.approx(lr, rel=1e-3), t
    assert run.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.8**8, rel=1e-12)
