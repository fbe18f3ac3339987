"""The run summary (``summary.json``) as one typed record, :class:`RunRecord`.

``python -m progrow.train`` builds a :class:`RunRecord` at the end of a run and writes
:meth:`RunRecord.to_dict` to the run folder; ``progrow-report`` reads it back with
:meth:`RunRecord.read`. The file carries :data:`SUMMARY_SCHEMA`: a reader refuses a file
of another version, or of none (written before summaries had one), instead of guessing
what its keys meant, so that every reader sees exactly the fields declared here.

Example:
    >>> record = RunRecord(
    ...     growth="none", seed=0, val_loss=2.5, events=[], flops=1e9, budget_flops=None,
    ...     tokens=1000, train_s=1.0, max_steps=10, params_start=100,
    ...     sizes_start={"d_model": 8}, params=100, sizes={"d_model": 8}, global_step=10,
    ...     wall_s=2.0, wall_s_total=2.0, fit_s=1.5, output_dir="run", ckpt_dir="run/ckpt",
    ...     last_ckpt=None, log_dirs=[], loggers=[], resumed_from=None, fingerprint="ab12",
    ...     report_dir="run", hf_export=None, compile=None)
    >>> data = record.to_dict()
    >>> data["schema"], RunRecord.from_dict(data) == record
    (1, True)
    >>> old = {key: value for key, value in data.items() if key != "schema"}
    >>> RunRecord.from_dict(old, "run/summary.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    progrow.app.run_summary.SummaryError: run/summary.json: no 'schema' key (written by ...
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from progrow.events import GrowthEvent, events_from_dicts

SUMMARY_FILE = "summary.json"
#: Version of :class:`RunRecord`'s dict form; raise it with any change of its keys or of
#: what they mean, so that files written before are refused instead of misread.
SUMMARY_SCHEMA = 1

_REGENERATE = (
    "To regenerate it, move it away and rerun the run's command with "
    "`hydra.run.dir=<run folder> ckpt_path=auto` (it resumes from checkpoints/last.ckpt "
    "and writes a new summary); with the file moved away, progrow-report reads the run "
    "from its CSV metrics and .hydra/config.yaml, as a run still in progress."
)


class SummaryError(ValueError):
    """A ``summary.json`` this progrow does not read: another schema, missing or unknown
    keys, not JSON."""


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What one finished launch of the training app records (``summary.json``).

    Growth events are typed (:class:`~progrow.events.GrowthEvent`); the entries of
    ``loggers`` and ``compile`` stay plain dicts, as written.
    """

    schema: int = field(default=SUMMARY_SCHEMA, init=False)
    """:data:`SUMMARY_SCHEMA`: the version of this record's dict form."""
    growth: str
    """Growth schedule name (``none``: fixed size)."""
    seed: int
    val_loss: float | None
    """Final validation loss (``None``: nothing validated)."""
    events: list[GrowthEvent]
    """The growth events, in order."""
    flops: float
    """Training FLOPs (:mod:`progrow.flops`), resumed attempts included."""
    budget_flops: float | None
    """The compute budget the run's ``max_steps`` was derived from (``None``: none)."""
    tokens: int
    """Training tokens, all ranks, resumed attempts included."""
    train_s: float
    """Training seconds (``time/train_s``: no validation), resumed attempts included."""
    max_steps: int
    params_start: int
    """Parameters of the starting model."""
    sizes_start: dict[str, int]
    """Growable sizes of the starting model."""
    params: int
    """Parameters at the end."""
    sizes: dict[str, int]
    """Growable sizes at the end."""
    global_step: int
    wall_s: float
    """Wall time of this launch, data loading included."""
    wall_s_total: float
    """Wall time of every launch that finished in this run folder, this one included."""
    fit_s: float
    """Seconds of this launch's ``trainer.fit``."""
    output_dir: str
    """The run folder."""
    ckpt_dir: str
    last_ckpt: str | None
    """The checkpoint of the final state (``None``: no checkpointing)."""
    log_dirs: list[str]
    """The loggers' folders."""
    loggers: list[dict[str, Any]]
    """Per logger with a folder: ``logger`` (``csv``, ``wandb``, ...), ``dir``, and for a
    W&B service that died mid-run ``lost_at_step`` and ``error``."""
    resumed_from: str | None
    """The checkpoint this launch resumed from."""
    fingerprint: str
    """Of the token data."""
    report_dir: str
    """What to give ``progrow-report``: the sweep folder in a multirun, else the run's."""
    hf_export: str | None
    """The Hugging Face model folder exported to (``hf.export_to``)."""
    compile: list[dict[str, Any]] | None
    """With ``compile`` set, per size (the start, then each growth): ``step``, ``sizes``,
    ``graphs`` compiled and ``first_step_s`` (compile included)."""

    def to_dict(self) -> dict[str, Any]:
        """The plain form written to ``summary.json`` (``schema`` first)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "summary") -> RunRecord:
        """Inverse of :meth:`to_dict`; ``source`` names the data in the errors.

        Raises:
            SummaryError: ``data`` is not of schema :data:`SUMMARY_SCHEMA` or lacks or
                adds keys; the message names ``source``, both schemas and how to
                regenerate the file.
        """
        if not isinstance(data, Mapping):
            raise SummaryError(f"{source}: not a run summary (a JSON object). {_REGENERATE}")
        _check_schema(data, source)
        keys = {f.name for f in dataclasses.fields(cls) if f.init}
        missing, unknown = sorted(keys - set(data)), sorted(set(data) - keys - {"schema"})
        if missing or unknown:
            raise SummaryError(
                f"{source}: not a summary of schema {SUMMARY_SCHEMA}: missing keys {missing}, "
                f"unknown keys {unknown}. {_REGENERATE}"
            )
        try:
            events = events_from_dicts(data["events"])
        except (TypeError, ValueError) as err:
            raise SummaryError(f"{source}: events: {err}. {_REGENERATE}") from None
        return cls(**{**{key: data[key] for key in keys}, "events": events})

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        """The record in ``path`` (a ``summary.json``); see :meth:`from_dict`."""
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SummaryError(f"{path}: not JSON ({err}). {_REGENERATE}") from None
        return cls.from_dict(data, path)

    def write(self, path: Path) -> None:
        """Write :meth:`to_dict` to ``path`` as JSON (its folder created if needed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _check_schema(data: Mapping[str, Any], source: str | Path) -> None:
    if "schema" not in data:
        raise SummaryError(
            f"{source}: no 'schema' key (written by a progrow from before summaries had "
            f"one); this progrow reads summary schema {SUMMARY_SCHEMA} only. {_REGENERATE}"
        )
    found = data["schema"]
    if isinstance(found, bool) or found != SUMMARY_SCHEMA:
        raise SummaryError(
            f"{source}: summary schema {found!r}; this progrow reads summary schema "
            f"{SUMMARY_SCHEMA} only. {_REGENERATE}"
        )
