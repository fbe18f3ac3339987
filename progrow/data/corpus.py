"""The :class:`Corpus` record shared by every source, and the path-hash train/val split.

Splitting by a hash of each document's relative path (rather than by position or by a
shuffled order) keeps a document's side fixed when others are added or removed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from progrow.data.batches import ValBatches, sample_batch
from progrow.data.cache import TokenFile

DEFAULT_VAL_FRACTION = 0.05


@dataclass(frozen=True)
class Corpus:
    """Train and validation token arrays, cached on disk, with what identifies them.

    Attributes:
        train_file: The train tokens on disk.
        val_file: The validation tokens on disk.
        vocab_size: Number of distinct token ids the tokenizer can produce.
        fingerprint: Short hex digest of everything the tokens depend on.
        eos_id: The document separator token, if any.
        directory: The cache entry holding the files.
        meta: The entry's metadata.
        built: Whether this call built the entry (``False``: it was already cached).
    """

    train_file: TokenFile
    val_file: TokenFile
    vocab_size: int
    fingerprint: str
    eos_id: int | None
    directory: Path
    meta: Mapping[str, Any] = field(repr=False)
    built: bool = False

    @property
    def train(self) -> np.ndarray:
        """The train tokens (memory-mapped, read-only)."""
        return self.train_file.array

    @property
    def val(self) -> np.ndarray:
        """The validation tokens (memory-mapped, read-only)."""
        return self.val_file.array

    @property
    def train_tokens(self) -> int:
        """Number of train tokens."""
        return len(self.train_file)

    @property
    def val_tokens(self) -> int:
        """Number of validation tokens."""
        return len(self.val_file)

    def batch_at(
        self,
        index: int,
        *,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> Tensor:
        """Training micro-batch ``index`` of ``rank`` (see :func:`~progrow.data.sample_batch`)."""
        return sample_batch(
            self.train_file,
            index=index,
            seed=seed,
            batch_size=batch_size,
            seq_len=seq_len,
            rank=rank,
            world_size=world_size,
        )

    def val_batches(self, *, seq_len: int, batch_size: int, num_batches: int) -> ValBatches:
        """The fixed validation batches (see :class:`~progrow.data.ValBatches`)."""
        return ValBatches(
            self.val_file, seq_len=seq_len, batch_size=batch_size, num_batches=num_batches
        )


def corpus_from_entry(
    entry: Path, meta: Mapping[str, Any], files: Mapping[str, TokenFile], *, built: bool
) -> Corpus:
    """Wrap an opened cache entry as a :class:`Corpus`."""
    return Corpus(
        train_file=files["train"],
        val_file=files["val"],
        vocab_size=int(meta["vocab_size"]),
        fingerprint=str(meta["fingerprint"]),
        eos_id=meta.get("eos_id"),
        directory=entry,
        meta=dict(meta),
        built=built,
    )


def hash_unit(text: str, salt: str = "") -> float:
    """A deterministic pseudo-random number in ``[0, 1)`` from ``sha256(salt + text)``."""
    digest = hashlib.sha256((salt + text).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_val_path(relpath: str, val_fraction: float) -> bool:
    """Whether the file at POSIX ``relpath`` belongs to the validation split."""
    return hash_unit(relpath) < val_fraction


def split_paths(paths: Iterable[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Split relative paths into sorted ``(train, val)`` lists by path hash."""
    train: list[str] = []
    val: list[str] = []
    for rel in sorted(paths):
        (val if is_val_path(rel, val_fraction) else train).append(rel)
    return train, val
