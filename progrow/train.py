"""``python -m progrow.train``: runs the training application, :mod:`progrow.app.train`.

This module is only the command-line entry point (``python -m`` needs a module at this
path); the application itself lives in :mod:`progrow.app`.
"""

from progrow.app.train import main

if __name__ == "__main__":
    main()
