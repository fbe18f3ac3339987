"""``python -m progrow.plan``: runs the planner, :mod:`progrow.app.plan` (``progrow-plan``).

This module is only the command-line entry point; the planner lives in :mod:`progrow.app`.
"""

import sys

from progrow.app.plan import main

if __name__ == "__main__":
    sys.exit(main())
