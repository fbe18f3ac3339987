"""The training application behind ``python -m progrow.train``: typed run settings built
from the Hydra config, device and checkpoint checks, W&B extras and the final summary.

Only :mod:`progrow.train` sees a ``DictConfig``; it converts it with
:meth:`progrow.app.settings.RunSettings.from_config` and everything here takes plain,
typed values.
"""

from progrow.app.errors import ConfigError
from progrow.app.settings import RunSettings

__all__ = ["ConfigError", "RunSettings"]
