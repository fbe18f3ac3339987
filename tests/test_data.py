"""The data layer: corpora, the token cache, deterministic batches and exact resume."""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from progrow.data import (
    CACHE_ENV,
    SEPARATOR,
    ResumableLoader,
    TrainStream,
    ValBatches,
    list_stdlib_files,
    list_text_files,
    load_hf,
    load_stdlib,
    load_text,
    sample_batch,
    split_paths,
    val_window_starts,
)
from progrow.data.hf import _require
from progrow.training import LMDataModule

SMALL = 60_000  # bytes of stdlib source: enough for both splits, fast to fingerprint


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default cache away from the user's home for every test."""
    cache = tmp_path / "env-cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


def _words(i: int, n: int) -> bytes:
    rng = np.random.default_rng(i)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    return (" ".join(rng.choice(words, size=n)) + "\n").encode()


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    """A folder of 40 text files in nested folders, plus files that must be skipped."""
    root = tmp_path / "texts"
    for i in range(40):
        path = root / f"d{i % 3}" / f"f{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"<{i:02d}>".encode() + _words(i, 60))
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("hidden")
    (root / ".hidden.txt").write_text("hidden")
    (root / "empty.txt").write_bytes(b"")
    return root


def _sig(batch: Tensor) -> str:
    return hashlib.sha1(batch.numpy().tobytes()).hexdigest()[:12]


# -- stdlib source --------------------------------------------------------------------------


def test_stdlib_file_list_is_sorted_relative_and_excludes_packages() -> None:
    files = list_stdlib_files()
    assert files == list_stdlib_files()
    assert files == sorted(files)
    assert "os.py" in files and "json/__init__.py" in files
    assert all(f.endswith(".py") and not f.startswith("/") and "\\" not in f for f in files)
    assert not any("site-packages" in f or "dist-packages" in f for f in files)


def test_split_by_path_hash_is_deterministic_disjoint_and_nonempty() -> None:
    files = list_stdlib_files()
    train, val = split_paths(files, 0.05)
    assert (train, val) == split_paths(reversed(files), 0.05)
    assert not set(train) & set(val)
    assert sorted(train + val) == files
    assert train and val
    assert 0.02 < len(val) / len(files) < 0.1
    # A file's side depends only on its own path, not on the other files.
    assert split_paths(files[:100], 0.05)[1] == [f for f in val if f in files[:100]]


