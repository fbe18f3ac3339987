"""The composed Hydra config read as plain values, and the checks every section of it
goes through; each error is a :class:`ConfigError` that names the key and its value."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from progrow.app.errors import ConfigError

#: The configs: top-level ``conf/`` of the repository this package sits in.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Resolve ``cfg`` into plain dicts and lists; a ``???`` left unset names its key."""
    try:
        out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or str(err)
        raise ConfigError(
            f"{key}=???: this key is required, set it on the command line "
            f"(e.g. `python -m progrow.train ... {key}=VALUE`)"
        ) from None
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def positive_int(key: str, value: Any) -> int:
    """``value`` of config key ``key`` as an int, if it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(f"{key}={value!r}: must be a positive integer")
    return int(value)


def section_of(raw: dict[str, Any], key: str) -> dict[str, Any]:
    """A copy of the mapping ``raw[key]``; empty if unset or ``null``."""
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}={value!r}: must be a mapping")
    return dict(value)


def check_keys(section: str, given: dict[str, Any], known: set[str]) -> None:
    """Refuse keys of ``given`` (config section ``section``) that are not in ``known``."""
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(
            f"{section}: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )


def optional_path(key: str, value: Any) -> Path | None:
    """``value`` of config key ``key`` as a path; ``None`` if ``null``."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}={value!r}: must be a folder path or null")
    return Path(value)
