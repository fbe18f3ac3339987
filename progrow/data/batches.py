"""Batches as pure functions of their position, and the datasets and loader that serve them.

A training batch is ``(batch_size, seq_len + 1)`` token windows drawn at random from the
train tokens with an RNG seeded by ``(seed, index * world_size + rank)``. Nothing else
feeds the draw, so resuming a run only needs the index of the next micro-batch, and rank
``r`` of ``w`` sees exactly the global stream's batches ``r, r + w, r + 2w, ...``.
Inputs are ``batch[:, :-1]`` and targets ``batch[:, 1:]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from progrow.data.cache import TokenSource, as_array


def check_window(num_tokens: int, seq_len: int, what: str, where: str = "") -> None:
    """Raise ``ValueError`` if a split of ``num_tokens`` cannot hold one window of
    ``seq_len + 1`` tokens; ``where`` (e.g. the data source) prefixes the message."""
    if num_tokens < seq_len + 1:
        raise ValueError(
            f"{where + ': ' if where else ''}the {what} split has {num_tokens} tokens, too few "
            f"for one window of data.seq_len + 1 = {seq_len + 1} tokens"
        )


def sample_batch(
    tokens: TokenSource,
    *,
    index: int,
    seed: int,
    batch_size: int,
    seq_len: int,
    rank: int = 0,
    world_size: int = 1,
) -> Tensor:
    """The training micro-batch number ``index`` of rank ``rank``.

    Args:
        tokens: The train tokens.
        index: Micro-batch index on this rank, counted from the start of training.
        seed: Data seed, non-negative.
        batch_size: Windows per batch.
        seq_len: Model context length; windows hold ``seq_len + 1`` tokens.
        rank: This process's rank.
        world_size: Number of ranks.

    Returns:
        A ``torch.long`` tensor of shape ``(batch_size, seq_len + 1)``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    arr = as_array(tokens)
    check_window(arr.shape[0], seq_len, "train")
    rng = np.random.default_rng([seed, index * world_size + rank])
    starts = rng.integers(0, arr.shape[0] - seq_len, size=batch_size, dtype=np.int64)
    windows = arr[starts[:, None] + np.arange(seq_len + 1, dtype=np.int64)]
    return torch.from_numpy(windows.astype(np.int64))


def val_window_starts(num_tokens: int, seq_len: int, count: int) -> np.ndarray:
    """Start offsets of ``count`` non-overlapping validation windows spread over the split.

    Windows sit on a grid of stride ``seq_len`` (a window's last token is the next grid
    window's first input, so no target is scored twice) and are picked evenly along it so
    that validation covers the whole split rather than its first few documents.
    """
    available = (num_tokens - 1) // seq_len
    if count > available:
        raise ValueError(f"{count} windows requested but only {available} fit")
    picks = np.arange(count, dtype=np.int64) * available // max(count, 1)
    return picks * seq_len


