"""The LightningDataModule tying the corpus sources, the cache and the batch streams together."""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from progrow.data.batches import ResumableLoader, TrainStream, ValBatches, check_window
from progrow.data.corpus import DEFAULT_VAL_FRACTION, Corpus
from progrow.data.files import load_stdlib, load_text
from progrow.data.hf import LoadDatasetFn, Tokenizer, load_hf
from progrow.training.lightning_internals import micro_batches_processed

Source = Literal["stdlib", "text", "hf"]
SOURCES: tuple[str, ...] = ("stdlib", "text", "hf")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"data.{name} must be {kind}, got {value!r}")
    return int(value)


def _check_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"data.{name} must be a non-empty string, got {value!r}")
    return value


def trainer_position(trainer: L.Trainer) -> int:
    """Micro-batches the trainer has trained on, over all epochs, including restored ones.

    ``total.processed`` counts every ``training_step`` that returned (so it counts micro-
    batches, not optimizer steps), is restored from checkpoints, and is not touched by the
    prefetching that makes any count kept by the loader itself run ahead.
    """
    return micro_batches_processed(trainer)


class LMDataModule(L.LightningDataModule):
    """Language-model data: a cached token corpus served as resumable random-window batches.

    Training batches are a pure function of ``(seed, micro-batch index, rank, world_size)``
    (see :func:`~progrow.data.sample_batch`); a run resumed from a mid-epoch checkpoint
    continues with exactly the batches the uninterrupted run would have seen, also with
    gradient accumulation and with ``num_workers > 0``. Validation is a fixed set of
    ``val_batches`` batches of non-overlapping windows.

    The corpus is loaded on first need (``prepare_data``, ``setup`` or any property such as
    :attr:`vocab_size`), so a model can be sized before ``Trainer.fit``.

    Args:
        source: ``"stdlib"`` (this Python's standard library source, the default),
            ``"text"`` (a file or folder) or ``"hf"`` (a Hugging Face dataset).
        path: File or folder for ``text``; dataset name or ``save_to_disk`` folder for
            ``hf``; must be ``None`` for ``stdlib``.
        seq_len: Model context length; batches hold ``seq_len + 1`` tokens per row.
        batch_size: Windows per micro-batch (per rank).
        val_batches: Number of validation batches.
        seed: Data seed.
        cache_dir: Token cache folder (default: ``$PROGROW_CACHE`` or ``~/.cache/progrow``).
        val_fraction: Share of the data held out for validation.
        max_bytes: Keep only about this many bytes of text (deterministic), for quick runs.
        num_workers: DataLoader worker processes for training batches.
        glob: For a ``text`` folder, which files to read.
        config: ``hf`` dataset configuration name.
        text_column: ``hf`` column holding the text.
        tokenizer: ``hf`` tokenizer name or folder, or a tokenizer object.
        train_split: ``hf`` split to train on.
        val_split: ``hf`` split to validate on; ``None`` holds out ``val_fraction`` of the
            train rows.
        load_dataset_fn: ``hf`` dataset loader replacing ``datasets`` (for tests).
    """

    source: str
    path: str | None
    cache_dir: str | os.PathLike[str] | None
    val_fraction: float
    max_bytes: int | None
    glob: str
    config: str | None
    text_column: str
    tokenizer: str | Tokenizer | None
    train_split: str
    val_split: str | None
    load_dataset_fn: LoadDatasetFn | None

    def __init__(
        self,
        source: Source | str = "stdlib",
        path: str | os.PathLike[str] | None = None,
        *,
        seq_len: int = 256,
        batch_size: int = 32,
        val_batches: int = 16,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        val_fraction: float = DEFAULT_VAL_FRACTION,
        max_bytes: int | None = None,
        num_workers: int = 0,
        glob: str = "**/*",
        config: str | None = None,
        text_column: str = "text",
        tokenizer: str | Tokenizer | None = None,
        train_split: str = "train",
        val_split: str | None = "validation",
        load_dataset_fn: LoadDatasetFn | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"data.source must be one of {', '.join(SOURCES)}; got {source!r}")
        if source == "stdlib" and path is not None:
            raise ValueError(f"data.path must be null when data.source='stdlib', got {path!r}")
        if source != "stdlib":
            if path is None or str(path) == "":
                raise ValueError(f"data.path is required when data.source={source!r}")
            if source == "text" and not Path(path).expanduser().exists():
                raise FileNotFoundError(f"data.path={str(path)!r} does not exist")
        if source == "hf" and tokenizer is None:
            raise ValueError("data.tokenizer is required when data.source='hf'")
        self.seq_len = _check_int("seq_len", seq_len, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.val_batches = _check_int("val_batches", val_batches, 1)
        self.seed = _check_int("seed", seed, 0)
        self.num_workers = _check_int("num_workers", num_workers, 0)
        if max_bytes is not None:
            max_bytes = _check_int("max_bytes", max_bytes, 1)
        if (
            isinstance(val_fraction, bool)
            or not isinstance(val_fraction, numbers.Real)
            or not 0 < val_fraction < 1
        ):
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction!r}")
        self.source = str(source)
        self.path = None if path is None else str(path)
        self.cache_dir = cache_dir
        self.val_fraction = float(val_fraction)
        self.max_bytes = max_bytes
        self.glob = _check_str("glob", glob)
        self.config = config
        self.text_column = _check_str("text_column", text_column)
        self.tokenizer = tokenizer
        self.train_split = _check_str("train_split", train_split)
        self.val_split = val_split
        self.load_dataset_fn = load_dataset_fn
        self._corpus: Corpus | None = None
        self._val: ValBatches | None = None

    # -- corpus -------------------------------------------------------------------------

    def load_corpus(self) -> Corpus:
        """Build or open the cached corpus this module is configured for (no memoization)."""
        if self.source == "stdlib":
            corpus = load_stdlib(
                cache_dir=self.cache_dir, val_fraction=self.val_fraction, max_bytes=self.max_bytes
            )
        elif self.source == "text":
            assert self.path is not None
            corpus = load_text(
                self.path,
                glob=self.glob,
                cache_dir=self.cache_dir,
                val_fraction=self.val_fraction,
                max_bytes=self.max_bytes,
            )
        else:
            assert self.path is not None and self.tokenizer is not None
            corpus = load_hf(
                self.path,
                tokenizer=self.tokenizer,
                config=self.config,
                text_column=self.text_column,
                train_split=self.train_split,
                val_split=self.val_split,
                val_fraction=self.val_fraction,
                max_bytes=self.max_bytes,
                cache_dir=self.cache_dir,
                load_dataset_fn=self.load_dataset_fn,
            )
        self._check_fits(corpus)
        return corpus

    def _check_fits(self, corpus: Corpus) -> None:
        where = f"data.source={self.source!r}"
        if self.path is not None:
            where += f", data.path={self.path!r}"
        if self.max_bytes is not None:
            where += f", data.max_bytes={self.max_bytes}"
        for split, count in (("train", corpus.train_tokens), ("validation", corpus.val_tokens)):
            check_window(count, self.seq_len, split, where)

    @property
    def corpus(self) -> Corpus:
        """The corpus, loaded (and cached on disk) on first access."""
        if self._corpus is None:
            self._corpus = self.load_corpus()
        return self._corpus

    @property
    def vocab_size(self) -> int:
        """Number of token ids (256 for the byte sources)."""
        return self.corpus.vocab_size

    @property
    def fingerprint(self) -> str:
        """Short hex digest identifying the token data; log it with the run."""
        return self.corpus.fingerprint

    @property
    def train_tokens(self) -> int:
        """Number of train tokens."""
        return self.corpus.train_tokens

    @property
    def val_tokens(self) -> int:
        """Number of validation tokens."""
        return self.corpus.val_tokens

    def describe(self) -> dict[str, Any]:
        """What to log as hyperparameters: the arguments and what they resolved to."""
        return {
            "source": self.source,
            "path": self.path,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "val_batches": self.val_batches,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "max_bytes": self.max_bytes,
            "fingerprint": self.fingerprint,
            "vocab_size": self.vocab_size,
            "train_tokens": self.train_tokens,
            "val_tokens": self.val_tokens,
        }

    # -- Lightning hooks ----------------------------------------------------------------

    def prepare_data(self) -> None:
        """Build the token cache (Lightning calls this on one process per node)."""
        _ = self.corpus

    def setup(self, stage: str | None = None) -> None:
        """Open the token cache on every process."""
        _ = self.corpus

    def state_dict(self) -> dict[str, Any]:
        """What the saved data position means: micro-batch ``i`` of rank ``r`` is window
        draw ``i * world_size + r`` of the stream, so the position is per rank."""
        return {"world_size": self._rank()[1]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse a resume on another number of processes: its ranks would continue at
        the saved per-rank position of a differently interleaved stream, repeating or
        skipping batches instead of continuing the run's data.

        Raises:
            ValueError: the checkpoint was written with another world size.
        """
        saved = state_dict.get("world_size")
        world_size = self._rank()[1]
        if saved is not None and int(saved) != world_size:
            raise ValueError(
                f"checkpoint written by {saved} process(es), resumed on {world_size}: the "
                f"data position is per process, so the run would not continue its data "
                f"stream; resume with {saved} process(es) (devices x nodes)"
            )

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_stream(self, start: int = 0) -> TrainStream:
        """The training stream for this process's rank, starting at micro-batch ``start``."""
        rank, world_size = self._rank()
        return TrainStream(
            self.corpus.train_file,
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            start=start,
        )

    def batch_at(self, index: int, rank: int = 0, world_size: int = 1) -> Tensor:
        """Training micro-batch ``index`` of ``rank``, as the train loader yields it."""
        return self.corpus.batch_at(
            index,
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
        )

    def train_dataloader(self) -> ResumableLoader:
        """Endless training micro-batches, resuming at the trainer's position."""
        trainer = self.trainer
        return ResumableLoader(
            self.train_stream(),
            num_workers=self.num_workers,
            position_fn=(lambda: trainer_position(trainer)) if trainer is not None else None,
            pin_memory=torch.cuda.is_available(),
        )

    @property
    def val_dataset(self) -> ValBatches:
        """The fixed validation batches."""
        if self._val is None:
            self._val = self.corpus.val_batches(
                seq_len=self.seq_len, batch_size=self.batch_size, num_batches=self.val_batches
            )
        return self._val

    def val_dataloader(self) -> DataLoader[Tensor]:
        """The fixed validation batches, in order."""
        return DataLoader(self.val_dataset, batch_size=None, shuffle=False)

    def probe_batch(self) -> Tensor:
        """One fixed validation batch, e.g. to compare the loss before and after growth."""
        return self.val_dataset[0]
