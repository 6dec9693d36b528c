"""``python -m model.training``: the clip-train command line (see model/training/loop.py)."""

import sys

from .loop import main

sys.exit(main())
