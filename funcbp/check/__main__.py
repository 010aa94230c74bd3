"""``python -m funcbp.check``: the same as ``funcbp check``."""

import sys

from funcbp.check.cli import main_check

sys.exit(main_check())