def test_stdlib_cache_is_built_once_and_memory_mapped(tmp_path: Path) -> None:
    first = load_stdlib(cache_dir=tmp_path, max_bytes=SMALL)
    assert first.built and first.vocab_size == 256 and first.eos_id == SEPARATOR
    assert first.directory.parent == tmp_path and first.fingerprint in first.directory.name
    assert (first.directory / "meta.json").is_file()
    assert first.train_tokens > 0 and first.val_tokens > 0
    assert abs(first.train_tokens + first.val_tokens - SMALL) < 100  # about max_bytes
    mtime = (first.directory / "train.bin").stat().st_mtime_ns

    second = load_stdlib(cache_dir=tmp_path, max_bytes=SMALL)
    assert not second.built
    assert second.fingerprint == first.fingerprint
    assert (second.directory / "train.bin").stat().st_mtime_ns == mtime
    assert isinstance(second.train, np.memmap) and second.train.dtype == np.uint8
    assert not second.train.flags.writeable
    np.testing.assert_array_equal(second.train, first.train)
    assert [p.name for p in tmp_path.iterdir()] == [first.directory.name]  # no temp leftovers

    other = load_stdlib(cache_dir=tmp_path, max_bytes=SMALL // 2)
    assert other.fingerprint != first.fingerprint


def test_cache_dir_defaults_to_env_and_rebuilds_a_damaged_entry(_private_cache: Path) -> None:
    corpus = load_stdlib(max_bytes=SMALL)
    assert corpus.directory.parent == _private_cache
    with open(corpus.directory / "val.bin", "r+b") as f:
        f.truncate(3)
    again = load_stdlib(max_bytes=SMALL)
    assert again.built and again.val_tokens == corpus.val_tokens


def test_token_file_pickles_without_its_data(tmp_path: Path) -> None:
    corpus = load_stdlib(cache_dir=tmp_path, max_bytes=SMALL)
    _ = corpus.train_file.array
    clone = pickle.loads(pickle.dumps(corpus.train_file))
    assert len(pickle.dumps(corpus.train_file)) < 1000
    np.testing.assert_array_equal(clone.array, corpus.train)


# -- text source ----------------------------------------------------------------------------


def test_text_single_file_is_split_by_position(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    data = b"".join(_words(i, 50) for i in range(20))
    path.write_bytes(data)
    corpus = load_text(path, cache_dir=tmp_path / "cache", val_fraction=0.1)
    n_val = round(len(data) * 0.1)
    assert bytes(corpus.val) == data[-n_val:]
    assert bytes(corpus.train) == data[:-n_val]
    assert corpus.meta["split"] == "position"

    capped = load_text(path, cache_dir=tmp_path / "cache", val_fraction=0.1, max_bytes=1000)
    assert bytes(capped.train) + bytes(capped.val) == data[:1000]


def test_text_folder_is_split_by_path_and_skips_hidden_and_empty(text_folder: Path) -> None:
    rels = list_text_files(text_folder)
    assert len(rels) == 41 and "d0/f00.txt" in rels and "empty.txt" in rels
    assert not any(r.startswith(".") or "/." in r for r in rels)
    assert list_text_files(text_folder, "*.txt") == ["empty.txt"]

    corpus = load_text(text_folder, cache_dir=text_folder.parent / "cache", val_fraction=0.2)
    assert corpus.meta["split"] == "path_hash"
    train, val = bytes(corpus.train), bytes(corpus.val)
    seen_train = {i for i in range(40) if f"<{i:02d}>".encode() in train}
    seen_val = {i for i in range(40) if f"<{i:02d}>".encode() in val}
    assert seen_train and seen_val and not seen_train & seen_val
    assert seen_train | seen_val == set(range(40))
    assert train.count(bytes([SEPARATOR])) == len(seen_train)  # one separator per document


def test_text_folder_with_too_few_files_falls_back_to_position(tmp_path: Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "a.txt").write_bytes(_words(1, 200))
    (folder / "b.txt").write_bytes(_words(2, 200))
    with pytest.warns(UserWarning, match="splitting the concatenated files by position"):
        corpus = load_text(folder, cache_dir=tmp_path / "cache", val_fraction=0.01)
    assert corpus.meta["split"] == "position" and corpus.val_tokens > 0


def test_fingerprint_is_stable_and_follows_content(text_folder: Path) -> None:
    cache = text_folder.parent / "cache"
    first = load_text(text_folder, cache_dir=cache)
    assert load_text(text_folder, cache_dir=cache).fingerprint == first.fingerprint
    target = text_folder / "d1" / "f01.txt"
    target.write_bytes(target.read_bytes().replace(b"alpha", b"ALPHA", 1))
    changed = load_text(text_folder, cache_dir=cache)
    assert changed.built and changed.fingerprint != first.fingerprint
    assert changed.directory != first.directory


@pytest.mark.parametrize(
    ("kind", "exc", "match"),
    [
        ("missing", FileNotFoundError, r"data\.path='.*nope' does not exist"),
        ("empty_folder", ValueError, r"data\.path='.*hollow' is a folder with no files"),
        ("empty_files", ValueError, r"data\.path='.*blanks'.*every matching file is empty"),
        ("empty_file", ValueError, r"data\.path='.*void\.txt' is an empty file"),
    ],
)
def test_text_bad_paths_raise_naming_the_field(
    tmp_path: Path, kind: str, exc: type[Exception], match: str
) -> None:
    path = {
        "missing": tmp_path / "nope",
        "empty_folder": tmp_path / "hollow",
        "empty_files": tmp_path / "blanks",
        "empty_file": tmp_path / "void.txt",
    }[kind]
    if kind in ("empty_folder", "empty_files"):
        path.mkdir()
    if kind == "empty_files":
        (path / "a.txt").write_bytes(b"")
    if kind == "empty_file":
        path.write_bytes(b"")
    with pytest.raises(exc, match=match):
        load_text(path, cache_dir=tmp_path / "cache")


def test_corpus_too_small_for_a_window_names_seq_len(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_bytes(b"x" * 500)
    dm = LMDataModule("text", path, seq_len=256, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"data\.path='.*tiny\.txt'.*validation split has 25 "):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"seq_len": 0}, ValueError, r"data\.seq_len must be a positive int, got 0"),
        ({"seq_len": True}, ValueError, r"data\.seq_len must be a positive int, got True"),
        ({"batch_size": -1}, ValueError, r"data\.batch_size must be a positive int, got -1"),
        ({"val_batches": 0}, ValueError, r"data\.val_batches must be a positive int"),
        ({"seed": -3}, ValueError, r"data\.seed must be an int >= 0, got -3"),
        ({"num_workers": 1.5}, ValueError, r"data\.num_workers must be an int >= 0, got 1\.5"),
        ({"val_fraction": 1.0}, ValueError, r"data\.val_fraction must be in \(0, 1\), got 1\.0"),
        ({"max_bytes": 0}, ValueError, r"data\.max_bytes must be a positive int, got 0"),
        ({"source": "web"}, ValueError, r"data\.source must be one of .*got 'web'"),
        ({"path": "x"}, ValueError, r"data\.path must be null when data\.source='stdlib'"),
        ({"source": "text"}, ValueError, r"data\.path is required when data\.source='text'"),
        ({"source": "text", "path": "/no/such"}, FileNotFoundError, r"data\.path='/no/such'"),
        ({"source": "hf", "path": "x"}, ValueError, r"data\.tokenizer is required"),
        ({"glob": ""}, ValueError, r"data\.glob must be a non-empty string"),
    ],
)
def test_module_validates_arguments(
    kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        LMDataModule(**kwargs)


# -- batches --------------------------------------------------------------------------------


def test_batches_are_a_pure_function_of_seed_index_and_rank() -> None:
    tokens = np.arange(10_000, dtype=np.uint16) % 251
    args: dict[str, Any] = {"seed": 7, "batch_size": 4, "seq_len": 16}
    batch = sample_batch(tokens, index=5, **args)
    assert batch.shape == (4, 17) and batch.dtype == torch.long
    assert torch.equal(batch, sample_batch(tokens, index=5, **args))
    for row in batch.numpy():  # each row is a real contiguous window
        start = int(np.flatnonzero(tokens == row[0])[0])
        assert any(np.array_equal(tokens[s : s + 17], row) for s in range(start, 10_000, 251))
    others = [
        sample_batch(tokens, index=6, **args),
        sample_batch(tokens, index=5, **{**args, "seed": 8}),
        sample_batch(tokens, index=5, rank=1, world_size=2, **args),
    ]
    assert all(not torch.equal(batch, other) for other in others)
    # Rank r of w at index i is batch i * w + r of the single-process stream.
    for rank in range(3):
        assert torch.equal(
            sample_batch(tokens, index=4, rank=rank, world_size=3, **args),
            sample_batch(tokens, index=4 * 3 + rank, **args),
        )


def test_stream_and_loader_resume_and_workers_match(tmp_path: Path) -> None:
    corpus = load_stdlib(cache_dir=tmp_path, max_bytes=SMALL)
    stream = TrainStream(corpus.train_file, seq_len=32, batch_size=3, seed=1, start=4)
    expected = [corpus.batch_at(i, seq_len=32, batch_size=3, seed=1) for i in range(4, 10)]
    it = iter(stream)
    assert all(torch.equal(next(it), e) for e in expected)

    # A plain loop: the loader's state after 2 batches resumes a fresh loader at batch 2.
    loader = ResumableLoader(TrainStream(corpus.train_file, seq_len=32, batch_size=3, seed=1))
    it2 = iter(loader)
    next(it2), next(it2)
    state = loader.state_dict()
    assert state["next_index"] == 2 and state["seed"] == 1
    fresh = ResumableLoader(TrainStream(corpus.train_file, seq_len=32, batch_size=3, seed=1))
    fresh.load_state_dict(state)
    assert torch.equal(next(iter(fresh)), corpus.batch_at(2, seq_len=32, batch_size=3, seed=1))

    # Two workers deliver the same sequence as one process (each maps the file itself).
    workers = ResumableLoader(
        TrainStream(corpus.train_file, seq_len=32, batch_size=3, seed=1), num_workers=2
    )
    workers.load_state_dict({"next_index": 4})
    got = [b for _, b in zip(range(6), workers, strict=False)]
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))


