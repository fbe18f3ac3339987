"""Byte-level sources: the Python standard library's own source, and any text file or folder.

Both tokenize as raw bytes (``vocab_size`` 256) and join documents with a NUL byte, which
plain text and Python source never contain, so it works as an end-of-document token.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from progrow.data.cache import read_entry, resolve_cache_dir, token_dtype, write_entry
from progrow.data.corpus import (
    DEFAULT_VAL_FRACTION,
    Corpus,
    corpus_from_entry,
    hash_unit,
    split_paths,
)

BYTE_VOCAB = 256
SEPARATOR = 0
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
_READ_CHUNK = 1 << 22


def stdlib_root() -> Path:
    """The folder of this interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_stdlib_files(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Sorted relative POSIX paths of the standard library's ``*.py`` files.

    Third-party packages (``site-packages``, ``dist-packages``) are pruned, so the corpus
    depends only on the Python version, not on what happens to be installed.
    """
    base = Path(root) if root is not None else stdlib_root()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
        rel_dir = Path(dirpath).relative_to(base)
        found.extend((rel_dir / name).as_posix() for name in filenames if name.endswith(".py"))
    return sorted(found)


def list_text_files(folder: str | os.PathLike[str], pattern: str = "**/*") -> list[str]:
    """Sorted relative POSIX paths of the regular files in ``folder`` matching ``pattern``.

    Hidden files and anything under a hidden folder (``.git``, ``.cache``, ...) are
    skipped. ``pattern`` is a :meth:`pathlib.Path.glob` pattern: ``**/*.txt`` recurses,
    ``*.txt`` does not.
    """
    base = Path(folder)
    rels = set()
    for path in base.glob(pattern):
        rel = path.relative_to(base)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        rels.add(rel.as_posix())
    return sorted(rels)


@dataclass(frozen=True)
class _Piece:
    """A byte range of one file, or a separator byte when ``path`` is ``None``."""

    rel: str
    path: Path | None
    offset: int
    length: int

    def read(self) -> Iterable[bytes]:
        if self.path is None:
            yield bytes([SEPARATOR]) * self.length
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            left = self.length
            while left > 0:
                chunk = f.read(min(left, _READ_CHUNK))
                if not chunk:
                    raise OSError(f"{self.path} shrank while being read")
                left -= len(chunk)
                yield chunk


def _separator() -> _Piece:
    return _Piece("", None, 0, 1)


def _take(pieces: Sequence[_Piece], budget: int) -> list[_Piece]:
    """The first ``budget`` bytes of ``pieces``, truncating the piece that crosses it."""
    kept = []
    for piece in pieces:
        if budget <= 0:
            break
        if piece.length > budget:
            piece = _Piece(piece.rel, piece.path, piece.offset, budget)
        kept.append(piece)
        budget -= piece.length
    return kept


def _cut(pieces: Sequence[_Piece], position: int) -> tuple[list[_Piece], list[_Piece]]:
    """Split ``pieces`` at byte ``position`` of their concatenation."""
    left, right = [], []
    for piece in pieces:
        if position >= piece.length:
            left.append(piece)
        elif position <= 0:
            right.append(piece)
        else:
            left.append(_Piece(piece.rel, piece.path, piece.offset, position))
            right.append(
                _Piece(piece.rel, piece.path, piece.offset + position, piece.length - position)
            )
        position -= piece.length
    return left, right


def _docs(root: Path, rels: Iterable[str], sizes: Mapping[str, int]) -> list[_Piece]:
    """Each file followed by a separator, in the order given."""
    pieces = []
    for rel in rels:
        pieces += [_Piece(rel, root / rel, 0, sizes[rel]), _separator()]
    return pieces


def _budgeted(rels: Sequence[str], sizes: Mapping[str, int], budget: int) -> list[str]:
    """A deterministic pseudo-random subset of ``rels`` with about ``budget`` bytes, sorted.

    Files are taken in an order fixed by a salted path hash (independent of the split hash,
    so the subset is not biased within a split) until the budget is reached.
    """
    chosen, total = [], 0
    for rel in sorted(rels, key=lambda r: (hash_unit(r, "progrow-order:"), r)):
        if total >= budget:
            break
        chosen.append(rel)
        total += sizes[rel] + 1
    return sorted(chosen)


def _plan_folder(
    root: Path, rels: Sequence[str], val_fraction: float, max_bytes: int | None, where: str
) -> tuple[list[_Piece], list[_Piece], str]:
    sizes = {rel: (root / rel).stat().st_size for rel in rels}
    rels = [rel for rel in rels if sizes[rel] > 0]
    if not rels:
        raise ValueError(f"{where}: every matching file is empty (0 bytes)")
    train_rels, val_rels = split_paths(rels, val_fraction)
    if train_rels and val_rels:
        if max_bytes is not None:
            val_budget = max(1, round(max_bytes * val_fraction))
            val_rels = _budgeted(val_rels, sizes, val_budget)
            train_rels = _budgeted(train_rels, sizes, max(1, max_bytes - val_budget))
            train = _take(_docs(root, train_rels, sizes), max(1, max_bytes - val_budget))
            return train, _take(_docs(root, val_rels, sizes), val_budget), "path_hash"
        return _docs(root, train_rels, sizes), _docs(root, val_rels, sizes), "path_hash"
    # Too few files for the hash to put some on each side: split the stream by position.
    warnings.warn(
        f"{where}: the path-hash split with data.val_fraction={val_fraction} left a split "
        f"without files ({len(rels)} file(s)); splitting the concatenated files by position",
        stacklevel=3,
    )
    return (*_position_split(_docs(root, rels, sizes), val_fraction, max_bytes), "position")


def _position_split(
    pieces: Sequence[_Piece], val_fraction: float, max_bytes: int | None
) -> tuple[list[_Piece], list[_Piece]]:
    if max_bytes is not None:
        pieces = _take(pieces, max_bytes)
    total = sum(p.length for p in pieces)
    return _cut(pieces, total - max(1, round(total * val_fraction)))


def _fingerprint(header: Mapping[str, Any], splits: Mapping[str, Sequence[_Piece]]) -> str:
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode("utf-8"))
    for name, pieces in splits.items():
        digest.update(f"\0split:{name}\0".encode())
        for piece in pieces:
            digest.update(f"\0{piece.rel}\0{piece.offset}\0{piece.length}\0".encode())
            for chunk in piece.read():
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _writer(pieces: Sequence[_Piece]) -> Any:
    def write(f: BinaryIO) -> int:
        count = 0
        for piece in pieces:
            for chunk in piece.read():
                f.write(chunk)
                count += len(chunk)
        return count

    return write


def _load_pieces(
    kind: str,
    train: Sequence[_Piece],
    val: Sequence[_Piece],
    params: Mapping[str, Any],
    cache_dir: str | os.PathLike[str] | None,
) -> Corpus:
    """Fingerprint the planned splits, then open their cache entry, building it if needed."""
    header = {"format": "progrow-bytes-v1", "kind": kind, "separator": SEPARATOR, **params}
    fingerprint = _fingerprint(header, {"train": train, "val": val})
    entry = resolve_cache_dir(cache_dir) / f"{kind}-{fingerprint}"
    opened = read_entry(entry)
    built = opened is None
    if opened is None:
        meta = {
            **header,
            "fingerprint": fingerprint,
            "vocab_size": BYTE_VOCAB,
            "eos_id": SEPARATOR,
            "tokenizer": "bytes",
            "files": {
                "train": len({p.rel for p in train if p.path is not None}),
                "val": len({p.rel for p in val if p.path is not None}),
            },
        }
        writers = {"train": _writer(train), "val": _writer(val)}
        opened = write_entry(entry, token_dtype(BYTE_VOCAB), writers, meta)
    return corpus_from_entry(entry, *opened, built=built)


def load_stdlib(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    max_bytes: int | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Corpus:
    """The Python standard library's own source as a byte-level corpus.

    Args:
        cache_dir: Cache folder (default: ``$PROGROW_CACHE`` or ``~/.cache/progrow``).
        val_fraction: Share of files (by path hash) held out for validation.
        max_bytes: If set, keep about this many bytes, chosen deterministically, with
            ``val_fraction`` of them from validation files; for quick test runs.
        root: The library folder (default: this interpreter's).

    Returns:
        The cached corpus; its fingerprint changes with the Python version.
    """
    base = Path(root) if root is not None else stdlib_root()
    rels = list_stdlib_files(base)
    if not rels:
        raise FileNotFoundError(f"no *.py files found in the standard library at {base}")
    where = f"data.source='stdlib' ({base})"
    train, val, mode = _plan_folder(base, rels, val_fraction, max_bytes, where)
    params = {"val_fraction": val_fraction, "max_bytes": max_bytes, "split": mode}
    return _load_pieces("stdlib", train, val, params, cache_dir)


def load_text(
    path: str | os.PathLike[str],
    *,
    glob: str = "**/*",
    cache_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    max_bytes: int | None = None,
) -> Corpus:
    """A text file, or a folder of files, as a byte-level corpus.

    A single file is split by position (its last ``val_fraction`` of bytes is validation);
    a folder by path hash, falling back to position when it has too few files for that.

    Args:
        path: The file or folder.
        glob: For a folder, which files to read (hidden ones are always skipped).
        cache_dir: Cache folder (default: ``$PROGROW_CACHE`` or ``~/.cache/progrow``).
        val_fraction: Share held out for validation.
        max_bytes: If set, keep only about this many bytes, chosen deterministically.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` holds no matching files, or only empty ones.
    """
    root = Path(path).expanduser()
    where = f"data.path={str(path)!r}"
    if not root.exists():
        raise FileNotFoundError(f"{where} does not exist")
    if root.is_dir():
        rels = list_text_files(root, glob)
        if not rels:
            raise ValueError(f"{where} is a folder with no files matching data.glob={glob!r}")
        train, val, mode = _plan_folder(root, rels, val_fraction, max_bytes, where)
    else:
        size = root.stat().st_size
        if size == 0:
            raise ValueError(f"{where} is an empty file (0 bytes)")
        pieces = [_Piece(root.name, root, 0, size)]
        train, val = _position_split(pieces, val_fraction, max_bytes)
        mode = "position"
    if not train or not val:
        raise ValueError(f"{where} is too small to split with data.val_fraction={val_fraction}")
    params = {"val_fraction": val_fraction, "max_bytes": max_bytes, "split": mode}
    return _load_pieces("text", train, val, params, cache_dir)
