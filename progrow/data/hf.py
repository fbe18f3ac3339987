"""Hugging Face source: a ``datasets`` dataset tokenized with a ``transformers`` tokenizer.

Both libraries are the optional extra ``progrow[hf]`` and are imported only when used.
Loading is injectable (``load_dataset_fn``, a tokenizer object), so the whole path runs
with plain Python stand-ins: any mapping of split name to a re-iterable of row mappings,
and any object with ``encode(text) -> list[int]`` and ``eos_token_id``.

Rows are streamed: a split is read row by row (at most one batch of texts is held at a
time), once to identify its content when the dataset has no fingerprint of its own, and
once more to tokenize it on a cache miss. Nothing scales with the dataset's size but the
token files on disk.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from progrow.data.cache import read_entry, resolve_cache_dir, token_dtype, write_entry
from progrow.data.corpus import DEFAULT_VAL_FRACTION, Corpus, corpus_from_entry, hash_unit

_ENCODE_BATCH = 256
_PROBE_TEXT = "progrow tokenizer probe: The quick brown fox, 1234567890 \u00e9\u4e2d\n\tdef f(x):"
#: What a tokenizer may raise for a character it cannot encode (a stand-in's dict lookup).
_UNENCODABLE = (KeyError, ValueError, IndexError, UnicodeError)


class Tokenizer(Protocol):
    """What the ``hf`` source needs from a tokenizer."""

    eos_token_id: int | None

    def encode(self, text: str) -> Sequence[int]:
        """Token ids of ``text``."""
        ...


LoadDatasetFn = Callable[[str, "str | None"], Any]
"""``(path, config) -> {split name: iterable of rows}``; a ``DatasetDict`` qualifies."""


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"data.source='hf' needs the optional '{module}' package: pip install 'progrow[hf]'"
        ) from err


def default_load_dataset(path: str, config: str | None) -> Any:
    """Load with ``datasets``: a ``save_to_disk`` folder if ``path`` is one, else the Hub."""
    datasets = _require("datasets")
    local = Path(path).expanduser()
    markers = ("dataset_dict.json", "dataset_info.json", "state.json")
    if local.is_dir() and any((local / m).exists() for m in markers):
        return datasets.load_from_disk(str(local))
    return datasets.load_dataset(path, config)


def load_tokenizer(name: str) -> Any:
    """A ``transformers`` tokenizer by Hub name or local folder."""
    return _require("transformers").AutoTokenizer.from_pretrained(name)


def _is_hf_tokenizer(tokenizer: Any) -> bool:
    return type(tokenizer).__module__.startswith(("transformers", "tokenizers"))


def _encode_all(tokenizer: Any, texts: Sequence[str]) -> list[Sequence[int]]:
    if _is_hf_tokenizer(tokenizer) and callable(tokenizer):
        # The batched call runs in the Rust tokenizer; special tokens would put a BOS
        # inside every document of the concatenation, so the EOS is added by hand instead.
        return list(tokenizer(list(texts), add_special_tokens=False)["input_ids"])
    return [tokenizer.encode(text) for text in texts]


def _vocab_size(tokenizer: Any) -> int:
    # len() of a transformers tokenizer counts added tokens; .vocab_size does not.
    try:
        return len(tokenizer)
    except TypeError:
        return int(tokenizer.vocab_size)


def _eos(tokenizer: Any) -> int:
    for attr in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError("data.tokenizer has neither an eos_token_id nor a sep_token_id")


def _probe_ids(tokenizer: Any) -> list[Any]:
    """The ids of the probe text, then of each of its characters alone (``None`` where
    the tokenizer cannot encode one): two tokenizers that differ on any of them get
    different cache entries, also when neither covers every probe character."""
    try:
        whole: Any = [int(i) for i in tokenizer.encode(_PROBE_TEXT)]
    except _UNENCODABLE:
        whole = None
    chars: list[Any] = []
    for char in dict.fromkeys(_PROBE_TEXT):
        try:
            chars.append([int(i) for i in tokenizer.encode(char)])
        except _UNENCODABLE:
            chars.append(None)
    return [whole, chars]


def _tokenizer_id(tokenizer: Any) -> str:
    """What identifies a tokenizer's behaviour, independent of where it was loaded from.

    A fast tokenizer's full definition (vocabulary, merges, normalizers); otherwise its
    class, its vocabulary if it exposes one (``get_vocab()``) and its ids for a probe
    text and for each of the probe's characters.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        return "json:" + hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()
    parts: dict[str, Any] = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"
    }
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab):
        vocab = sorted((str(k), int(v)) for k, v in get_vocab().items())
        parts["vocab"] = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()
    parts["probe"] = _probe_ids(tokenizer)
    return "probe:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _texts(rows: Iterable[Any], column: str, split: str) -> Iterable[str]:
    for row in rows:
        try:
            text = row[column]
        except (KeyError, TypeError) as err:
            keys = sorted(row) if isinstance(row, Mapping) else type(row).__name__
            raise ValueError(
                f"data.text_column={column!r} not found in split {split!r} (columns: {keys})"
            ) from err
        yield str(text)


def _split(data: Any, name: str, field: str) -> Any:
    if not isinstance(data, Mapping) and not hasattr(data, "keys"):
        raise ValueError(f"{field}={name!r}: the dataset has no named splits")
    if name not in data:
        raise ValueError(f"{field}={name!r} not in the dataset's splits {sorted(data.keys())}")
    return data[name]


TextStream = Callable[[], Iterator[str]]
"""A zero-argument function giving a fresh iterator over one split's texts."""


