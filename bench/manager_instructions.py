#!/usr/bin/env python3
"""Instructions per local (or relayed) message in the queue manager, counted by callgrind.

    python3 bench/manager_instructions.py                 # 200 messages
    python3 bench/manager_instructions.py --messages 400
    python3 bench/manager_instructions.py --relay         # relayed to smtp-sink
    python3 bench/manager_instructions.py --keep /tmp/cg  # keep the output for callgrind_annotate

CPU time on a machine shared with other work scatters by 10-20% from run to
run; the number of instructions executed does not depend on the load. This
queues `--messages` 1 KiB messages for the local user (configured as
bench/run.py's server), then runs the real queue manager in a process of its
own under `valgrind --tool=callgrind` until every message is in the Maildir,
and once more with nothing queued. The difference, divided by the messages,
is the manager's cost per message in instructions (every thread, Python and
the C library; the kernel's work, fsync included, is not counted). Needs
valgrind. Takes a few minutes: Python runs about 50 times slower under it.

With `--relay` the messages are for the foreign domain that bench/run.py
routes to its own `smtp-sink` (started here, outside callgrind), and the
manager runs until the queue is empty, on the event loop `postvakt serve`
runs (uvloop when installed), as relaying spends much of its time in the
loop's transports. The 20 connections to the sink
(`concurrency_per_destination`) are made in the run and count, spread over
the messages. Needs smtp-sink (Debian's postfix package).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run
from run import SENDER, SINK_DOMAIN, USER, BenchError, Postvakt, Sink, free_port, message_body

HERE = Path(__file__).resolve().parent
TOTALS = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.M)


RELAY_RCPT = f"user@{SINK_DOMAIN}"


def queue_messages(config_path: Path, count: int, first: int = 0, rcpt: str = USER) -> None:
    from postvakt import config as config_mod
    from postvakt.queue import Envelope, Queue, Recipient

    config = config_mod.load(config_path)
    queue = Queue(config.queue_root)
    for n in range(first, first + count):
        m = queue.new_message()
        m.write(message_body(n))
        m.commit(Envelope(SENDER, (Recipient(rcpt),), time.time(), "127.0.0.1", "bench", None))


async def drain(config_path: Path, count: int, wake_fd: int | None = None) -> None:
    """The manager in this process until `count` messages are in the Maildir;
    with `wake_fd`, woken by a byte per message as the front wakes it."""
    from postvakt import config as config_mod
    from postvakt.directory import Directory
    from postvakt.queue import Queue
    from postvakt.queue.manager import QueueManager

    config = config_mod.load(config_path)
    directory = Directory.for_config(config, live=True)
    queue = Queue(config.queue_root)
    manager = QueueManager(config, directory, queue)
    local, _, domain = USER.partition("@")
    box = config.data_dir / "mail" / domain / local
    await manager.start()
    manager.wake()
    if wake_fd is not None:
        loop = asyncio.get_running_loop()

        def on_wake() -> None:
            if os.read(wake_fd, 4096):
                manager.wake()
            else:
                loop.remove_reader(wake_fd)

        os.set_blocking(wake_fd, False)
        loop.add_reader(wake_fd, on_wake)
    new = box / "new"
    while count and (not new.is_dir() or len(os.listdir(new)) < count or queue.ids("active")):
        await asyncio.sleep(0.5)
    await manager.stop()
    directory.close()


async def drain_relay(config_path: Path) -> None:
    """The manager in this process until every queued message has left the
    queue, relayed; exits with an error when one was deferred instead."""
    from postvakt import config as config_mod
    from postvakt.directory import Directory
    from postvakt.queue import Queue
    from postvakt.queue.manager import QueueManager
    from postvakt.queue.spool import ACTIVE, DEFERRED, INCOMING

    config = config_mod.load(config_path)
    directory = Directory.for_config(config, live=True)
    queue = Queue(config.queue_root)
    manager = QueueManager(config, directory, queue)
    await manager.start()
    manager.wake()
    while queue.ids(INCOMING) or queue.ids(ACTIVE):
        await asyncio.sleep(0.5)
    await manager.stop()
    directory.close()
    deferred = queue.ids(DEFERRED)
    if deferred:
        raise SystemExit(f"{len(deferred)} messages deferred instead of relayed")


def callgrind(
    config_path: Path, count: int, out: Path, rate: float = 0.0, relay: bool = False
) -> int:
    """Instructions of one manager run. `rate` > 0: the messages are queued
    while it runs, that many a second, with a wake-up for each. `relay`: the
    queued messages are relayed (`drain_relay`)."""
    wake_r: int | None = None
    if rate > 0:
        wake_r, wake_w = os.pipe()
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(Path(__file__).resolve()),
        *(
            ["--drain-relay", str(config_path)]
            if relay
            else ["--drain", str(config_path), str(count)]
        ),
    ]
    if wake_r is None:
        r = subprocess.run(cmd, capture_output=True, timeout=1800)
    else:
        cmd += ["--wake-fd", str(wake_r)]
        proc = subprocess.Popen(
            cmd, pass_fds=(wake_r,), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        os.close(wake_r)
        time.sleep(20.0)  # Python starting under valgrind
        for n in range(count):
            queue_messages(config_path, 1, first=n)
            os.write(wake_w, b"\0")
            time.sleep(1.0 / rate)
        stdout, stderr = proc.communicate(timeout=1800)
        os.close(wake_w)
        r = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if r.returncode != 0:
        raise BenchError(f"callgrind run failed: {r.stderr.decode(errors='replace')[-2000:]}")
    total = 0
    for f in out.parent.glob(out.name + "*"):
        m = TOTALS.search(f.read_bytes())
        if m:
            total += int(m.group(1))
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="queue the messages while the manager runs, this many a second, each with a "
        "wake-up as the front sends (default: all queued before it starts)",
    )
    ap.add_argument(
        "--relay",
        action="store_true",
        help="messages for the sink's domain, relayed to smtp-sink (all queued first)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", type=Path, help="copy callgrind's output files into this directory")
    ap.add_argument("--drain", nargs=2, metavar=("CONFIG", "COUNT"), help=argparse.SUPPRESS)
    ap.add_argument("--drain-relay", metavar="CONFIG", help=argparse.SUPPRESS)
    ap.add_argument("--wake-fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.drain:
        asyncio.run(drain(Path(args.drain[0]), int(args.drain[1]), args.wake_fd))
        return 0
    if args.drain_relay:
        from postvakt.server.process import EVENT_LOOP_ENV, event_loop_runner

        # The loop `postvakt serve` runs: uvloop's transports are the relay's I/O.
        event_loop_runner(os.environ.get(EVENT_LOOP_ENV, ""))(drain_relay(Path(args.drain_relay)))
        return 0
    if shutil.which("valgrind") is None:
        raise BenchError("valgrind not found")
    if args.relay and args.rate > 0:
        raise BenchError("--relay queues every message first: no --rate")
    if args.relay and not os.access(run.SMTP_SINK, os.X_OK):
        raise BenchError(f"{run.SMTP_SINK} not found: install Debian's postfix package")
    root = Path(tempfile.mkdtemp(prefix="postvakt-mgrins-"))
    sink = Sink(free_port()) if args.relay else None
    try:
        if sink is not None:
            sink.start()
        totals = {}
        for count in (0, args.messages):
            # Without --relay the sink port is never used.
            server = Postvakt(root / f"postvakt-{count}", sink.port if sink else 9)
            server.write_config()
            if args.rate <= 0:
                queue_messages(server.config, count, rcpt=RELAY_RCPT if args.relay else USER)
            out = root / f"callgrind-{count}.out"
            before = sink.messages if sink else 0
            rate = args.rate if count else 0.0
            totals[count] = callgrind(server.config, count, out, rate, args.relay)
            if sink is not None:
                sink.wait_for(before + count, 10.0)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for f in root.glob(out.name + "*"):
                    shutil.copy(f, args.keep / f.name)
    finally:
        if sink is not None:
            sink.stop()
        shutil.rmtree(root, ignore_errors=True)
    what = "relayed message" if args.relay else "local message"
    run.report_instructions(totals, args.messages, args.json, "queue manager", what)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    run.entry(main)
