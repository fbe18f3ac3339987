"""The app and the growth callback with models imported from Hugging Face: start from a
local HF folder (``hf.init_from``), grow inside ``trainer.fit``, write the final model as
an HF folder (``hf.export_to``); bad keys fail before training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import TensorDataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from hf_utils import TOL, hf_logits, max_diff, tiny_gpt2, tiny_llama
from hydra import compose, initialize_config_dir
from lit_utils import app_overrides
from omegaconf import DictConfig

from progrow import GrowthCallback, Transformer
from progrow.app import ConfigError
from progrow.app.train import CONF_DIR, train
from progrow.hf import from_hf, to_hf
from progrow.training import LMModule

#: Two stages over every dimension Llama can export: heads and KV heads, head size (both
#: together, integer factor), MLP, hidden size, layers (interleaved).
LLAMA_STAGES = (
    "growth.stages=[{step: 2, d_mlp: 37, n_heads: 4, n_kv_heads: 2},"
    " {step: 4, d_qk: 16, d_v: 16, d_model: 24, n_layers: 3, layer_positions: interleave}]"
)


def llama_folder(root: Path, **overrides: Any) -> Path:
    """A tiny byte-level Llama (vocab 256, as the stdlib data) saved with save_pretrained."""
    fields: dict[str, Any] = dict(
        vocab_size=256,
        max_position_embeddings=16,
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        intermediate_size=24,
        num_hidden_layers=2,
    )
    fields.update(overrides)
    folder = root / "start"
    tiny_llama(dtype=torch.float32, **fields).save_pretrained(folder)
    return folder


def compose_run(out: Path, cache: Path, *overrides: str, max_steps: int = 6) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*app_overrides(cache, max_steps=max_steps), *overrides])
    cfg.paths.output_dir = str(out)
    return cfg


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def probe_tokens() -> torch.Tensor:
    return torch.randint(256, (2, 16), generator=torch.Generator().manual_seed(3))


def test_app_starts_from_hf_folder_grows_and_exports(cache: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    start = llama_folder(tmp_path)
    original = AutoModelForCausalLM.from_pretrained(start).eval()
    export_to = tmp_path / "grown"
    # A learning rate far below float32 resolution: training leaves the weights as they
    # are, so the exported grown model must compute what the HF start computed.
    cfg = compose_run(
        tmp_path / "run",
        cache,
        f"hf.init_from={start}",
        f"hf.export_to={export_to}",
        LLAMA_STAGES,
        "optim.lr=1e-30",
    )
    summary = train(cfg)
    assert summary["hf_export"] == str(export_to)
    assert summary["sizes_start"]["d_model"] == 16 and summary["sizes"]["d_model"] == 24
    assert len(summary["events"]) == 2
    grown = AutoModelForCausalLM.from_pretrained(export_to).eval()
    assert (grown.config.hidden_size, grown.config.num_key_value_heads) == (24, 2)
    assert (grown.config.head_dim, grown.config.num_hidden_layers) == (16, 3)
    tokens = probe_tokens()
    assert max_diff(hf_logits(grown, tokens), hf_logits(original, tokens)) <= TOL[torch.float32]


def test_app_export_after_training_matches_the_last_checkpoint(cache: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    start = llama_folder(tmp_path)
    export_to = tmp_path / "grown"
    cfg = compose_run(
        tmp_path / "run", cache, f"hf.init_from={start}", f"hf.export_to={export_to}", LLAMA_STAGES
    )
    summary = train(cfg)
    module = LMModule.load_from_checkpoint(summary["last_ckpt"], map_location="cpu").eval()
    tokens = probe_tokens()
    with torch.no_grad():
        ours = module.model(tokens)
    grown = AutoModelForCausalLM.from_pretrained(export_to).eval()
    assert max_diff(hf_logits(grown, tokens), ours) <= TOL[torch.float32]
    assert ours.abs().max() > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["growth.stages=[{step: 2, d_v: 12}]"], "d_qk=8 != d_v=12"),
        (["growth.stages=[{step: 2, n_heads: 3}]"], "n_heads=3 does not divide d_model=16"),
        (["growth.stages=[{step: 2, d_qk: 12, d_v: 12}]"], "rope_inv_freq: d_qk=12"),
    ],
    ids=["d_v", "n_heads", "rope_table"],
)
def test_app_refuses_an_unexportable_schedule_before_training(
    cache: Path, tmp_path: Path, overrides: list[str], message: str
) -> None:
    start = llama_folder(tmp_path)
    out = tmp_path / "run"
    cfg = compose_run(
        out, cache, f"hf.init_from={start}", f"hf.export_to={tmp_path / 'x'}", *overrides
    )
    with pytest.raises(ConfigError, match=r"hf\.export_to=") as err:
        train(cfg)
    assert message in str(err.value)
    assert not (tmp_path / "x").exists() and not (out / "checkpoints").exists()


def test_app_refuses_bad_hf_folders_before_training(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"hf\.export_to=.*exists and is not empty"):
        train(compose_run(out, cache, f"hf.export_to={taken}"))
    with pytest.raises(ConfigError, match=r"hf\.init_from=.*no config\.json"):
        train(compose_run(out, cache, f"hf.init_from={tmp_path}"))
    small_vocab = llama_folder(tmp_path, vocab_size=37)
    with pytest.raises(ConfigError, match="vocab_size=37 is below the data's vocabulary"):
        train(compose_run(out, cache, f"hf.init_from={small_vocab}"))
    with pytest.raises(ConfigError, match="hf: unknown key"):
        train(compose_run(out, cache, "+hf.export=x"))
    assert (taken / "keep.txt").read_text() == "mine" and not (out / "checkpoints").exists()


# --- GrowthCallback on a user's LightningModule whose model came from HF ---------------------


class HFImportLM(L.LightningModule):
    """A user's module: ``self.model`` is a progrow Transformer imported from HF."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (tokens,) = batch  # a TensorDataset item: (B, T + 1) token ids
        logits = self.model(tokens[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


@pytest.mark.parametrize(
    ("hf_model", "stages"),
    [
        (
            lambda: tiny_llama(
                dtype=torch.float32, num_attention_heads=4, num_key_value_heads=2, head_dim=4
            ),
            [
                {"step": 2, "d_mlp": 30, "n_heads": 8, "n_kv_heads": 4},
                {"step": 4, "d_qk": 8, "d_v": 8, "d_model": 24, "n_layers": 3},
            ],
        ),
        (
            lambda: tiny_gpt2(dtype=torch.float32, tie_word_embeddings=False),
            [{"step": 2, "d_mlp": 70}, {"step": 4, "n_layers": 3}],
        ),
    ],
    ids=["llama", "gpt2"],
)
def test_growth_callback_grows_an_imported_model_which_then_exports(
    hf_model: Any, stages: list[dict[str, Any]]
) -> None:
    hf = hf_model()
    model = from_hf(hf).train()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(37, (4, 13), generator=gen) for _ in range(6)]
    growth = GrowthCallback(stages, seed=0, on_loss_jump="raise", loss_tolerance=1e-4)
    trainer = L.Trainer(
        max_steps=6,
        callbacks=[growth],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = HFImportLM(model)
    loader = torch.utils.data.DataLoader(TensorDataset(torch.stack(batches)), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    assert [e.step for e in growth.events] == [2, 4]
    for event in growth.events:
        assert event.loss_delta is not None and abs(event.loss_delta) <= 1e-4
    grown = module.model.eval()
    exported = to_hf(grown, base_config=hf.config)
    tokens = batches[0]
    with torch.no_grad():
        assert max_diff(hf_logits(exported, tokens), grown(tokens)) <= TOL[torch.float32]
