#!/usr/bin/env python3
"""Where the CPU per accepted message goes, in the front and in the queue manager.

    python3 bench/cpu_budget.py                       # 2000 messages, one per connection
    python3 bench/cpu_budget.py --messages 2000 --reuse
    python3 bench/cpu_budget.py --relay               # relayed to smtp-sink instead
    python3 bench/cpu_budget.py --json --keep /tmp/stacks

Starts `postvakt serve` configured as bench/run.py's server, sends a warm-up,
then attaches the sampling profiler py-spy (`pip install py-spy`; it needs
ptrace, so run as root) to the front process and to the queue manager, and
sends `--messages` 1 KiB messages to the local user with smtp-source (50
sessions; one message per connection, or connection reuse with `--reuse`)
and waits until each is in the Maildir. With `--relay` the warm-up and the
messages go to the foreign domain that bench/run.py routes to its own
`smtp-sink` (as its "relay to smtp-sink" row), and the run ends when the sink
has counted every message and the queue is empty.

py-spy runs with `--gil`: a sample counts only when one of the process's
threads holds the interpreter lock, so waits on fsync, the disk or the
network are not counted, while system calls made with the lock held (uvloop
sends replies that way) are. Each sample is sorted into a category by its
innermost frame that a rule of CATEGORY_RULES knows (frames of other code,
such as `re`, `ipaddress` or `os`, count for the nearest caller that a rule
knows; a log call claims what it formats); a sample with no such frame, or
with no Python frame at all, is "other". A category's share of the samples
times the process's CPU time per message (utime + stime from /proc/PID/stat,
every thread, over the run, divided by the messages) is its cost in
milliseconds per message. The shares repeat better than the absolute figures
on a shared machine. Needs Debian's postfix package (smtp-source). Under a
minute.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import run
from manager_cpu import send_through, start_warm, user_system
from run import BenchError, Postvakt, Sink, free_port

Process = Literal["front", "manager"]

# py-spy samples per second and process; both run for about 10-20 s.
SAMPLE_RATE = 1000
# Time for py-spy to attach (ptrace, read the interpreter's memory) before the run.
ATTACH_SECONDS = 1.0


@dataclass(frozen=True)
class Rule:
    """A frame whose module and function match these globs counts for `category`.

    `module` is the dotted module name (`postvakt.server.smtp`, `asyncio.events`,
    `uvloop.loop`), `function` the qualified name py-spy shows
    (`SMTPSession._flush`); `process` limits a rule to the front or the manager.
    With `callees`, the frame also claims every frame it calls: a log call that
    formats a reply or an address is logging, not the reply's or address's code.
    """

    module: str
    function: str
    category: str
    process: Process | None = None
    callees: bool = False


REPLIES = "replies written to the socket (uvloop's `transport.write` sends at once)"
POLICY = "policy and addresses"
SMTP_CORE = "SMTP parse and state (sans-IO core)"
ADAPTER = "SMTP adapter (session plumbing)"
HANDOFFS = "hand-offs (executor, futures, locks)"
LOGGING = "logging"
ASYNCIO = "asyncio / transports"
COMMIT = "queue commit (spool)"
HEADERS = "Received: and headers"
MANAGER = "queue manager (load, schedule, status)"
QUEUE_FILES = "queue file reads and removal (spool)"
MAILDIR = "Maildir delivery"
SMTP_CLIENT = "SMTP client (commands, replies, body)"
REMOTE = "remote delivery (destination, connections)"
STREAMS = "asyncio streams and timeouts (the client's reads and writes)"
OTHER = "other"

# How a sample is sorted (`categorize`): the innermost frame matched by a rule
# with `callees` decides; if there is none, the innermost frame matched by any
# rule does; if there is none either, the sample is "other". Frames that no
# rule knows (`re`, `os`, `pathlib`, `ipaddress`, dataclass constructors ...)
# count for the nearest caller that one knows. Within a frame the first
# matching rule wins, so where globs overlap a function comes before its
# module, asyncio's futures and locks before the rest of asyncio.
CATEGORY_RULES: tuple[Rule, ...] = (
    # The adapter's functions that hand a reply to the transport: uvloop's
    # write is compiled code, so its send() shows as these frames.
    Rule("postvakt.server.smtp", "SMTPSession._flush", REPLIES),
    Rule("postvakt.server.smtp", "SMTPSession._send_pending", REPLIES),
    Rule("postvakt.server.smtp", "SMTPSession._delayed_write", REPLIES),
    # Log lines: building their fields, formatting their arguments, writing them.
    Rule("postvakt.server.smtp", "SMTPSession._log_*", LOGGING, callees=True),
    Rule("postvakt.policy.types", "Decision.log_*", LOGGING, callees=True),
    Rule("postvakt.queue.manager", "QueueManager._log", LOGGING, callees=True),
    Rule("postvakt.server.handshake", "log_failure", LOGGING, callees=True),
    Rule("postvakt.logtext", "*", LOGGING, callees=True),
    Rule("postvakt.server.process", "*Formatter.*", LOGGING, callees=True),
    Rule("postvakt.server.process", "_SecondText.*", LOGGING, callees=True),
    Rule("logging", "*", LOGGING, callees=True),
    Rule("logging.*", "*", LOGGING, callees=True),
    # The Received: line and the authentication headers put before the body.
    Rule("postvakt.server.smtp", "SMTPSession._received_header", HEADERS, callees=True),
    Rule("postvakt.server.smtp", "received_protocol", HEADERS),
    Rule("postvakt.mailauth.*", "*", HEADERS),
    # The front hands each batch to its commit helper and reads the answers
    # (the helper's own commit work is a process of its own, not sampled).
    Rule("postvakt.server.services", "App.commit", HANDOFFS),
    Rule("postvakt.server.services", "App.start_committer.*", HANDOFFS),
    Rule("postvakt.server.commit_client", "*", HANDOFFS),
    # The front wakes the queue manager after each commit.
    Rule("postvakt.server.manager_process", "*", HANDOFFS, "front"),
    # The manager looks recipients up to expand them and to find their Maildirs.
    Rule("postvakt.directory", "*", MANAGER, "manager"),
    Rule("postvakt.directory.*", "*", MANAGER, "manager"),
    # Who may send what to whom: restrictions, limits, grants, address parsing.
    Rule("postvakt.server.smtp", "SMTPSession._client*", POLICY),
    Rule("postvakt.server.smtp", "SMTPSession._counts*", POLICY),
    Rule("postvakt.policy.*", "*", POLICY),
    Rule("postvakt.address", "*", POLICY),
    Rule("postvakt.net", "*", POLICY),
    Rule("postvakt.server.limits", "*", POLICY),
    Rule("postvakt.grants", "*", POLICY),
    Rule("postvakt.grants.*", "*", POLICY),
    Rule("postvakt.store", "*", POLICY),
    Rule("postvakt.store.*", "*", POLICY),
    Rule("postvakt.directory", "*", POLICY),
    Rule("postvakt.directory.*", "*", POLICY),
    Rule("postvakt.auth", "*", POLICY),
    Rule("postvakt.auth.*", "*", POLICY),
    # The sans-IO protocol core and the reply values it produces.
    Rule("postvakt.smtp", "*", SMTP_CORE),
    Rule("postvakt.smtp.*", "*", SMTP_CORE),
    Rule("postvakt.reply", "*", SMTP_CORE, "front"),
    # The rest of the SMTP side of the server: the asyncio protocol, accepting
    # connections, TLS and PROXY handshakes, slots.
    Rule("postvakt.server.smtp", "*", ADAPTER),
    Rule("postvakt.server.accept", "*", ADAPTER),
    Rule("postvakt.server.listeners", "*", ADAPTER),
    Rule("postvakt.server.handshake", "*", ADAPTER),
    Rule("postvakt.server.proxy", "*", ADAPTER),
    Rule("postvakt.proxyproto", "*", ADAPTER),
    # The queue in the front: writing the queue file, its envelope, the commit.
    Rule("postvakt.queue", "*", COMMIT, "front"),
    Rule("postvakt.queue.*", "*", COMMIT, "front"),
    # The queue in the manager: reading and removing queue files, Maildir
    # copies, and the rest of its work (loading, scheduling, delivery status).
    Rule("postvakt.queue.spool", "*", QUEUE_FILES, "manager"),
    Rule("postvakt.queue.envelope", "*", QUEUE_FILES, "manager"),
    Rule("postvakt.delivery.maildir", "*", MAILDIR),
    Rule("postvakt.mailbox", "*", MAILDIR),
    Rule("postvakt.mailbox.*", "*", MAILDIR),
    # Relayed mail: the outbound client and what picks its destination and
    # connection; the message's pieces (`delivery.source`) count for the client.
    Rule("postvakt.delivery.smtpclient", "*", SMTP_CLIENT, "manager"),
    Rule("postvakt.delivery.source", "*", SMTP_CLIENT, "manager"),
    Rule("postvakt.reply", "*", SMTP_CLIENT, "manager"),
    Rule("postvakt.delivery.remote", "*", REMOTE, "manager"),
    Rule("postvakt.delivery.resolver", "*", REMOTE, "manager"),
    Rule("postvakt.queue", "*", MANAGER),
    Rule("postvakt.queue.*", "*", MANAGER),
    Rule("postvakt.delivery", "*", MANAGER),
    Rule("postvakt.delivery.*", "*", MANAGER),
    Rule("postvakt.server.manager_process", "*", MANAGER),
    Rule("postvakt.server.notify", "*", MANAGER),
    # Passing work between the event loop and threads.
    Rule("concurrent.futures.*", "*", HANDOFFS),
    Rule("threading", "*", HANDOFFS),
    Rule("queue", "*", HANDOFFS),
    Rule("asyncio.futures", "*", HANDOFFS),
    Rule("asyncio.locks", "*", HANDOFFS),
    Rule("asyncio.base_events", "*.run_in_executor", HANDOFFS),
    Rule("asyncio.base_events", "*.call_soon_threadsafe", HANDOFFS),
    Rule("asyncio.threads", "*", HANDOFFS),
    Rule("uvloop.*", "*.run_in_executor", HANDOFFS),
    Rule("uvloop.*", "*.call_soon_threadsafe", HANDOFFS),
    # The client's stream reader and writer and the timeouts around each read.
    Rule("asyncio.streams", "*", STREAMS, "manager"),
    Rule("asyncio.timeouts", "*", STREAMS, "manager"),
    # The event loop itself: callbacks, task steps, transports.
    Rule("asyncio", "*", ASYNCIO),
    Rule("asyncio.*", "*", ASYNCIO),
    Rule("uvloop", "*", ASYNCIO),
    Rule("uvloop.*", "*", ASYNCIO),
    Rule("selectors", "*", ASYNCIO),
    Rule("ssl", "*", ASYNCIO),
)

# ---------------------------------------------------------------- stacks


def source_roots() -> list[str]:
    """Directories that module names are relative to, longest first."""
    roots = {p for p in sys.path if p and os.path.isdir(p)}
    roots |= {v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "purelib", "platlib")}
    spec = importlib.util.find_spec("postvakt")
    if spec is not None and spec.origin is not None:
        roots.add(str(Path(spec.origin).parent.parent))
    roots.add(str(run.HERE.parent / "src"))
    return sorted((r.rstrip("/") + "/" for r in roots), key=len, reverse=True)


def module_name(filename: str, roots: list[str]) -> str:
    """`/x/src/postvakt/server/smtp.py` -> `postvakt.server.smtp`."""
    rel = filename
    for root in roots:
        if filename.startswith(root):
            rel = filename[len(root) :]
            break
    rel = rel.lstrip("/")
    for suffix in (".py", ".pyx", ".pxi"):
        if rel.endswith(suffix):
            rel = rel[: -len(suffix)]
            break
    parts = [p for p in rel.split("/") if p]
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def parse_frame(frame: str, roots: list[str]) -> tuple[str, str]:
    """py-spy's `function (file:line)` -> (module, function)."""
    function, sep, where = frame.rpartition(" (")
    if not sep:
        return "", frame
    filename = where.rstrip(")").rsplit(":", 1)[0]
    return module_name(filename, roots), function


