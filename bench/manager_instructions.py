#!/usr/bin/env python3
"""Instructions per local message in the queue manager, counted by callgrind.

    python3 bench/manager_instructions.py                 # 200 messages
    python3 bench/manager_instructions.py --messages 400

CPU time on a machine shared with other work scatters by 10-20% from run to
run; the number of instructions executed does not depend on the load. This
queues `--messages` 1 KiB messages for the local user (configured as
bench/run.py's server), then runs the real queue manager in a process of its
own under `valgrind --tool=callgrind` until every message is in the Maildir,
and once more with nothing queued. The difference, divided by the messages,
is the manager's cost per message in instructions (every thread, Python and
the C library; the kernel's work, fsync included, is not counted). Needs
valgrind. Takes a few minutes: Python runs about 50 times slower under it.
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
from run import SENDER, USER, BenchError, Postvakt, message_body

HERE = Path(__file__).resolve().parent
TOTALS = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.M)


def queue_messages(config_path: Path, count: int, first: int = 0) -> None:
    from postvakt import config as config_mod
    from postvakt.queue import Envelope, Queue, Recipient

    config = config_mod.load(config_path)
    queue = Queue(config.queue_root)
    for n in range(first, first + count):
        m = queue.new_message()
        m.write(message_body(n))
        m.commit(Envelope(SENDER, (Recipient(USER),), time.time(), "127.0.0.1", "bench", None))


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


def callgrind(config_path: Path, count: int, out: Path, rate: float = 0.0) -> int:
    """Instructions of one manager run. `rate` > 0: the messages are queued
    while it runs, that many a second, with a wake-up for each."""
    wake_r: int | None = None
    if rate > 0:
        wake_r, wake_w = os.pipe()
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--drain",
        str(config_path),
        str(count),
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
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--drain", nargs=2, metavar=("CONFIG", "COUNT"), help=argparse.SUPPRESS)
    ap.add_argument("--wake-fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.drain:
        asyncio.run(drain(Path(args.drain[0]), int(args.drain[1]), args.wake_fd))
        return 0
    if shutil.which("valgrind") is None:
        raise BenchError("valgrind not found")
    root = Path(tempfile.mkdtemp(prefix="postvakt-mgrins-"))
    try:
        totals = {}
        for count in (0, args.messages):
            server = Postvakt(root / f"postvakt-{count}", 9)  # the sink port is never used
            server.write_config()
            if args.rate <= 0:
                queue_messages(server.config, count)
            out = root / f"callgrind-{count}.out"
            totals[count] = callgrind(server.config, count, out, args.rate if count else 0.0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    run.report_instructions(totals, args.messages, args.json, "queue manager", "local message")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    run.entry(main)
