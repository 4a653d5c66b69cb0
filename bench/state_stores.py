"""Durable accept with `[store] state` in SQLite and in Redis, beside Postfix.

One run starts a private Postfix instance, a private redis-server on a free
port of 127.0.0.1 (no persistence, like a cache of expiring state) and two
postvakt servers that differ only in `[store] state`: "sqlite" and
"redis://127.0.0.1:PORT/0". Both postvakt servers count every message against a
`[limits.networks]` quota far above the run (loopback is otherwise exempt) and
keep POP-before-SMTP on, so that each MAIL and RCPT reads the state store and
each accepted message writes to it. The scenarios are bench/run.py's durable
accept runs (smtp-source, 50 sessions, 1 KiB), alternating the three servers;
see bench/README.md.

    python3 bench/state_stores.py                 # 1000 messages, twice each
    python3 bench/state_stores.py --messages 300 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import run
from run import (
    USER,
    WARMUP_MESSAGES,
    BenchError,
    Postfix,
    Postvakt,
    Row,
    Sink,
    check_tools,
    cpu_row,
    filesystem,
    free_port,
    print_table,
    smtp_source,
    throughput,
    wait_port,
)


class Redis:
    """redis-server on a free port of 127.0.0.1, its files in the run's directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server not found: install Debian's redis-server package")
        self.root.mkdir(parents=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, 20, alive=lambda: self.proc is not None and self.proc.poll() is None)

    def keys(self) -> int:
        """DBSIZE, by the protocol itself (no client library needed)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"DBSIZE\r\n")
            reply = s.recv(64)
        if not reply.startswith(b":"):
            raise BenchError(f"redis-server answered DBSIZE with {reply!r}")
        return int(reply[1:].split(b"\r\n")[0])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1000, help="messages per run (default 1000)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per scenario and server")
    ap.add_argument("--dir", type=Path, help="where to create the temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    check_tools()
    root = Path(tempfile.mkdtemp(prefix="postvakt-bench-state-", dir=args.dir))
    os.chmod(root, 0o755)  # Postfix's unprivileged daemons walk into their queue
    redis = Redis(root / "redis")
    sinks = [Sink(free_port()) for _ in range(3)]
    postfix = Postfix(root / "postfix", sinks[0].port)
    servers: list[Postfix | Postvakt] = [postfix]
    rows: list[Row] = []
    started = time.time()
    load = os.getloadavg()
    fs = filesystem(root)
    try:
        for sink in sinks:
            sink.start()
        redis.start()
        postfix.start()
        for i, (state, name) in enumerate((("sqlite", "pv-sqlite"), (redis.url, "pv-redis"))):
            srv = Postvakt(
                root / name, sinks[i + 1].port, state=state, name=name, count_loopback=True
            )
            servers.append(srv)
            srv.start()
        for srv in servers:  # warm-up, not timed
            smtp_source(srv.port, WARMUP_MESSAGES, USER, reuse=False)
            if isinstance(srv, Postvakt):
                srv.delivered_base += WARMUP_MESSAGES
            srv.wait_drained(srv.delivered_base if isinstance(srv, Postvakt) else None)
        n = args.messages
        for label, reuse in (
            ("durable accept, 1 per connection", False),
            ("durable accept, connection reuse", True),
        ):
            res: dict[str, dict[str, Any]] = throughput(
                label,
                servers,
                n,
                lambda s, c, reuse=reuse: smtp_source(s.port, c, USER, reuse=reuse),
                n,
                args.repeat,
            )
            for name in ("pv-sqlite", "pv-redis"):
                kind = "SQLite" if name == "pv-sqlite" else "Redis"
                rows.append(
                    Row(
                        f"{label.replace('durable ', '')}, state {kind}",
                        "msg/s",
                        res["postfix"]["per_second"],
                        res[name]["per_second"],
                    )
                )
                rows.append(cpu_row(res, name))
        # The Redis server was used: the counters of the run are its keys.
        keys = redis.keys()
        print(f"  keys in the private Redis after the runs: {keys}")
        if keys == 0:
            raise BenchError("the Redis state server holds no keys: it was not used")
    except BenchError as e:
        print(f"\nbench failed: {e}", file=sys.stderr)
        for srv in servers:
            print(f"{srv.name} log:\n{srv.log_tail()}", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        for srv in reversed(servers):
            srv.stop()
        redis.stop()
        for sink in sinks:
            sink.stop()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_table(rows)
    end = os.getloadavg()
    print(
        f"\n{os.cpu_count()} cores, load average {load[0]:.1f} at the start and {end[0]:.1f} "
        f"at the end, queues on {fs['type']}; {time.time() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    run.entry(main)
