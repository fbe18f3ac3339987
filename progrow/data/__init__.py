"""Data: cached token corpora and resumable, deterministic language-model batches.

Without Lightning::

    corpus = load_stdlib(max_bytes=1_000_000)          # or load_text(path), load_hf(...)
    batch = corpus.batch_at(0, seq_len=128, batch_size=8, seed=0)
    inputs, targets = batch[:, :-1], batch[:, 1:]

Nothing here imports Lightning; :class:`progrow.training.LMDataModule` wraps the same
pieces for ``Trainer.fit``.
"""

from progrow.data.batches import (
    ResumableLoader,
    TrainStream,
    ValBatches,
    sample_batch,
    val_window_starts,
)
from progrow.data.cache import CACHE_ENV, TokenFile, resolve_cache_dir, token_dtype
from progrow.data.corpus import DEFAULT_VAL_FRACTION, Corpus, is_val_path, split_paths
from progrow.data.files import (
    BYTE_VOCAB,
    SEPARATOR,
    list_stdlib_files,
    list_text_files,
    load_stdlib,
    load_text,
    stdlib_root,
)
from progrow.data.hf import Tokenizer, load_hf

__all__ = [
    "BYTE_VOCAB",
    "CACHE_ENV",
    "DEFAULT_VAL_FRACTION",
    "SEPARATOR",
    "Corpus",
    "ResumableLoader",
    "TokenFile",
    "Tokenizer",
    "TrainStream",
    "ValBatches",
    "is_val_path",
    "list_stdlib_files",
    "list_text_files",
    "load_hf",
    "load_stdlib",
    "load_text",
    "resolve_cache_dir",
    "sample_batch",
    "split_paths",
    "stdlib_root",
    "token_dtype",
    "val_window_starts",
]