def test_validation_batches_are_fixed_and_non_overlapping(tmp_path: Path) -> None:
    corpus = load_stdlib(cache_dir=tmp_path, max_bytes=SMALL)
    val = corpus.val_batches(seq_len=64, batch_size=4, num_batches=5)
    assert len(val) == 5 and val[0].shape == (4, 65)
    again = load_stdlib(cache_dir=tmp_path, max_bytes=SMALL).val_batches(
        seq_len=64, batch_size=4, num_batches=5
    )
    assert all(torch.equal(val[i], again[i]) for i in range(5))
    starts = val.starts
    assert len(set(starts.tolist())) == 20 and np.all(np.diff(starts) >= 64)
    assert starts[-1] + 65 <= corpus.val_tokens
    assert list(val_window_starts(100, 10, 3)) == [0, 30, 60]

    with pytest.warns(UserWarning, match="validating on 1 batch"):
        small = ValBatches(np.arange(50, dtype=np.uint8), seq_len=10, batch_size=8, num_batches=3)
    assert len(small) == 1 and small[0].shape == (4, 11)


def test_datamodule_standalone_probe_and_rank(tmp_path: Path) -> None:
    dm = LMDataModule(seq_len=32, batch_size=4, val_batches=3, max_bytes=SMALL, cache_dir=tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab_size == 256 and len(dm.fingerprint) == 16
    assert dm.train_tokens + dm.val_tokens == dm.corpus.train_tokens + dm.corpus.val_tokens
    assert dm.describe()["fingerprint"] == dm.fingerprint
    assert torch.equal(dm.probe_batch(), next(iter(dm.val_dataloader())))
    assert len(dm.val_dataloader()) == 3
    assert torch.equal(next(iter(dm.train_dataloader())), dm.batch_at(0))

    # Under DDP the rank and world size come from the trainer, the position from its loop.
    total = SimpleNamespace(processed=5)
    dm.trainer = SimpleNamespace(  # type: ignore[assignment]
        global_rank=1,
        world_size=2,
        fit_loop=SimpleNamespace(
            epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(total=total))
        ),
    )
    first = next(iter(dm.train_dataloader()))
    assert torch.equal(first, dm.batch_at(5, rank=1, world_size=2))
    assert not torch.equal(first, dm.batch_at(5, rank=0, world_size=2))


