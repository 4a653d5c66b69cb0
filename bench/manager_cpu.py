#!/usr/bin/env python3
"""CPU per message of the queue manager process alone, for local mail.

    python3 bench/manager_cpu.py                      # 2000 messages, 3 runs
    python3 bench/manager_cpu.py --messages 500 --repeat 1

Starts `postvakt serve` as bench/run.py does (same configuration), sends
`--messages` 1 KiB messages to the local user with smtp-source (50 sessions,
connection reuse) and waits until every one is in the Maildir. The figure is
the user + system CPU time of the `--role queue-manager` child over the run,
divided by the messages (the front's is printed beside it). The manager's work
does not depend on how fast mail arrives, so this repeats far better than the
throughput rows of run.py on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run
from run import (
    DRAIN_TIMEOUT,
    SINK_DOMAIN,
    USER,
    WARMUP_MESSAGES,
    BenchError,
    Postvakt,
    Sink,
    check_tools,
    cpu_seconds,
    free_port,
    smtp_source,
    tree_pids,
)


def manager_pid(root_pid: int) -> int:
    for pid in tree_pids(root_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"queue-manager" in cmdline:
            return pid
    raise BenchError("no queue manager process found")


def start_warm(sink: Sink, server: Postvakt, *, reuse: bool = True, relay: bool = False) -> int:
    """Start the sink and the server, deliver the warm-up messages (connection
    reuse, or one per connection) and wait until they are in the Maildir, or
    (`relay`) relayed to the sink; the queue manager's process id."""
    sink.start()
    server.start()
    assert server.proc is not None
    send_through(server, sink, WARMUP_MESSAGES, reuse=reuse, relay=relay)
    return manager_pid(server.proc.pid)


def send_through(server: Postvakt, sink: Sink, count: int, *, reuse: bool, relay: bool) -> None:
    """`count` messages sent and gone on: in the local Maildir, or (`relay`)
    relayed to the sink; the queue is empty."""
    if relay:
        relayed(server, sink, count, reuse=reuse)
    else:
        smtp_source(server.port, count, USER, reuse=reuse)
        server.delivered_base += count
        server.wait_drained(server.delivered_base)


def relayed(server: Postvakt, sink: Sink, count: int, *, reuse: bool) -> None:
    """`count` messages to the sink's domain, sent and relayed: the sink has
    counted each and the queue is empty."""
    base = sink.messages
    smtp_source(server.port, count, f"user@{SINK_DOMAIN}", reuse=reuse)
    sink.wait_for(base + count, DRAIN_TIMEOUT)
    server.wait_drained()


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of one process (its threads included)."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / tick, int(fields[12]) / tick


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument(
        "--profile",
        type=Path,
        help="also record the manager with py-spy (--gil, collapsed stacks) into this file",
    )
    args = ap.parse_args(argv)
    check_tools()
    root = Path(tempfile.mkdtemp(prefix="postvakt-mgrcpu-"))
    sink = Sink(free_port())
    server = Postvakt(root / "postvakt", sink.port)
    runs: list[dict[str, float]] = []
    spy: subprocess.Popen[bytes] | None = None
    try:
        mgr = start_warm(sink, server)
        assert server.proc is not None
        front = server.proc.pid
        if args.profile:
            spy = subprocess.Popen(
                ["py-spy", "record", "--gil", "--nonblocking", "--format", "raw", "-r", "200"]
                + ["-p", str(mgr), "-o", str(args.profile)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        for i in range(args.repeat):
            m0, f0 = cpu_seconds([mgr]), cpu_seconds([front])
            u0, _ = user_system(mgr)
            smtp_source(server.port, args.messages, USER, reuse=True)
            server.delivered_base += args.messages
            server.wait_drained(server.delivered_base)
            m1, f1 = cpu_seconds([mgr]), cpu_seconds([front])
            u1, _ = user_system(mgr)
            r = {
                "manager_ms": round((m1 - m0) / args.messages * 1000, 3),
                "manager_user_ms": round((u1 - u0) / args.messages * 1000, 3),
                "front_ms": round((f1 - f0) / args.messages * 1000, 3),
            }
            runs.append(r)
            print(
                f"  run {i + 1}/{args.repeat}: manager {r['manager_ms']:.3f} ms/msg "
                f"({r['manager_user_ms']:.3f} user), "
                f"front {r['front_ms']:.3f} ms/msg",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        server.stop()
        sink.stop()
        shutil.rmtree(root, ignore_errors=True)
    out = {
        "messages": args.messages,
        "manager_ms_median": statistics.median(r["manager_ms"] for r in runs),
        "front_ms_median": statistics.median(r["front_ms"] for r in runs),
        "runs": runs,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"manager {out['manager_ms_median']:.3f} ms CPU per message, "
            f"front {out['front_ms_median']:.3f} (median of {len(runs)})"
        )
    return 0


if __name__ == "__main__":
    run.entry(main)
