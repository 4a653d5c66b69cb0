"""Power loss, not just SIGKILL: the on-disk states a crash of the machine may
leave after each file-system operation of a live `postvakt serve`, recovered
by the real queue manager.

A SIGKILL keeps the page cache, so it cannot tell a missing fsync. Here the
server runs under strace; `crashstates` rebuilds, from the recorded calls,
every file tree the persistence model allows (only what a completed fsync made
durable, plus any prefix of the rest, a torn last write, one directory change
reordered ahead). On each tree the queue manager starts (its recovery, then
delivery), and then every message that got a 250 must sit intact in the
Maildir, and nothing else than whole messages may be there.

The same trace also serves the Maildir delivery: a power loss after the queue
dropped its copy must find the Maildir copy on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from crashstates import STRACE_ARGS, CrashState, Trace, crash_states, describe, parse
from postvakt import config as config_mod
from postvakt.config import Config
from postvakt.directory import Directory
from postvakt.queue import Queue
from postvakt.queue.manager import QueueManager
from support import LOCAL_DOMAIN, Running, write_server_config

BOB = f"bob@{LOCAL_DOMAIN}"
# Two small messages and one beyond the queue's 64 KiB write buffer, so that a
# queue file is written in more than one piece.
SIZES = (1, 3, 1400)
QUEUE_DIRS = ("incoming", "active", "deferred", "hold")


def body(n: int) -> bytes:
    lines = [f"crash-{n} line {i:05d} " + "x" * 48 for i in range(SIZES[n])]
    return ("\r\n".join(lines) + "\r\n").encode()


def message(n: int) -> bytes:
    return f"From: load@{LOCAL_DOMAIN}\r\nTo: {BOB}\r\nSubject: crash-{n}\r\n\r\n".encode() + body(
        n
    )


@dataclass
class Recorded:
    trace: Trace
    data_dir: Path
    config_path: Path
    qid_to_n: dict[str, int]
    pristine: Path  # the data dir without queue/ and mail/: users, keys


def _wait(check, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    tmp = tmp_path_factory.mktemp("power-loss")
    cfg, data = write_server_config(tmp)
    Running(cfg, data).add_user(BOB, "secret-bob")
    trace_path = tmp / "trace"
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - handed to the child
    strace = subprocess.Popen(
        [*STRACE_ARGS, "-o", str(trace_path), sys.executable, "-m", "postvakt", "serve"]
        + ["--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    serve_pid = 0
    qid_to_n: dict[str, int] = {}
    try:
        _wait(lambda: (data / "listening.json").exists() or strace.poll() is not None, "start")
        assert strace.poll() is None, (tmp / "server.log").read_text()
        # strace's one child is the server (its queue manager is the server's child).
        serve_pid = int(
            Path(f"/proc/{strace.pid}/task/{strace.pid}/children").read_text().split()[0]
        )
        _wait(lambda: _listening(data) is not None, "listening.json")
        port = _listening(data)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.ehlo("client.test")
            for n in range(len(SIZES)):
                assert s.mail(f"load@{LOCAL_DOMAIN}")[0] == 250
                assert s.rcpt(BOB)[0] == 250
                code, text = s.data(message(n))
                assert code == 250, text
                qid_to_n[text.decode().rsplit(" ", 1)[1]] = n
        bob = data / "mail" / LOCAL_DOMAIN / "bob" / "new"
        _wait(lambda: bob.is_dir() and len(os.listdir(bob)) == len(SIZES), "delivery")
        queue = data / "queue"
        _wait(lambda: not any(os.listdir(queue / d) for d in QUEUE_DIRS), "an empty queue")
    finally:
        if serve_pid:
            os.kill(serve_pid, signal.SIGTERM)
        try:
            strace.wait(60)
        except subprocess.TimeoutExpired:
            strace.kill()
            strace.wait()
    roots = (str(data / "queue"), str(data / "mail"))
    trace = parse(trace_path.read_text(), roots)
    assert {o.qid for o in trace.ops if o.kind == "ack"} == set(qid_to_n), "acks not in the trace"
    pristine = tmp / "pristine"
    shutil.copytree(data, pristine, ignore=shutil.ignore_patterns("queue", "mail", "*.log"))
    return Recorded(trace, data, cfg, qid_to_n, pristine)


def _listening(data: Path) -> int | None:
    try:
        return int(json.loads((data / "listening.json").read_text())["smtp"][0].rsplit(":", 1)[1])
    except (OSError, ValueError, KeyError):
        return None


def _materialize(rec: Recorded, state: CrashState) -> None:
    for sub in ("queue", "mail"):
        shutil.rmtree(rec.data_dir / sub, ignore_errors=True)
    for d in ("tmp", *QUEUE_DIRS, "corrupt", "status"):
        (rec.data_dir / "queue" / d).mkdir(parents=True, exist_ok=True)
    for path, data in state.files.items():
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


async def _recover_and_deliver(config: Config, directory: Directory) -> None:
    """What a restart does: the queue manager's recovery, then its deliveries.
    (The user directory lives outside queue/ and mail/, so one serves all runs.)"""
    queue = Queue(config.data_dir / "queue")
    manager = QueueManager(config, directory, queue)
    await manager.start()
    try:
        deadline = time.monotonic() + 30
        while any(queue.ids(d) for d in ("incoming", "active")) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        await manager.stop(10)


def _mailbox(rec: Recorded) -> list[tuple[str, bytes]]:
    root = rec.data_dir / "mail" / LOCAL_DOMAIN / "bob"
    out = []
    for sub in ("new", "cur"):
        if (root / sub).is_dir():
            out += [(f"{sub}/{p.name}", p.read_bytes()) for p in sorted((root / sub).iterdir())]
    return out


def _problems(rec: Recorded, state: CrashState) -> list[str]:
    problems = []
    found: dict[int, int] = {}
    for name, raw in _mailbox(rec):
        head, sep, text = raw.partition(b"\n\n")
        subject = [ln for ln in head.split(b"\n") if ln.startswith(b"Subject: crash-")]
        n = int(subject[0].split(b"-")[1]) if subject and sep else -1
        if n < 0 or text != body(n).replace(b"\r\n", b"\n"):
            problems.append(f"half-written message delivered: {name} ({len(raw)} bytes)")
            continue
        found[n] = found.get(n, 0) + 1
    for qid in sorted(state.acked):
        n = rec.qid_to_n[qid]
        if n not in found:
            problems.append(f"message {qid} (crash-{n}) got a 250 and is not in the Maildir")
    queue = Queue(rec.data_dir / "queue")
    for d in ("incoming", "active", "deferred", "corrupt"):
        if queue.ids(d):
            problems.append(f"left in queue/{d}/ after recovery: {queue.ids(d)}")
    return problems


def _phase(trace: Trace, k: int) -> str:
    """Which write path the operation just before crash point k belongs to."""
    if k == 0:
        return "commit"
    o = trace.ops[k - 1]
    if o.kind == "ack" or "/queue/tmp/" in o.path or o.path.endswith("/queue/incoming"):
        return "commit"
    return "delivery"


def _run(rec: Recorded, phase: str) -> None:
    points = [k for k in range(len(rec.trace.ops) + 1) if _phase(rec.trace, k) == phase]
    states = crash_states(rec.trace, points)
    assert states, "no crash states: the trace holds no operations of this path"
    failures = []
    config = config_mod.load(rec.config_path)
    directory = Directory.for_config(config)
    try:
        for state in states:
            _materialize(rec, state)
            asyncio.run(_recover_and_deliver(config, directory))
            if problems := _problems(rec, state):
                failures.append(
                    f"power loss after operation {state.at} ({state.how}):\n"
                    + describe(rec.trace, state.at)
                    + "\n  -> "
                    + "\n  -> ".join(problems)
                )
    finally:
        directory.close()
    assert not failures, f"{len(failures)} of {len(states)} crash states:\n" + "\n".join(
        failures[:5]
    )


def test_trace_holds_the_whole_write_path(recorded: Recorded) -> None:
    """The recorder saw what the model needs: each message's fsyncs, its commit
    rename, its 250, and its Maildir link."""
    kinds = [o.kind for o in recorded.trace.ops]
    n = len(SIZES)
    assert kinds.count("ack") == n
    assert sum(1 for o in recorded.trace.ops if o.kind == "link" and "/new/" in o.dst) == n
    commits = [o for o in recorded.trace.ops if o.kind == "rename" and "/incoming/" in o.dst]
    assert len(commits) == n
    # The messages are sent one after another: a queue-file fsync and an
    # incoming/ fsync for each. Each delivery fsyncs its Maildir file, and new/
    # once for each group of deliveries (as many as the messages at most).
    data = f"{recorded.data_dir}/"
    fsynced = [
        o.path.rstrip("/").removeprefix(data) for o in recorded.trace.ops if o.kind == "fsync"
    ]
    incoming = [p for p in fsynced if p == "queue/incoming"]
    new_dirs = [p for p in fsynced if p.startswith("mail/") and p.endswith("/new")]
    queue_files = [p for p in fsynced if p.startswith("queue/tmp/")]
    maildir_files = [p for p in fsynced if p.startswith("mail/") and "/tmp/" in p]
    assert len(queue_files) == n and len(incoming) == n and len(maildir_files) == n
    assert 1 <= len(new_dirs) <= n
    assert len(fsynced) == 3 * n + len(new_dirs)


def test_power_loss_during_queue_commit(recorded: Recorded) -> None:
    _run(recorded, "commit")


def test_power_loss_during_maildir_delivery(recorded: Recorded) -> None:
    _run(recorded, "delivery")


COMMITTER = """
import sys
from postvakt.queue import Envelope, Queue, QueueWriteError, Recipient
q = Queue(sys.argv[1])
m = q.new_message()
m.write(b"Subject: dir fsync\\r\\n\\r\\nbody\\r\\n")
try:
    m.commit(Envelope("a@pv.test", (Recipient("b@pv.test"),), 1.0, "127.0.0.1", "h", None))
