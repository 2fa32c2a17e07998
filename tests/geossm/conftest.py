"""Puts tests/geossm on sys.path so the helper module ``toy_task`` imports everywhere."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
