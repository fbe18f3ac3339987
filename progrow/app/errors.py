"""The app's error for a configuration that cannot work (the bottom of the app's layers:
every other app module may import it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the value."""
