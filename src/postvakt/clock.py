"""The wall clock of limit windows (clock hour, UTC day).

POSTVAKT_CLOCK_OFFSET (seconds, read once at start; default 0) shifts it. It
is a test seam, not a setting: a test of an hourly limit moves the clock to
a few minutes past the hour, so that the test cannot straddle HH:00 and see
its counters reset half way.
"""

from __future__ import annotations

import os
import time

OFFSET = float(os.environ.get("POSTVAKT_CLOCK_OFFSET", "0") or 0)


def now() -> float:
    return time.time() + OFFSET