def _stream(
    rows: Any,
    column: str,
    split: str,
    keep: Callable[[int], bool] | None,
    max_bytes: int | None,
) -> TextStream:
    """The texts of ``rows`` (re-iterable) whose row number ``keep`` accepts, until about
    ``max_bytes`` UTF-8 bytes, read lazily each time the stream is started."""

    def texts() -> Iterator[str]:
        total = 0
        for i, text in enumerate(_texts(rows, column, split)):
            if keep is not None and not keep(i):
                continue
            if max_bytes is not None and total >= max_bytes:
                return
            total += len(text.encode("utf-8"))
            yield text

    return texts


def _content_id(split: Any, texts: TextStream) -> str:
    own = getattr(split, "_fingerprint", None)  # datasets' content-derived fingerprint
    if isinstance(own, str):
        return "datasets:" + own
    digest = hashlib.sha256()
    for text in texts():
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def load_hf(
    path: str,
    *,
    tokenizer: str | Tokenizer,
    config: str | None = None,
    text_column: str = "text",
    train_split: str = "train",
    val_split: str | None = "validation",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    max_bytes: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    load_dataset_fn: LoadDatasetFn | None = None,
) -> Corpus:
    """A Hugging Face dataset, tokenized, joined with EOS after each document, and cached.

    Args:
        path: Dataset name on the Hub, or a local ``save_to_disk`` folder.
        tokenizer: Tokenizer name or folder, or a tokenizer object.
        config: Dataset configuration name.
        text_column: Column holding the text.
        train_split: Split to train on.
        val_split: Split to validate on; ``None`` holds out ``val_fraction`` of the train
            rows by a hash of their row number instead.
        val_fraction: Used only when ``val_split`` is ``None``.
        max_bytes: If set, read only the first rows holding about this many UTF-8 bytes
            (train and validation budgeted separately, as for the byte sources).
        cache_dir: Cache folder (default: ``$PROGROW_CACHE`` or ``~/.cache/progrow``).
        load_dataset_fn: Replaces :func:`default_load_dataset`.

    Returns:
        The cached corpus. Its fingerprint covers the dataset (its ``datasets``
        fingerprint, or a hash of the text), the tokenizer's definition (a fast
        tokenizer's JSON, else its ids for a probe string) and these arguments.
    """
    data = (load_dataset_fn or default_load_dataset)(path, config)
    if not isinstance(data, Mapping) and not hasattr(data, "keys"):
        data = {train_split: data}  # load_from_disk of a single Dataset
    tok: Any = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    eos, vocab = _eos(tok), _vocab_size(tok)

    train_rows = _split(data, train_split, "data.train_split")
    val_budget = train_budget = None
    if max_bytes is not None:
        val_budget = max(1, round(max_bytes * val_fraction))
        train_budget = max(1, max_bytes - val_budget)
    if val_split is None:

        def is_val(i: int) -> bool:
            return hash_unit(str(i), "progrow-row:") < val_fraction

        val_rows = train_rows
        train_texts = _stream(train_rows, text_column, train_split, lambda i: not is_val(i),
                              train_budget)  # fmt: skip
        val_texts = _stream(train_rows, text_column, train_split, is_val, val_budget)
    else:
        val_rows = _split(data, val_split, "data.val_split")
        train_texts = _stream(train_rows, text_column, train_split, None, train_budget)
        val_texts = _stream(val_rows, text_column, val_split, None, val_budget)

    header = {
        "format": "progrow-hf-v1",
        "path": path,
        "config": config,
        "text_column": text_column,
        "train_split": train_split,
        "val_split": val_split,
        "val_fraction": val_fraction if val_split is None else None,
        "max_bytes": max_bytes,
        "content": [_content_id(train_rows, train_texts), _content_id(val_rows, val_texts)],
        "tokenizer": {"id": _tokenizer_id(tok), "vocab_size": vocab, "eos_id": eos},
    }
    fingerprint = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:16]
    header["tokenizer_name"] = getattr(tok, "name_or_path", None) or type(tok).__qualname__
    entry = resolve_cache_dir(cache_dir) / f"hf-{fingerprint}"
    opened = read_entry(entry)
    built = opened is None
    if opened is None:
        dtype = token_dtype(vocab)
        writers = {
            "train": _token_writer(tok, train_texts, eos, vocab, dtype, f"{path!r}: the train"),
            "val": _token_writer(tok, val_texts, eos, vocab, dtype, f"{path!r}: the validation"),
        }
        meta = {**header, "fingerprint": fingerprint, "vocab_size": vocab, "eos_id": eos}
        opened = write_entry(entry, dtype, writers, meta)
    return corpus_from_entry(entry, *opened, built=built)


def _token_writer(
    tokenizer: Any, texts: TextStream, eos: int, vocab: int, dtype: np.dtype[Any], what: str
) -> Callable[[BinaryIO], int]:
    """Tokenize the stream batch by batch into ``f``; refuse a split without text."""

    def write(f: BinaryIO) -> int:
        count, chars = 0, 0
        stream = texts()
        while batch := list(itertools.islice(stream, _ENCODE_BATCH)):
            chars += sum(len(t) for t in batch)
            for ids in _encode_all(tokenizer, batch):
                arr = np.asarray([*ids, eos], dtype=np.int64)
                if arr.min() < 0 or arr.max() >= vocab:
                    raise ValueError(
                        f"data.tokenizer produced id {int(arr.max())} outside its "
                        f"vocabulary of {vocab}"
                    )
                arr.astype(dtype).tofile(f)
                count += arr.size
        if not chars:
            raise ValueError(f"data.path={what} split has no text")
        return count

    return write