except QueueWriteError as e:
    print(m.queue_id, e.reply.code, e.reply.enhanced, e.reply.text)
    sys.exit(3)
print(m.queue_id, "committed")
"""


def test_rename_done_but_directory_fsync_failed_gives_451_and_no_message(tmp_path: Path) -> None:
    """The commit's rename succeeded, then fsync(incoming/) failed (a real EIO,
    injected into the system call by strace): the client gets a 451, so the
    message must not stay in incoming/ to be delivered besides the resend."""
    root = tmp_path / "queue"
    Queue(root)
    log = tmp_path / "trace"
    p = subprocess.run(
        ["strace", "-f", "-qq", "-o", str(log), "-e", "trace=fsync,rename,unlink"]
        + ["-e", "inject=fsync:error=EIO:when=2", sys.executable, "-c", COMMITTER, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 3, p.stdout + p.stderr
    qid, reply = p.stdout.split(" ", 1)
    assert reply.strip() == "451 4.3.0 Queue file write error"
    calls = [ln.split(" ", 1)[1].strip() for ln in log.read_text().splitlines()]
    calls = [c for c in calls if "ENOENT" not in c]  # abort's unlink of the gone tmp name
    # The path under test was taken: file fsync, the commit rename, the failed
    # directory fsync, then the rename undone.
    assert [c.split("(")[0] for c in calls] == ["fsync", "rename", "fsync", "unlink"], calls
    assert calls[1].endswith("= 0") and f"incoming/{qid}" in calls[1]
    assert "EIO" in calls[2] and "(INJECTED)" in calls[2]
    assert calls[3].endswith("= 0") and f"incoming/{qid}" in calls[3]
    q = Queue(root)
    q.recover()
    assert {d: q.ids(d) for d in ("tmp", *QUEUE_DIRS, "corrupt")} == {
        d: [] for d in ("tmp", *QUEUE_DIRS, "corrupt")
    }
