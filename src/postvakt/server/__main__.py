"""`python -m postvakt.server --role queue-manager|worker`: the processes the front starts.

The front (`postvakt serve`, `server/main.py`) starts the queue manager
(`manager_process`) and, with `[server] workers`, the front workers
(`workers`), with its own config file; never by hand. They start here and not
through the `postvakt` command, whose every command module (and what each
imports: the DKIM tools, the diagnostics, the TLS checks) a child would carry
for its whole life, and each role imports what it runs only once the role is
chosen below: the queue manager never loads the SMTP, POP3 and TLS front.

Errors are one line, as the command's are: exit code 2 for a config that
cannot be used, 1 for a directory that cannot be opened.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from postvakt import config as config_mod
from postvakt.config import Config, ConfigError
from postvakt.directory import DirectoryError, DirectoryUnavailable, SchemaError
from postvakt.server.process import run_process

ROLES = ("queue-manager", "worker")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m postvakt.server")
    ap.add_argument("--role", choices=ROLES, required=True)
    ap.add_argument(
        "--config", type=Path, help="the front's config file (none: the embedded default)"
    )
    ap.add_argument("--wake-fd", type=int, help="queue manager: the front's wake-up pipe")
    ap.add_argument("--worker-spec", help="worker: its sockets and pipes (JSON)")
    args = ap.parse_args(argv)
    if args.role == "queue-manager" and args.wake_fd is None:
        ap.error("--role queue-manager needs --wake-fd")
    if args.role == "worker" and args.worker_spec is None:
        ap.error("--role worker needs --worker-spec")
    try:
        config = config_mod.load(args.config) if args.config else config_mod.embedded_default()
        return run_role(args.role, config, args.config, args.wake_fd, args.worker_spec)
    except ConfigError as e:
        print(f"postvakt: {e}", file=sys.stderr)
        return 2
    except (DirectoryError, DirectoryUnavailable, SchemaError) as e:
        print(f"postvakt: {e}", file=sys.stderr)
        return 1


def run_role(
    role: str, config: Config, path: Path | None, wake_fd: int | None, worker_spec: str | None
) -> int:
    if role == "queue-manager":
        assert wake_fd is not None
        # Here, for this role only: the queue manager (and, inside it, the
        # delivery stack) without the command line's and the front's modules:
        # the manager at rest 33.5 -> 23.4 MB PSS (measured, bench/run.py --only idle).
        from postvakt.server.manager_process import run_queue_manager

        return run_process(config, lambda: run_queue_manager(config, path, wake_fd))
    assert worker_spec is not None
    # Here, for this role only: a worker is a front, with its whole stack.
    from postvakt.server.workers import run_worker

    return run_process(config, lambda: run_worker(config, path, worker_spec))


if __name__ == "__main__":
    sys.exit(main())
