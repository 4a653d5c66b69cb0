"""This process's id, read once, and again in a forked child.

With glibc, `os.getpid()` is a system call every time; the queue ids and the
Maildir file names take it for every message.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def current() -> int:
    return _pid


def _refresh() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh)
