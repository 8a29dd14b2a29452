"""The Home Assistant tests run kilowatch in-process with the service tests' helpers."""

from __future__ import annotations

import sys
from pathlib import Path

# importlib import mode: make tests/service/svchelpers.py importable here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
