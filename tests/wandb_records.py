"""Read the history steps of an offline W&B run (its ``run-<id>.wandb`` file).

The file is a LevelDB-style record log: a 7-byte header (``:W&B``, a 2-byte magic, a
version byte), then 32 KiB blocks of records, each with a 7-byte header (CRC-32, length,
type: full, first, middle, last) and a protobuf ``Record`` as payload. wandb no longer
ships a Python reader for it, so the tests carry this one.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    out: list[bytes] = []
    partial = b""
    pos = HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:  # zero padding up to the block's end
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if kind == FULL:
            out.append(payload)
        elif kind == FIRST:
            partial = payload
        elif kind == MIDDLE:
            partial += payload
        elif kind == LAST:
            out.append(partial + payload)
            partial = b""
    return out


def history(run_dir: Path) -> list[dict[str, Any]]:
    """Every history row of the offline run in ``run_dir``, as ``{key: value}``."""
    import json

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    rows = []
    for payload in records(path):
        record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]  # generated
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})  # fmt: skip
    return rows


def trainer_steps(run_dir: Path) -> list[int]:
    """The ``trainer/global_step`` values Lightning logged to the run, in order."""
    return [int(r["trainer/global_step"]) for r in history(run_dir) if "trainer/global_step" in r]


def record_types(run_dir: Path) -> list[str]:
    """The kind of every record (``history``, ``exit``, ...) of the run in ``run_dir``."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    kinds = []
    for payload in records(path):
        record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]  # generated
        record.ParseFromString(payload)
        kinds.append(str(record.WhichOneof("record_type")))
    return kinds