# -- hf source ------------------------------------------------------------------------------


class CharTokenizer:
    """A stand-in tokenizer: one id per character, ids 1..299, EOS 0."""

    eos_token_id: int | None = 0
    vocab_size = 300

    def encode(self, text: str) -> list[int]:
        return [1 + ord(c) % 299 for c in text]


def _rows(n: int, offset: int = 0) -> list[dict[str, str]]:
    return [{"text": f"doc {i} " + _words(i, 10).decode(), "id": str(i)} for i in range(offset, n)]


def test_hf_with_stand_ins_tokenizes_joins_with_eos_and_caches(tmp_path: Path) -> None:
    data = {"train": _rows(30), "validation": _rows(35, 30)}
    calls: list[tuple[str, str | None]] = []

    def load(path: str, config: str | None) -> Any:
        calls.append((path, config))
        return data

    kwargs: dict[str, Any] = {"tokenizer": CharTokenizer(), "cache_dir": tmp_path}
    corpus = load_hf("fake/set", config="c1", load_dataset_fn=load, **kwargs)
    assert calls == [("fake/set", "c1")] and corpus.built
    tok = CharTokenizer()
    expected = [t for row in data["train"] for t in [*tok.encode(row["text"]), 0]]
    assert corpus.train.dtype == np.uint16 and corpus.vocab_size == 300
    assert corpus.train.tolist() == expected
    assert corpus.val_tokens == sum(len(r["text"]) + 1 for r in data["validation"])

    again = load_hf("fake/set", config="c1", load_dataset_fn=load, **kwargs)
    assert not again.built and again.fingerprint == corpus.fingerprint
    data["train"][3] = {"text": "changed", "id": "3"}
    assert load_hf("fake/set", config="c1", load_dataset_fn=load, **kwargs).built

    carved = load_hf("x", val_split=None, val_fraction=0.2, load_dataset_fn=load, **kwargs)
    total = sum(len(r["text"]) + 1 for r in data["train"])
    assert carved.train_tokens + carved.val_tokens == total and carved.val_tokens > 0

    with pytest.raises(ValueError, match=r"data\.text_column='body' not found"):
        load_hf("x", text_column="body", load_dataset_fn=load, **kwargs)
    with pytest.raises(ValueError, match=r"data\.val_split='test' not in the dataset's splits"):
        load_hf("x", val_split="test", load_dataset_fn=load, **kwargs)

    dm = LMDataModule(
        "hf", "fake/set", seq_len=8, batch_size=2, val_batches=2, load_dataset_fn=load, **kwargs
    )
    assert dm.vocab_size == 300 and dm.batch_at(0).max() < 300


