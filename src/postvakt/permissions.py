"""Who may read postvakt's files: the umask every process sets, and the check of modes.

The data directory holds password hashes (directory.sqlite3 and SQLite's
-wal/-shm side files), logins and addresses (grants, counters, login
failures), private keys (the self-signed TLS key, DKIM keys) and mail. None
of it is anyone else's business on the machine: files are created 0600/0640
and directories 0750 (umask 027, set by `serve` and by every CLI command
before any file is made; SQLite creates its side files with the same mode as
the database, less the umask). The group bit lets an admin's group (or
Dovecot running as the server's group) read without making anything
world-readable.

`loose_modes` finds what is readable, writable or searchable by others: a
data directory from an older version (0755), a key copied with `cp` under a
lax umask. `serve` and the CLI warn once per run; `postvakt check` reports
the same findings as errors.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from postvakt.config import Config

# Owner everything, group read (and search), others nothing: Postfix's and
# maddy's (UMask=0007 in its unit) practice for private server files.
SERVER_UMASK = 0o027
# The loosest a private directory or file may be.
DIR_MODE = 0o750
FILE_MODE = 0o640
# What "others" may never have on these files.
OTHERS = stat.S_IRWXO


def set_umask() -> int:
    """Make every file this process creates private from the start; returns the old mask."""
    return os.umask(SERVER_UMASK)


@dataclass(frozen=True)
class Finding:
    path: Path
    mode: int
    want: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def line(self) -> str:
        """One line naming the file, what is wrong and the command that fixes it."""
        kind = "directory" if self.is_dir else "file"
        perm = stat.S_IMODE(self.mode)
        fixed = stat.S_IMODE(self.mode) & ~OTHERS & self.want
        return (
            f"{self.path}: {kind} mode {perm:04o} lets every local user in"
            f" (fix: chmod {fixed:o} {self.path})"
        )


def private_paths(config: Config) -> Iterator[Path]:
    """The directories and files that must be closed to others, those that exist."""
    tls_dir = config.data_dir / "tls"
    for d in (config.data_dir, config.queue_root, config.mail_root, tls_dir, config.dkim_key_dir):
        if d.is_dir():
            yield d
    # Every file of the data directory itself holds secrets or personal data.
    for d in (config.data_dir, tls_dir, config.dkim_key_dir):
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for p in entries:
            if p.is_file() and not p.is_symlink():
                yield p
    if config.tls.key is not None and config.tls.key.exists():
        yield config.tls.key


def loose_modes(config: Config) -> list[Finding]:
    """Every private path that others may read, write or enter, once each."""
    seen: set[Path] = set()
    out: list[Finding] = []
    for p in private_paths(config):
        try:
            real = p.resolve()
            st = real.stat()
        except OSError:
            continue
        if real in seen:
            continue
        seen.add(real)
        if st.st_mode & OTHERS:
            want = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
            out.append(Finding(p, st.st_mode, want))
    return out
