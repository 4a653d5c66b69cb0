"""Crash safety of the real server: SIGKILL under load, every crash point of
the write path, and a failing disk. Nothing that got a 250 may be lost."""

from __future__ import annotations

import os
import random
import re
import resource
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from smallfs import fill, small_fs
from support import (
    LOCAL_DOMAIN,
    Running,
    SmtpSink,
    maildir_messages,
    start_server,
    write_server_config,
)

BOB = f"bob@{LOCAL_DOMAIN}"
REMOTE = "other.example"
SEQ = re.compile(rb"^X-Seq: (\S+)\r?$", re.M)
QUEUE_STATES = ("incoming", "active", "deferred")
# How many kill/restart rounds; the anchor asks for 50-100 in a soak run
# (POSTVAKT_CRASH_ROUNDS=50), a normal test run does a few.
ROUNDS = int(os.environ.get("POSTVAKT_CRASH_ROUNDS", "2"))


def message(seq: str, to: str) -> str:
    return f"From: load@{LOCAL_DOMAIN}\r\nTo: {to}\r\nSubject: load {seq}\r\nX-Seq: {seq}\r\n\r\nmessage {seq}\r\n"


def drained(srv: Running) -> bool:
    q = srv.data_dir / "queue"
    return not any(any((q / s).iterdir()) for s in QUEUE_STATES)


