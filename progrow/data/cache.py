"""On-disk token cache: one folder per corpus fingerprint, holding memory-mapped token files.

An entry is ``<cache_dir>/<kind>-<fingerprint>/`` with ``train.bin``, ``val.bin`` (raw token
ids, native byte order) and ``meta.json``. Entries are built in a temporary sibling folder and
renamed into place, so a crash or a concurrent builder never leaves a half-written entry that
a later run would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

CACHE_ENV = "PROGROW_CACHE"
FORMAT_VERSION = 1
META_NAME = "meta.json"
SPLITS = ("train", "val")


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: the argument, else ``$PROGROW_CACHE``, else ``~/.cache/progrow``."""
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "progrow"


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """The smallest unsigned integer dtype that holds every id below ``vocab_size``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32 token files")


class TokenFile:
    """A read-only token array on disk, memory-mapped on first use in each process.

    Pickling drops the mapping (a pickled ``np.memmap`` would copy the whole corpus into
    every DataLoader worker); the worker maps the file again on first access.

    Args:
        path: The raw token file.
        dtype: Its element type.
        length: Its number of tokens.
    """

    def __init__(self, path: str | os.PathLike[str], dtype: Any, length: int) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.length = int(length)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        """The tokens, as a read-only ``np.memmap``."""
        if self._array is None:
            self._array = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.length,))
        return self._array

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None
        return state

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, dtype={self.dtype.name}, length={self.length})"


TokenSource = np.ndarray | TokenFile
"""Tokens given either in memory or as a :class:`TokenFile`."""


def as_array(tokens: TokenSource) -> np.ndarray:
    """The 1-D token array behind ``tokens``."""
    return tokens.array if isinstance(tokens, TokenFile) else tokens


def read_entry(entry: Path) -> tuple[dict[str, Any], dict[str, TokenFile]] | None:
    """Open a cache entry, or return ``None`` if it is absent or not a complete entry."""
    try:
        meta = json.loads((entry / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        return None
    try:
        dtype = np.dtype(meta["dtype"])
        files = {}
        for split in SPLITS:
            length = int(meta["tokens"][split])
            path = entry / f"{split}.bin"
            # A size check catches truncation that survived outside our atomic writer.
            if path.stat().st_size != length * dtype.itemsize:
                return None
            files[split] = TokenFile(path, dtype, length)
    except (KeyError, TypeError, ValueError, OSError):
        return None
    return meta, files


TokenWriter = Callable[[BinaryIO], int]
"""Writes one split's tokens to an open binary file and returns how many it wrote."""


def write_entry(
    entry: Path,
    dtype: np.dtype[Any],
    writers: Mapping[str, TokenWriter],
    meta: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, TokenFile]]:
    """Build a cache entry atomically and open it.

    Args:
        entry: The entry folder to create.
        dtype: Element type of the token files; recorded in the metadata.
        writers: One writer per split in :data:`SPLITS`.
        meta: Extra metadata to record (must be JSON-serializable).

    Returns:
        The entry's metadata and token files, as :func:`read_entry` gives them.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    if entry.exists() and read_entry(entry) is None:
        # Not written by this code's atomic path (or an older format): rebuild it.
        shutil.rmtree(entry, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        counts = {}
        for split in SPLITS:
            with open(tmp / f"{split}.bin", "wb") as f:
                counts[split] = int(writers[split](f))
                f.flush()
                os.fsync(f.fileno())
        full = {**meta, "format_version": FORMAT_VERSION, "dtype": dtype.name, "tokens": counts}
        (tmp / META_NAME).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        try:
            os.replace(tmp, entry)
        except OSError:
            # A concurrent builder renamed first; its entry has the same fingerprint.
            if read_entry(entry) is None:
                raise
        _fsync_dir(entry.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    opened = read_entry(entry)
    if opened is None:
        raise OSError(f"cache entry {entry} is unreadable right after writing it")
    return opened


def _fsync_dir(path: Path) -> None:
    # Makes the rename durable across a power loss; not every filesystem supports it.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