class DictTokenizer:
    """A stand-in with a fixed character vocabulary: unknown characters raise KeyError,
    as a dict-based tokenizer's would."""

    eos_token_id: int | None = 0
    vocab_size = 300

    def __init__(self, shift: int) -> None:
        self.ids = {c: 1 + (ord(c) + shift) % 299 for c in map(chr, [9, 10, *range(32, 127)])}

    def encode(self, text: str) -> list[int]:
        return [self.ids[c] for c in text]


def test_hf_cache_tells_apart_two_tokenizers_of_one_class(tmp_path: Path) -> None:
    """Neither stand-in encodes the whole probe text (it has non-ASCII characters), yet
    their ids differ: each gets its own cache entry and its own tokens."""
    data = {"train": _rows(20), "validation": _rows(25, 20)}
    kwargs: dict[str, Any] = {"cache_dir": tmp_path, "load_dataset_fn": lambda p, c: data}
    first = load_hf("x", tokenizer=DictTokenizer(0), **kwargs)
    second = load_hf("x", tokenizer=DictTokenizer(7), **kwargs)
    assert first.built and second.built and first.fingerprint != second.fingerprint
    text = data["train"][0]["text"]
    assert second.train[: len(text)].tolist() == DictTokenizer(7).encode(text)
    assert not load_hf("x", tokenizer=DictTokenizer(7), **kwargs).built  # same: cached


class StreamedRows:
    """Rows made on demand. ``lead`` is the most rows of one pass made ahead of the texts
    encoded in it (a loader that lists a split first has made them all)."""

    def __init__(self, n: int) -> None:
        self.n, self.made, self.encoded, self.lead = n, 0, 0, 0
        self.reading = False

    def __iter__(self) -> Iterator[dict[str, str]]:
        self.made = self.encoded = 0
        self.reading = True
        for i in range(self.n):
            self.made += 1
            yield {"text": f"row {i} " + "abc" * (i % 5)}
        self.reading = False


def test_hf_rows_are_streamed_not_listed(tmp_path: Path) -> None:
    from progrow.data.hf import _ENCODE_BATCH

    rows = StreamedRows(3 * _ENCODE_BATCH + 5)

    class Watching(CharTokenizer):
        def encode(self, text: str) -> list[int]:
            if rows.reading:  # encoding this split's texts, not a probe or the other split
                rows.encoded += 1
                rows.lead = max(rows.lead, rows.made - rows.encoded)
            return super().encode(text)

    def load(path: str, config: str | None) -> Any:
        return {"train": rows, "validation": _rows(10)}

    corpus = load_hf("x", tokenizer=Watching(), cache_dir=tmp_path, load_dataset_fn=load)
    assert corpus.train_tokens == sum(len(r["text"]) + 1 for r in StreamedRows(rows.n))
    # Rows are read at most one encoding batch ahead of the tokenizer.
    assert rows.lead > 0, "every row was read before the first one was encoded"
    assert rows.lead <= _ENCODE_BATCH, rows.lead


