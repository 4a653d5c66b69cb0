"""One running server per queue directory.

The queue is a node's own (qmail's rule: queue state is which files exist, and
only one manager may move them). Two servers on one queue directory, two nodes
on a shared mount or a second `postvakt serve` started by mistake, would each
deliver what the other accepted and recover each other's work in progress. So
`serve` takes an exclusive flock on queue_dir/serve.lock for its lifetime and
refuses to start when another holds it, naming the holder (pid and host) that
the file records. The kernel drops the lock when the holder dies, however it
dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket

from postvakt.config import Config, ConfigError

LOCK_NAME = "serve.lock"


def lock_queue_dir(config: Config) -> int:
    """The descriptor that holds the lock (keep it open while serving)."""
    root = config.queue_root
    key = "queue_dir" if config.queue_dir is not None else "data_dir"
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ConfigError(
            config.source, key, f"cannot open the queue lock in {root}: {e.strerror or e}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 200, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f" (pid {holder.replace(' ', ' on host ', 1)})" if holder else ""
        raise ConfigError(
            config.source,
            key,
            f"the queue directory {root} is in use by another postvakt serve{who};"
            " every server (every node) needs a queue directory of its own",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd
