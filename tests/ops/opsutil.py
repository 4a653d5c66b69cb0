"""Helpers for the operations tests: wait on log lines, run commands under a lax umask."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from support import Running


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_log(srv: Running, text: str, count: int = 1, timeout: float = 30.0) -> None:
    wait_until(lambda: srv.log().count(text) >= count, f"{text!r} x{count} in the log", timeout)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """Children started meanwhile inherit this mask (what a careless shell would have)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def others_may(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IRWXO)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