def test_hf_missing_extra_names_the_install_command() -> None:
    with pytest.raises(ImportError, match=r"pip install 'progrow\[hf\]'"):
        _require("progrow_no_such_module")


_HAS_HF = all(importlib.util.find_spec(m) for m in ("datasets", "transformers", "tokenizers"))


@pytest.mark.skipif(not _HAS_HF, reason="the optional hf extra is not installed")
def test_hf_with_a_local_dataset_and_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chars = sorted({c for r in _rows(40) for c in r["text"]})
    vocab = {"[UNK]": 0, "[EOS]": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]")),
        eos_token="[EOS]",
        unk_token="[UNK]",
    )
    fast.save_pretrained(tmp_path / "tok")
    parts = {"train": _rows(30), "validation": _rows(40, 30)}
    dsets = {k: datasets.Dataset.from_list(v) for k, v in parts.items()}
    datasets.DatasetDict(dsets).save_to_disk(str(tmp_path / "ds"))

    corpus = load_hf(str(tmp_path / "ds"), tokenizer=str(tmp_path / "tok"), cache_dir=tmp_path)
    assert corpus.eos_id == 1 and corpus.vocab_size == len(vocab)
    assert corpus.train.dtype == np.uint8
    first = parts["train"][0]["text"]
    assert corpus.train[: len(first) + 1].tolist() == [vocab[c] for c in first] + [1]
    assert not load_hf(str(tmp_path / "ds"), tokenizer=fast, cache_dir=tmp_path).built


# -- exact resume with a real Trainer -------------------------------------------------------


class _Recorder(L.LightningModule):
    """A tiny LM that records a signature of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(256, 8)
        self.head = nn.Linear(8, 256)
        self.seen: list[str] = []

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        self.seen.append(_sig(batch))
        logits = self.head(self.emb(batch[:, :-1]))
        return F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        logits = self.head(self.emb(batch[:, :-1]))
        self.log("val_loss", F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(
    root: Path,
    cache: Path,
    ckpt_path: str | None = None,
    num_workers: int = 0,
    **trainer_kwargs: Any,
) -> tuple[_Recorder, LMDataModule]:
    dm = LMDataModule(
        seq_len=16,
        batch_size=2,
        val_batches=2,
        max_bytes=SMALL,
        cache_dir=cache,
        num_workers=num_workers,
    )
    model = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=3, save_top_k=-1)],
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, dm


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
@pytest.mark.parametrize(
    ("accumulate", "trainer_kwargs"),
    [
        # Endless stream, validation interleaved (it must not disturb the train position).
        (1, {"max_steps": 7, "val_check_interval": 2, "limit_val_batches": 1}),
        # Accumulation over short epochs: the checkpoint (step 3 = micro-batch 6) lands in
        # the middle of the second epoch, and each epoch must continue the stream.
        (2, {"max_epochs": 3, "limit_train_batches": 4, "limit_val_batches": 0}),
        # Worker processes: their interleaved indices must still form the same sequence.
        (2, {"max_steps": 6, "limit_val_batches": 0, "num_workers": 2}),
    ],
    ids=["steps-val", "accumulate-epochs", "accumulate-workers"],
)
def test_resume_mid_epoch_sees_exactly_the_same_batches(
    tmp_path: Path, accumulate: int, trainer_kwargs: dict[str, Any]
) -> None:
    cache = tmp_path / "cache"
    kwargs = {"accumulate_grad_batches": accumulate, **trainer_kwargs}
    full, dm = _fit(tmp_path / "full", cache, **kwargs)
    expected = [_sig(dm.batch_at(i)) for i in range(len(full.seen))]
    assert full.seen == expected  # the stream continues across epochs and validation
    assert len(full.seen) == (7 if accumulate == 1 else 12)  # micro-batches, not steps

    (ckpt,) = (tmp_path / "full" / "ckpt").glob("*step=3.ckpt")
    saved = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]
    assert saved["combined_loader"][0]["next_index"] == 3 * accumulate

    resumed, _ = _fit(tmp_path / "resumed", cache, ckpt_path=str(ckpt), **kwargs)
    assert resumed.seen == full.seen[3 * accumulate :]
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