def match(module: str, function: str, process: Process) -> Rule | None:
    for rule in CATEGORY_RULES:
        if rule.process not in (None, process):
            continue
        if fnmatchcase(module, rule.module) and fnmatchcase(function, rule.function):
            return rule
    return None


def categorize(frames: list[tuple[str, str]], process: Process) -> str:
    """The category of one sample; `frames` run from the outermost to the innermost."""
    innermost: Rule | None = None
    for module, function in reversed(frames):
        rule = match(module, function, process)
        if rule is None:
            continue
        if rule.callees:
            return rule.category
        innermost = innermost or rule
    return innermost.category if innermost is not None else OTHER


def read_samples(path: Path, process: Process) -> collections.Counter[str]:
    """Samples per category from py-spy's raw (collapsed stack) output."""
    roots = source_roots()
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        # An empty stack: the lock was held with no Python frame to show.
        frames = [parse_frame(f, roots) for f in stack.split(";")] if stack else []
        counts[categorize(frames, process)] += int(n)
    return counts


# ---------------------------------------------------------------- the run


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found is None:
        beside = Path(sys.executable).parent / "py-spy"
        if os.access(beside, os.X_OK):
            found = str(beside)
    return found


def record(spy: str, pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [spy, "record", "--gil", "--nonblocking", "--full-filenames", "--format", "raw"]
        + ["--rate", str(SAMPLE_RATE), "--pid", str(pid), "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(spy: subprocess.Popen[bytes], what: str) -> None:
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
        raise BenchError(f"py-spy on the {what} did not stop") from None
    if spy.returncode not in (0, -signal.SIGINT):
        raise BenchError(f"py-spy on the {what} failed: {err.decode(errors='replace').strip()}")


def cpu(pid: int) -> float:
    u, s = user_system(pid)
    return u + s


def measure(
    spy: str, messages: int, reuse: bool, relay: bool, root: Path
) -> dict[str, dict[str, object]]:
    sink = Sink(free_port())
    server = Postvakt(root / "postvakt", sink.port)
    spies: dict[Process, subprocess.Popen[bytes]] = {}
    raw: dict[Process, Path] = {p: root / f"{p}.raw" for p in ("front", "manager")}
    try:
        manager = start_warm(sink, server, reuse=reuse, relay=relay)
        assert server.proc is not None
        pids: dict[Process, int] = {
            "front": server.proc.pid,
            "manager": manager,
        }
        for p, pid in pids.items():
            spies[p] = record(spy, pid, raw[p])
        time.sleep(ATTACH_SECONDS)
        for p in list(spies):
            if spies[p].poll() is not None:
                finish(spies.pop(p), p)
                raise BenchError(f"py-spy on the {p} exited at once")
        before = {p: cpu(pid) for p, pid in pids.items()}
        send_through(server, sink, messages, reuse=reuse, relay=relay)
        after = {p: cpu(pid) for p, pid in pids.items()}
        for p, s in spies.items():
            finish(s, p)
        spies.clear()
    finally:
        for p, s in spies.items():
            try:
                finish(s, p)
            except BenchError as e:
                print(f"bench: {e}", file=sys.stderr)
        server.stop()
        sink.stop()
    out: dict[str, dict[str, object]] = {}
    for p in pids:
        counts = read_samples(raw[p], p)
        total = sum(counts.values())
        if total == 0:
            raise BenchError(f"py-spy recorded no sample of the {p} holding the GIL")
        ms = (after[p] - before[p]) / messages * 1000
        out[p] = {
            "cpu_ms_per_message": round(ms, 3),
            "samples": total,
            "categories": {
                c: {"share": round(n / total, 4), "ms_per_message": round(ms * n / total, 3)}
                for c, n in ordered(counts)
            },
        }
    return out


def ordered(counts: collections.Counter[str]) -> list[tuple[str, int]]:
    """Largest first; "other" last."""
    return sorted(counts.items(), key=lambda kv: (kv[0] == OTHER, -kv[1]))


def table(result: dict[str, dict[str, object]]) -> str:
    lines = ["| process | category | share | ms per message |", "|---|---|---:|---:|"]
    for p, r in result.items():
        cats = r["categories"]
        assert isinstance(cats, dict)
        for c, v in cats.items():
            lines.append(f"| {p} | {c} | {v['share']:.0%} | {v['ms_per_message']:.2f} |")
        lines.append(f"| {p} | **all** | | **{r['cpu_ms_per_message']:.2f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--reuse", action="store_true", help="smtp-source -d: connection reuse")
    ap.add_argument(
        "--relay", action="store_true", help="to a foreign domain, relayed to smtp-sink"
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--keep", type=Path, help="copy py-spy's raw stacks into this directory")
    args = ap.parse_args(argv)
    if args.messages < 1:
        raise BenchError("--messages must be at least 1")
    spy = py_spy()
    if spy is None:
        raise BenchError("py-spy not found: pip install py-spy")
    if not os.access(run.SMTP_SOURCE, os.X_OK):
        raise BenchError(f"{run.SMTP_SOURCE} not found: install Debian's postfix package")
    tmp = Path(tempfile.mkdtemp(prefix="postvakt-cpubudget-"))
    load = [os.getloadavg()[0]]
    try:
        result = measure(spy, args.messages, args.reuse, args.relay, tmp)
        load.append(os.getloadavg()[0])
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for p in ("front", "manager"):
                shutil.copy(tmp / f"{p}.raw", args.keep / f"{p}.raw")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for p, r in result.items():
        print(
            f"  {p}: {r['cpu_ms_per_message']:.3f} ms CPU per message, {r['samples']} samples",
            file=sys.stderr,
        )
    print(
        f"  {args.messages} messages, {'connection reuse' if args.reuse else '1 per connection'}, "
        f"{'relayed to smtp-sink' if args.relay else 'local'}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load average {load[0]:.1f} before, {load[1]:.1f} after",
        file=sys.stderr,
    )
    if args.json:
        out = {
            "messages": args.messages,
            "reuse": args.reuse,
            "relay": args.relay,
            "load_average": load,
            **result,
        }
        print(json.dumps(out))
    else:
        print(table(result))
    return 0


if __name__ == "__main__":
    run.entry(main)
