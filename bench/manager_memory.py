"""Peak memory of the queue manager delivering one big message.

DESIGN.md's target: a 50 MB message costs the queue manager under 20 MB above
its idle RSS. This runs the real manager in this process on a temporary queue:
one message of --size MB to two local Maildirs and one remote recipient behind
Postfix's smtp-sink on loopback, and reports the peak RSS (VmHWM, reset after
a warm-up delivery) above the RSS at idle.

    python3 bench/manager_memory.py                 # 50 MB, 3 recipients
    python3 bench/manager_memory.py --size 10 --json

Needs /usr/sbin/smtp-sink (Debian's postfix package). Prints one line (or JSON)
and exits 0; --limit MB makes it exit 1 when the growth is at or above it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from postvakt import config as C
from postvakt.directory import Directory
from postvakt.queue import Envelope, Queue, Recipient
from postvakt.queue.manager import QueueManager

SINK = "/usr/sbin/smtp-sink"
LOCAL = ("bob@bench.test", "carol@bench.test")
REMOTE = "dave@sink.test"
# One line of the generated body: 76 characters, like base64 in a MIME part.
LINE = b"QmVuY2htYXJrIGJvZHkgbGluZSBmb3IgdGhlIHF1ZXVlIG1hbmFnZXIgbWVtb3J5IHRlc3QgLi4u\r\n"


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """VmHWM := VmRSS (Linux >= 4.0: "5" to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    port = free_port()
    args = [SINK, *(["-u", "nobody"] if os.geteuid() == 0 else []), f"127.0.0.1:{port}", "10"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("smtp-sink did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def submit(q: Queue, size: int) -> str:
    m = q.new_message()
    m.write(b"From: alice@bench.test\r\nSubject: big\r\n\r\n")
    block = LINE * (1024 * 1024 // len(LINE))
    written = 0
    while written < size:
        piece = block[: size - written]
        m.write(piece)
        written += len(piece)
    m.commit(
        Envelope(
            sender="alice@bench.test",
            recipients=tuple(Recipient(r) for r in (*LOCAL, REMOTE)),
            received_at=time.time(),
            client_ip="127.0.0.1",
            helo="bench.test",
            login=None,
        )
    )
    return m.queue_id


async def deliver_all(qm: QueueManager, q: Queue, timeout: float = 600.0) -> None:
    qm.wake()
    deadline = time.monotonic() + timeout
    while any(q.ids(s) for s in ("incoming", "active", "deferred")):
        if time.monotonic() > deadline:
            raise RuntimeError("the message was not delivered in time")
        await asyncio.sleep(0.05)


def measure(size_mb: int, root: Path, port: int) -> dict[str, float]:
    config = C.from_dict(
        {
            "hostname": "mx.bench.test",
            "data_dir": str(root / "data"),
            "domains": {"local": ["bench.test"]},
            "delivery": {"routes": {"sink.test": f"127.0.0.1:{port}"}, "tls": "none"},
        }
    )
    directory = Directory.for_config(config)
    for u in LOCAL:
        directory.add_user(u, "pw")
    q = Queue(config.data_dir / "queue")

    async def run() -> dict[str, float]:
        qm = QueueManager(config, directory, q)
        await qm.start()
        try:
            submit(q, 64 * 1024)  # warm-up: imports, threads, a connection to the sink
            await deliver_all(qm, q)
            await asyncio.to_thread(submit, q, size_mb * 1024 * 1024)
            gc.collect()
            idle = status_kb("VmRSS")
            reset_peak()
            started = time.monotonic()
            await deliver_all(qm, q)
            took = time.monotonic() - started
            peak = status_kb("VmHWM")
        finally:
            await qm.stop(5)
        return {
            "size_mb": size_mb,
            "recipients": len(LOCAL) + 1,
            "idle_rss_mb": idle / 1024,
            "peak_rss_mb": peak / 1024,
            "growth_mb": (peak - idle) / 1024,
            "seconds": took,
        }

    return asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=50, help="message size in MB (default 50)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--limit", type=float, default=0.0, help="exit 1 if growth >= this many MB")
    ap.add_argument("--dir", default=None, help="put the temporary queue and Maildirs here")
    args = ap.parse_args()
    if not os.path.exists(SINK):
        print(f"{SINK} is missing (Debian package postfix)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="postvakt-mem-", dir=args.dir))
    try:
        with smtp_sink() as port:
            r = measure(args.size, root, port)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(r))
    else:
        print(
            f"{r['size_mb']} MB to {r['recipients']} recipients: idle {r['idle_rss_mb']:.1f} MB,"
            f" peak {r['peak_rss_mb']:.1f} MB, growth {r['growth_mb']:.1f} MB"
            f" (target < 20 MB for 50 MB), {r['seconds']:.1f} s"
        )
    return 1 if args.limit and r["growth_mb"] >= args.limit else 0


if __name__ == "__main__":
    sys.exit(main())
