"""The app's Hugging Face keys: start from a local HF model folder (``hf.init_from``) and
write the final grown model as one (``hf.export_to``).

Everything that can be checked is checked before training: the folder holds a supported
model whose vocabulary and length cover the data, the export folder is new or empty, and
the growth schedule's final layout is one the family can hold.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from progrow.app.errors import ConfigError
from progrow.app.growth_settings import GrowthSettings
from progrow.config import TransformerConfig
from progrow.model import Transformer

#: Tokenizer files of an HF model folder, copied next to the exported model.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


@dataclass
class HFStart:
    """A model imported from ``hf.init_from``, with the HF config to export with."""

    model: Transformer
    """The imported weights (float32)."""
    hf_config: Any
    """Its ``transformers`` config (non-architecture fields are kept on export)."""
    folder: Path
    """Where it came from."""


def check_folders(init_from: Path | None, export_to: Path | None) -> None:
    """Cheap checks of the two keys, before any data or model is loaded."""
    if init_from is not None and not (init_from / "config.json").is_file():
        raise ConfigError(
            f"hf.init_from={str(init_from)!r}: not a Hugging Face model folder (no config.json)"
        )
    if export_to is not None and export_to.exists() and not _empty_dir(export_to):
        raise ConfigError(
            f"hf.export_to={str(export_to)!r}: exists and is not empty; "
            "choose a new folder (nothing is overwritten)"
        )
    if init_from is not None or export_to is not None:
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise ConfigError(
                "hf.init_from / hf.export_to need the `transformers` package: pip install -e .[hf]"
            ) from None


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def load_start(folder: Path, vocab_size: int, seq_len: int) -> HFStart:
    """Import the model of ``folder`` (float32); its vocabulary and length must cover the
    data's."""
    from transformers import AutoModelForCausalLM

    from progrow.hf import from_hf

    key = f"hf.init_from={str(folder)!r}"
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model = from_hf(hf_model)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: {err}") from None
    config = model.config
    if config.vocab_size < vocab_size:
        raise ConfigError(
            f"{key}: the model's vocab_size={config.vocab_size} is below the data's "
            f"vocabulary of {vocab_size} (tokenize with its tokenizer: data=hf "
            f"data.tokenizer={folder})"
        )
    if config.max_seq_len < seq_len:
        raise ConfigError(
            f"{key}: the model reads at most {config.max_seq_len} tokens, below "
            f"data.seq_len={seq_len}"
        )
    return HFStart(model=model, hf_config=hf_model.config, folder=folder)


def check_export(export_to: Path, start: TransformerConfig, growth: GrowthSettings) -> None:
    """Refuse a schedule whose final layout the model's HF family cannot hold."""
    from progrow.hf import export_problems, hf_family

    final = growth.schedule.final_config(start)  # every field the expansions set
    problems = export_problems(final)
    if problems:
        raise ConfigError(
            f"hf.export_to={str(export_to)!r}: the model growth={growth.name} ends at cannot "
            f"be written as a {hf_family(final)} model: " + "; ".join(problems)
        )


def export(model: Transformer, export_to: Path, start: HFStart | None) -> Path:
    """Write the final model and, if the start folder had them, its tokenizer files."""
    from progrow.hf import save_hf

    save_hf(model, export_to, base_config=start.hf_config if start else None)
    if start is not None:
        for name in TOKENIZER_FILES:
            if (start.folder / name).is_file():
                shutil.copy2(start.folder / name, export_to / name)
    return export_to
