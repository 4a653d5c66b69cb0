"""Delivery tests: helpers importable as plain modules, and smtp-sink peers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from sink_fixture import smtp_sink  # noqa: E402,F401