class TrainStream(IterableDataset[Tensor]):
    """An endless stream of training micro-batches, starting at micro-batch ``start``.

    Use it with ``DataLoader(stream, batch_size=None)``. With ``num_workers=n`` worker ``k``
    yields indices ``start + k, start + k + n, ...``; the DataLoader's in-order round robin
    then delivers ``start, start + 1, ...`` exactly as a single process would.

    Args:
        tokens: The train tokens.
        seq_len: Model context length.
        batch_size: Windows per batch.
        seed: Data seed.
        rank: This process's rank.
        world_size: Number of ranks.
        start: Index of the first micro-batch to yield.
    """

    def __init__(
        self,
        tokens: TokenSource,
        *,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        check_window(len(tokens), seq_len, "train")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def batch_at(self, index: int) -> Tensor:
        """Micro-batch ``index`` of this rank (see :func:`sample_batch`)."""
        return sample_batch(
            self.tokens,
            index=index,
            seed=self.seed,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            rank=self.rank,
            world_size=self.world_size,
        )

    def __iter__(self) -> Iterator[Tensor]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index = self.start + worker
        while True:
            yield self.batch_at(index)
            index += workers


class ValBatches(Dataset[Tensor]):
    """A fixed list of validation batches of non-overlapping windows, the same on every run.

    When the split is too small for ``num_batches`` full batches it gives as many full
    batches as fit (at least one, possibly smaller) and warns, rather than repeat windows.

    Args:
        tokens: The validation tokens.
        seq_len: Model context length.
        batch_size: Windows per batch.
        num_batches: Batches wanted.
    """

    def __init__(
        self, tokens: TokenSource, *, seq_len: int, batch_size: int, num_batches: int
    ) -> None:
        check_window(len(tokens), seq_len, "validation")
        available = (len(tokens) - 1) // seq_len
        wanted = batch_size * num_batches
        if available < wanted:
            kept = max(1, available // batch_size)
            warnings.warn(
                f"the validation split ({len(tokens)} tokens) holds {available} windows of "
                f"data.seq_len={seq_len}, fewer than data.val_batches * data.batch_size = "
                f"{wanted}; validating on {kept} batch(es) instead",
                stacklevel=2,
            )
            num_batches = kept
            batch_size = min(batch_size, available)
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.starts = val_window_starts(len(tokens), seq_len, batch_size * num_batches)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, i: int) -> Tensor:
        if not 0 <= i < self.num_batches:
            raise IndexError(f"validation batch {i} out of range [0, {self.num_batches})")
        starts = self.starts[i * self.batch_size : (i + 1) * self.batch_size]
        windows = as_array(self.tokens)[starts[:, None] + np.arange(self.seq_len + 1)]
        return torch.from_numpy(windows.astype(np.int64))


class ResumableLoader(DataLoader[Tensor]):
    """A DataLoader over a :class:`TrainStream` that restarts where training left off.

    Every ``iter()`` starts the stream at the next unconsumed micro-batch, taken from, in
    order of precedence: a state loaded with :meth:`load_state_dict` (once); else
    ``position_fn()`` (the LightningDataModule passes the trainer's count of processed
    micro-batches, which prefetching cannot skew); else the number of batches this loader
    has handed out so far (for plain loops, which do not prefetch).

    It has ``state_dict``/``load_state_dict``, so Lightning also records the position in
    the checkpoint's fit-loop state and counts the loader as resumable.

    Args:
        stream: The training stream.
        num_workers: DataLoader worker processes.
        position_fn: Returns the index of the next micro-batch to train on.
        pin_memory: Passed to the DataLoader.
    """

    def __init__(
        self,
        stream: TrainStream,
        *,
        num_workers: int = 0,
        position_fn: Callable[[], int] | None = None,
        pin_memory: bool = False,
    ) -> None:
        # Workers must be recreated on each iter() to pick up the new start index, and
        # in-order delivery is what turns the workers' interleaved indices into a sequence.
        super().__init__(
            stream,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=False,
            in_order=True,
        )
        self.stream = stream
        self.position_fn = position_fn
        self._loaded_index: int | None = None
        self._start = stream.start
        self._handed_out = 0

    def next_index(self) -> int:
        """The index of the next micro-batch to train on."""
        if self._loaded_index is not None:
            return self._loaded_index
        if self.position_fn is not None:
            return int(self.position_fn())
        return self._start + self._handed_out

    def __iter__(self) -> Iterator[Tensor]:  # type: ignore[override]
        start = self.next_index()
        self._loaded_index = None
        self.stream.start = start
        self._start, self._handed_out = start, 0
        return self._count(super().__iter__())

    def _count(self, batches: Iterator[Tensor]) -> Iterator[Tensor]:
        for batch in batches:
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The position to resume from, with the stream's identity for reference."""
        return {
            "next_index": self.next_index(),
            "seed": self.stream.seed,
            "rank": self.stream.rank,
            "world_size": self.stream.world_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Make the next ``iter()`` start at ``state_dict["next_index"]``."""
        self._loaded_index = int(state_dict["next_index"])
