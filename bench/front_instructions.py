#!/usr/bin/env python3
"""Instructions per accepted message in the front process, counted by callgrind.

    python3 bench/front_instructions.py                  # 200 messages
    python3 bench/front_instructions.py --messages 300 --reuse

The front's CPU time per message scatters by 10-20% on a machine shared with
other work; its instruction count does not. This starts `postvakt serve`
(configured as bench/run.py's server) under `valgrind --tool=callgrind`
(the queue manager, a child process, runs outside it), sends `--messages`
1 KiB messages to the local user with smtp-source (5 sessions; one message
per connection, or connection reuse with `--reuse`), waits until they are in
the Maildir and stops the server; then once more with no message. The
difference divided by the messages is the front's cost per message in
instructions (every thread: the loop, the committer, the executor; kernel
work such as fsync and socket sends is not counted). Needs valgrind and
Debian's postfix package (smtp-source). A few minutes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

import run
from run import USER, BenchError, Postvakt, Sink, free_port, smtp_source

TOTALS = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.M)


def count(root: Path, messages: int, reuse: bool) -> int:
    sink = Sink(free_port())
    server = Postvakt(root, sink.port)
    out = root.parent / f"{root.name}.callgrind"
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    try:
        sink.start()
        server.write_config()  # `postvakt user add` outside valgrind
        server.command = [*valgrind, sys.executable, "-m", "postvakt"]
        server._launch()
        if messages:
            smtp_source(server.port, messages, USER, reuse=reuse)
            server.wait_drained(messages)
    finally:
        server.stop()
        sink.stop()
    m = TOTALS.search(out.read_bytes())
    if m is None:
        raise BenchError(f"no total in {out}")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--reuse", action="store_true", help="smtp-source -d: connection reuse")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise BenchError("valgrind not found")
    run.check_tools()
    # Python under valgrind starts and answers about 50 times slower.
    run.START_TIMEOUT = 900.0
    run.DRAIN_TIMEOUT = 1800.0
    run.SESSIONS = 5
    tmp = Path(tempfile.mkdtemp(prefix="postvakt-frontins-"))
    try:
        totals = {n: count(tmp / f"pv-{n}", n, args.reuse) for n in (0, args.messages)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    run.report_instructions(totals, args.messages, args.json, "front", "accepted message")
    return 0


if __name__ == "__main__":
    run.entry(main)
