#!/usr/bin/env python3
"""System calls per local message of the queue manager process, by strace.

    python3 bench/manager_syscalls.py                 # 1000 messages
    python3 bench/manager_syscalls.py --messages 500 --json

Starts `postvakt serve` as bench/run.py does (same configuration), sends a
warm-up, attaches `strace -f -c` to the `--role queue-manager` child (every
thread), sends `--messages` 1 KiB messages to the local user with smtp-source
(50 sessions, connection reuse), waits until every one is in the Maildir and
prints the calls per message, by call. strace slows each call down, so the
manager wakes up and scans more often under it than it would without: the
counts of the scan (listdir, rename into active/) are an upper bound, the
per-message work (open, read, fsync, link, unlink) is exact. Needs strace
and the right to ptrace the child (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import run
from manager_cpu import manager_pid
from run import (
    USER,
    WARMUP_MESSAGES,
    BenchError,
    Postvakt,
    Sink,
    check_tools,
    free_port,
    smtp_source,
)

# strace -c's table: "% time  seconds  usecs/call  calls  [errors]  syscall".
ATTACH_WAIT = 1.0


def parse_summary(text: str) -> dict[str, tuple[int, int]]:
    """{syscall: (calls, errors)} from strace -c's table."""
    out: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or not parts[0][0].isdigit() or parts[-1] == "total":
            continue
        try:
            calls = int(parts[3])
        except ValueError:
            continue
        errors = int(parts[4]) if len(parts) == 6 else 0
        out[parts[-1]] = (calls, errors)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    check_tools()
    if shutil.which("strace") is None:
        raise BenchError("strace not found")
    root = Path(tempfile.mkdtemp(prefix="postvakt-mgrsys-"))
    sink = Sink(free_port())
    server = Postvakt(root / "postvakt", sink.port)
    summary = root / "strace.txt"
    try:
        sink.start()
        server.start()
        assert server.proc is not None
        smtp_source(server.port, WARMUP_MESSAGES, USER, reuse=True)
        server.delivered_base += WARMUP_MESSAGES
        server.wait_drained(server.delivered_base)
        mgr = manager_pid(server.proc.pid)
        tracer = subprocess.Popen(
            ["strace", "-f", "-c", "-o", str(summary), "-p", str(mgr)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(ATTACH_WAIT)
        smtp_source(server.port, args.messages, USER, reuse=True)
        server.delivered_base += args.messages
        server.wait_drained(server.delivered_base)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(60)
    finally:
        server.stop()
        sink.stop()
    calls = parse_summary(summary.read_text())
    shutil.rmtree(root, ignore_errors=True)
    per = {
        name: {"calls": round(c / args.messages, 2), "errors": round(e / args.messages, 2)}
        for name, (c, e) in sorted(calls.items(), key=lambda kv: -kv[1][0])
    }
    total = round(sum(c for c, _ in calls.values()) / args.messages, 1)
    if args.json:
        print(json.dumps({"messages": args.messages, "total": total, "per_message": per}))
    else:
        for name, v in per.items():
            errors = f"  ({v['errors']} failed)" if v["errors"] else ""
            print(f"  {name:<20} {v['calls']:8.2f}{errors}")
        print(f"queue manager: {total} system calls per local message")
    return 0


if __name__ == "__main__":
    run.entry(main)