def wait_drained(srv: Running, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if drained(srv):
            return
        time.sleep(0.2)
    raise AssertionError("queue did not drain:\n" + srv.log()[-3000:])


def delivered(srv: Running, sink: SmtpSink) -> Counter[str]:
    seen: Counter[str] = Counter()
    for raw in maildir_messages(srv.data_dir, BOB):
        seen.update(m.decode() for m in SEQ.findall(raw))
    for text in sink.messages():
        seen.update(m.decode() for m in SEQ.findall(text.encode()))
    return seen


def load(port: int, stop: threading.Event, acked: set[str], sent: set[str], client: int) -> None:
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                while not stop.is_set():
                    seq = f"c{client}-{n}"
                    n += 1
                    to = BOB if n % 2 else f"friend@{REMOTE}"
                    sent.add(seq)
                    s.sendmail(f"load@{LOCAL_DOMAIN}", [to], message(seq, to))
                    acked.add(seq)
        except (OSError, smtplib.SMTPException):
            if stop.is_set():
                return
            time.sleep(0.05)


def refused_while_full(
    port: int, full_disk: Path, round_: int, acked: set[str], sent: set[str]
) -> None:
    """Send on the full disk until the front refuses with a 4xx (deliveries free
    space as they finish, so a message may still fit: it is then tracked as acked)."""
    deadline = time.monotonic() + 60
    n = 0
    while time.monotonic() < deadline:
        fill(full_disk)  # top up what deliveries freed
        seq = f"full{round_}-{n}"
        n += 1
        sent.add(seq)
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.sendmail(f"load@{LOCAL_DOMAIN}", [BOB], message(seq, BOB))
            acked.add(seq)
        except smtplib.SMTPResponseException as e:
            # 452 at MAIL (no room for a message) or 451 4.3.0 at the end of DATA.
            assert 400 <= e.smtp_code < 500, e
            return
        except smtplib.SMTPRecipientsRefused as e:
            assert all(400 <= code < 500 for code, _ in e.recipients.values()), e
            return
        except (OSError, smtplib.SMTPException):
            time.sleep(0.1)
    raise AssertionError("the full queue disk never made the front refuse a message")


def soak(tmp_path: Path, full_disk: Path | None = None) -> None:
    """Rounds of load, SIGKILL, restart; with `full_disk` (the queue's own small
    file system) it is also filled up in each round: the front must answer
    451 rather than 250, the queue manager must keep every message it holds,
    and once there is room again all of it is delivered."""
    sink = SmtpSink(tmp_path)
    srv = start_server(
        tmp_path, users={BOB: "x"}, delivery={"routes": {REMOTE: f"127.0.0.1:{sink.port}"}}
    )
    acked: set[str] = set()
    sent: set[str] = set()
    try:
        for r in range(ROUNDS):
            stop = threading.Event()
            port = srv.port("smtp")
            clients = [
                threading.Thread(target=load, args=(port, stop, acked, sent, i + 100 * r))
                for i in range(10)
            ]
            for t in clients:
                t.start()
            time.sleep(random.uniform(1.0, 2.5))
            filler = None
            if full_disk is not None:
                filler = fill(full_disk)  # the queue's file system is full from here on
                refused_while_full(port, full_disk, r, acked, sent)
                time.sleep(random.uniform(0.2, 1.0))
                if r % 2:
                    filler.unlink()  # room again while the server runs
                    filler = None
                    time.sleep(random.uniform(0.2, 0.8))
            srv.kill()  # SIGKILL in the middle of the load
            stop.set()
            for t in clients:
                t.join(30)
            if filler is not None:
                filler.unlink()
            srv.start()
        wait_drained(srv)
        time.sleep(0.5)
        seen = delivered(srv, sink)
    finally:
        srv.stop()
        sink.stop()
    assert len(acked) > 50, "the load did not get going"
    lost = acked - set(seen)
    dupes = sum(c - 1 for c in seen.values() if c > 1)
    print(f"acked={len(acked)} delivered={len(seen)} duplicates={dupes} rounds={ROUNDS}")
    assert not lost, f"{len(lost)} messages got a 250 and were lost: {sorted(lost)[:10]}"
    assert set(seen) <= sent  # nothing invented


def test_sigkill_under_load_loses_nothing_that_got_250(tmp_path: Path) -> None:
    soak(tmp_path)


def test_sigkill_under_load_with_a_full_queue_disk_loses_nothing(tmp_path: Path) -> None:
    with small_fs(tmp_path / "data" / "queue", "16m") as queue_fs:
        soak(tmp_path, full_disk=queue_fs)


def send_one(port: int, seq: str) -> str:
    """Send one message; 'acked' if it got the 250, else 'failed'."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.sendmail(f"load@{LOCAL_DOMAIN}", [BOB], message(seq, BOB))
        return "acked"
    except (OSError, smtplib.SMTPException):
        return "failed"


@pytest.mark.parametrize(
    ("point", "delivered_after_restart"),
    [
        ("after_write", False),
        ("after_fsync", False),
        ("after_rename", True),
        ("before_250", True),
        ("after_250", True),
    ],
)
def test_crash_point_recovery_through_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str, delivered_after_restart: bool
) -> None:
    monkeypatch.setenv("POSTVAKT_CRASH_AT", point)
    srv = start_server(tmp_path, users={BOB: "x"})
    try:
        outcome = send_one(srv.port("smtp"), point)
        srv.proc.wait(20)  # type: ignore[union-attr]
        assert srv.proc.returncode == 137  # type: ignore[union-attr]
        assert outcome == ("acked" if point == "after_250" else "failed")
        q = srv.data_dir / "queue"
        before = {s: sorted(os.listdir(q / s)) for s in ("tmp", "incoming")}
        assert bool(before["tmp"]) is not delivered_after_restart
        assert bool(before["incoming"]) is delivered_after_restart
        monkeypatch.delenv("POSTVAKT_CRASH_AT")
        recoveries = srv.log().count("queue recovery:")
        srv.start()
        # The queue manager recovers the spool after the listeners are up: wait for it.
        deadline = time.monotonic() + 60
        while srv.log().count("queue recovery:") == recoveries:
            assert time.monotonic() < deadline, "no queue recovery after restart"
            time.sleep(0.1)
        wait_drained(srv)
        time.sleep(0.5)
        got = [m for m in maildir_messages(srv.data_dir, BOB) if f"X-Seq: {point}".encode() in m]
        assert len(got) == (1 if delivered_after_restart else 0)
        assert os.listdir(q / "tmp") == [] and os.listdir(q / "corrupt") == []
        if got:
            assert got[0].endswith(f"message {point}\n".encode())  # complete, not truncated
    finally:
        srv.stop()


def test_committer_killed_in_the_middle_of_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: the server dies after the first rename of a batch of two or
    more, before the directory fsync that acknowledges them. Every message that
    got a 250 is delivered after the restart; none of the batch was acknowledged."""
    monkeypatch.setenv("POSTVAKT_CRASH_AT", "mid_batch")
    srv = start_server(tmp_path, users={BOB: "x"})
    port = srv.port("smtp")
    outcomes: dict[str, str] = {}

    def sender(client: int) -> None:
        n = 0
        while srv.proc is not None and srv.proc.poll() is None and n < 200:
            seq = f"b{client}-{n}"
            n += 1
            outcomes[seq] = send_one(port, seq)

    try:
        clients = [threading.Thread(target=sender, args=(i,)) for i in range(20)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(120)
        assert srv.proc is not None
        # Twenty parallel senders make batches; the first of two or more kills the server.
        assert srv.proc.wait(30) == 137, "no batch of two or more was committed"
        acked = {seq for seq, how in outcomes.items() if how == "acked"}
        monkeypatch.delenv("POSTVAKT_CRASH_AT")
        srv.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (drained(srv) and acked <= _seqs(srv)):
            time.sleep(0.2)
        seen = _seqs(srv)
        q = srv.data_dir / "queue"
        assert os.listdir(q / "tmp") == [] and os.listdir(q / "corrupt") == []
    finally:
        srv.stop()
    lost = acked - seen
    assert not lost, f"{len(lost)} messages got a 250 and were lost: {sorted(lost)[:10]}"
    assert seen <= set(outcomes)


def _seqs(srv: Running) -> set[str]:
    return {m.decode() for raw in maildir_messages(srv.data_dir, BOB) for m in SEQ.findall(raw)}


def test_failing_disk_gives_451_never_250(tmp_path: Path) -> None:
    """A file size limit on the server process makes queue writes fail (EFBIG)
    the way a full disk does (ENOSPC): the client must get 451 4.3.0."""
    cfg_path, data_dir = write_server_config(tmp_path)
    srv = Running(cfg_path, data_dir)
    limit = 512 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        srv.start()  # the child inherits the limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    try:
        srv.add_user(BOB, "x")
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as s:
            big = message("big", BOB) + ("x" * 998 + "\r\n") * 1500  # ~1.5 MB
            with pytest.raises(smtplib.SMTPDataError) as e:
                s.sendmail(f"load@{LOCAL_DOMAIN}", [BOB], big)
            assert e.value.smtp_code == 451
            assert b"4.3.0" in e.value.smtp_error
            # The server lives on and takes a message that fits.
            s.sendmail(f"load@{LOCAL_DOMAIN}", [BOB], message("small", BOB))
        wait_drained(srv)
        msgs = maildir_messages(srv.data_dir, BOB)
        assert [b"X-Seq: small" in m for m in msgs] == [True]
        q = srv.data_dir / "queue"
        assert os.listdir(q / "tmp") == []
    finally:
        srv.stop()
