"""A small file system that a test can fill: a tmpfs mounted on a temp dir.

Full-disk paths (ENOSPC) are real only on a real full file system. Mounting
needs root; without it the tests that need one skip and say so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_fs(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of `size` on `path`, unmounted afterwards whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("a full file system is made by mounting a tmpfs, which needs root")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs on {path}: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write a file in `path` until the file system is full; returns it (unlink to free)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block = b"\0" * 65536
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError:
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    return filler
