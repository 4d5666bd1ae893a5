"""The shipper tests share helpers (ship_helpers.py); importlib import mode needs its dir on the path."""

from __future__ import annotations

import sys
from pathlib import Path

_here = str(Path(__file__).parent)
if _here not in sys.path:
    sys.path.insert(0, _here)
