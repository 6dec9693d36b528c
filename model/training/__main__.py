"""``python -m model.training``: the clip-train command line (model/training/cli.py)."""

import sys

from .cli import main

sys.exit(main())
