"""Shared pytest setup: put `src` on sys.path so tests import copilot, devtools and bbs_double."""

import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parent.parent / "src"
if str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))
