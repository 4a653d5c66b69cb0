#!/usr/bin/env python3
"""System calls per local message of the queue manager process, by strace.

    python3 bench/manager_syscalls.py                 # 1000 messages
    python3 bench/manager_syscalls.py --messages 500 --json
    python3 bench/manager_syscalls.py --rate 5 --messages 100
    python3 bench/manager_syscalls.py --relay         # relayed to smtp-sink

Starts `postvakt serve` as bench/run.py does (same configuration), sends a
warm-up, attaches `strace -f -c` to the `--role queue-manager` child (every
thread), sends `--messages` 1 KiB messages to the local user with smtp-source
(50 sessions, connection reuse), waits until every one is in the Maildir and
prints the calls per message, by call. The per-message file work (open,
read, write, fsync, link, unlink) counts exactly; futex (the interpreter
lock between threads) and the scans (getdents64) depend on timing, which
strace changes, and on how many wake-ups a burst coalesces into. With
`--relay` the warm-up and the messages go to the sink's domain (one message
per connection, as bench/run.py's relay row), relayed to the server's
`smtp-sink`, and the run ends when the sink has every message and the queue
is empty.

With `--rate N` the manager runs as bench/manager_instructions.py runs it
(in a process of its own, under `strace -f -c` from its start), the messages
are queued N a second, each with a wake-up byte as the front sends, and a run
with none queued is subtracted: every message then pays its own wake-up and
scan. Its own polling of the Maildir (every 0.5 s) is counted too, alike for
any code. Needs strace and the right to ptrace (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import manager_instructions
import run
from manager_cpu import relayed, start_warm
from run import (
    USER,
    BenchError,
    Postvakt,
    Sink,
    check_tools,
    free_port,
    smtp_source,
)

# Seconds for strace to attach before the messages come.
ATTACH_WAIT = 1.0
# Seconds for the paced manager (--rate) to start under strace.
PACED_START = 3.0


def parse_summary(text: str) -> dict[str, tuple[int, int]]:
    """{syscall: (calls, errors)} from strace -c's table
    ("% time  seconds  usecs/call  calls  [errors]  syscall")."""
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


def paced(count: int, rate: float, root: Path) -> dict[str, tuple[int, int]]:
    """{syscall: (calls, errors)} of one manager run fed `count` messages at
    `rate` a second, each with a wake-up (see the module docstring)."""
    server = Postvakt(root / f"postvakt-{count}", 9)  # the sink port is never used
    server.write_config()
    out = root / f"strace-{count}.txt"
    wake_r, wake_w = os.pipe()
    script = Path(manager_instructions.__file__).resolve()
    proc = subprocess.Popen(
        ["strace", "-f", "-c", "-o", str(out), sys.executable, str(script)]
        + ["--drain", str(server.config), str(count), "--wake-fd", str(wake_r)],
        pass_fds=(wake_r,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(wake_r)
    try:
        time.sleep(PACED_START)
        for n in range(count):
            manager_instructions.queue_messages(server.config, 1, first=n)
            os.write(wake_w, b"\0")
            time.sleep(1.0 / rate)
        _, err = proc.communicate(timeout=run.DRAIN_TIMEOUT)
    finally:
        os.close(wake_w)
    if proc.returncode != 0:
        raise BenchError(f"manager run failed: {err.decode(errors='replace')[-2000:]}")
    return parse_summary(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="feed the manager this many messages a second, a wake-up each (see above)",
    )
    ap.add_argument(
        "--relay", action="store_true", help="to a foreign domain, relayed to smtp-sink"
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if shutil.which("strace") is None:
        raise BenchError("strace not found")
    if args.rate > 0 and args.relay:
        raise BenchError("--rate is for local mail only")
    if args.rate > 0:
        root = Path(tempfile.mkdtemp(prefix="postvakt-mgrsys-"))
        try:
            idle = paced(0, args.rate, root)
            fed = paced(args.messages, args.rate, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        calls = {
            name: (c - idle.get(name, (0, 0))[0], e - idle.get(name, (0, 0))[1])
            for name, (c, e) in fed.items()
        }
        return report(calls, args.messages, args.json)
    check_tools()
    root = Path(tempfile.mkdtemp(prefix="postvakt-mgrsys-"))
    sink = Sink(free_port())
    server = Postvakt(root / "postvakt", sink.port)
    summary = root / "strace.txt"
    try:
        mgr = start_warm(sink, server, reuse=not args.relay, relay=args.relay)
        tracer = subprocess.Popen(
            ["strace", "-f", "-c", "-o", str(summary), "-p", str(mgr)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(ATTACH_WAIT)
        if args.relay:
            relayed(server, sink, args.messages, reuse=False)
        else:
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
    return report(calls, args.messages, args.json, "relayed" if args.relay else "local")


def report(
    calls: dict[str, tuple[int, int]], messages: int, as_json: bool, kind: str = "local"
) -> int:
    per = {
        name: {"calls": round(c / messages, 2), "errors": round(e / messages, 2)}
        for name, (c, e) in sorted(calls.items(), key=lambda kv: -kv[1][0])
        if round(c / messages, 2) or round(e / messages, 2)
    }
    total = round(sum(c for c, _ in calls.values()) / messages, 1)
    if as_json:
        print(json.dumps({"messages": messages, "total": total, "per_message": per}))
    else:
        for name, v in per.items():
            errors = f"  ({v['errors']} failed)" if v["errors"] else ""
            print(f"  {name:<20} {v['calls']:8.2f}{errors}")
        print(f"queue manager: {total} system calls per {kind} message")
    return 0


if __name__ == "__main__":
    run.entry(main)
