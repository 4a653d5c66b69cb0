"""The spool: commit point, abort, write errors, crash points, recovery."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from postvakt.queue import Envelope, Queue, QueueWriteError, Recipient, spool
from postvakt.queue.envelope import DONE, Status, Unit
from postvakt.queue.spool import INCOMING, CorruptEntry, commit_batch
from postvakt.reply import Reply

BODY = b"Received: from client\r\nSubject: s\r\n\r\nhello\r\n"


def env(**kw: object) -> Envelope:
    base: dict[str, object] = dict(
        sender="alice@pv.test",
        recipients=(
            Recipient("bob@pv.test"),
            Recipient("carol@other.example", "rfc822;carol@other.example", ("FAILURE",)),
        ),
        received_at=1_700_000_000.0,
        client_ip="127.0.0.1",
        helo="client.test",
        login="alice@pv.test",
    )
    base.update(kw)
    return Envelope(**base)  # type: ignore[arg-type]


def files(q: Queue) -> dict[str, list[str]]:
    return {
        d: sorted(os.listdir(q.root / d))
        for d in ("tmp", "incoming", "active", "deferred", "hold", "corrupt", "status")
    }


def test_commit_is_a_single_rename_into_incoming(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    m = q.new_message()
    for chunk in (BODY[:5], BODY[5:]):
        m.write(chunk)
    # A small message is kept in memory: its file is made by the commit.
    assert files(q)["tmp"] == [] and files(q)["incoming"] == []
    e = env(smtputf8=True, body="8BITMIME", ret="HDRS", envid="x1")
    m.commit(e)
    assert files(q)["tmp"] == [] and files(q)["incoming"] == [m.queue_id]
    loaded = q.load(m.queue_id, INCOMING)
    assert loaded.envelope == e
    assert q.read_body(loaded) == BODY
    m.abort()  # after commit: a no-op
    assert files(q)["incoming"] == [m.queue_id]


def test_hold_at_commit(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    m = q.new_message()
    m.write(BODY)
    m.commit(env(hold="outbound limit for alice@pv.test"))
    assert files(q)["hold"] == [m.queue_id] and files(q)["incoming"] == []


def test_abort_removes_everything_and_is_idempotent(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    m = q.new_message()
    m.write(BODY)
    m.abort()
    m.abort()
    assert all(v == [] for v in files(q).values())
    with pytest.raises(QueueWriteError):
        m.write(b"more")


def test_queue_ids_unique_and_time_sortable(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    ids = []
    for _ in range(200):
        m = q.new_message()
        ids.append(m.queue_id)
        m.abort()
    assert len(set(ids)) == 200
    assert ids == sorted(ids)


def test_a_message_past_the_spill_size_is_written_to_its_locked_tmp_file(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    m = q.new_message()
    head = b"Subject: big\r\n\r\n"
    m.write(head)
    assert files(q)["tmp"] == [] and m.read_back() == head
    body = b"z" * spool.SPILL
    m.write(body)
    tmp = q.root / "tmp" / m.queue_id
    assert files(q)["tmp"] == [m.queue_id]
    assert m.read_back() == head + body
    # The writer's flock tells recovery this file is alive.
    assert q.recover().removed_tmp == 0 and tmp.exists()
    m.commit(env())
    assert files(q)["tmp"] == [] and files(q)["incoming"] == [m.queue_id]
    assert q.read_body(q.load(m.queue_id, INCOMING)) == head + body


def test_an_aborted_small_message_never_touches_the_disk(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    (q.root / "tmp").rename(q.root / "tmp-gone")  # no file could be made there
    m = q.new_message()
    m.write(BODY)
    assert m.read_back() == BODY
    m.abort()
    with pytest.raises(QueueWriteError):
        m.write(BODY)
    (q.root / "tmp-gone").rename(q.root / "tmp")
    assert all(v == [] for v in files(q).values())


def test_a_tmp_file_that_cannot_be_made_fails_the_commit(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    m = q.new_message()
    m.write(BODY)
    (q.root / "tmp").rename(q.root / "tmp-gone")
    with pytest.raises(QueueWriteError, match="cannot create"):
        m.commit(env())
    (q.root / "tmp-gone").rename(q.root / "tmp")
    assert all(v == [] for v in files(q).values())


WRITER = textwrap.dedent(
    """
    import resource, signal, sys
    from postvakt.queue import Envelope, Queue, QueueWriteError, Recipient
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    q = Queue(sys.argv[1])
    limit, chunk = int(sys.argv[2]), int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    m = q.new_message()
    try:
        m.write(b"x" * chunk)
        m.commit(Envelope("a@pv.test", (Recipient("b@pv.test"),), 1.0, "127.0.0.1", "h", None))
    except QueueWriteError as e:
        print(e.reply.code, e.reply.enhanced, e.reply.text)
        sys.exit(3)
    print("committed", m.queue_id)
    """
)


@pytest.mark.parametrize("chunk", [200_000, 4_000])  # fails in write() / in commit()
def test_full_disk_gives_451_never_a_commit(tmp_path: Path, chunk: int) -> None:
    """A file size limit makes every write past 4 KiB fail with EFBIG, as a full disk would."""
    root = tmp_path / "queue"
    Queue(root)
    p = subprocess.run(
        [sys.executable, "-c", WRITER, str(root), "4096", str(chunk)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 3, p.stdout + p.stderr
    assert p.stdout.strip() == "451 4.3.0 Queue file write error"
    assert all(v == [] for v in files(Queue(root)).values())


CRASHER = textwrap.dedent(
    """
    import sys
    from postvakt.queue import Envelope, Queue, Recipient, crash_point
    q = Queue(sys.argv[1])
    m = q.new_message()
    print(m.queue_id, flush=True)
    m.write(b"Subject: crash test\\r\\n\\r\\n" + b"y" * 100000 + b"\\r\\n")
    m.commit(Envelope("a@pv.test", (Recipient("b@pv.test"),), 1.0, "127.0.0.1", "h", None))
    crash_point("before_250")
    print("250", flush=True)
    crash_point("after_250")
    """
)


@pytest.mark.parametrize(
    ("point", "committed"),
    [
        ("after_write", False),
        ("after_fsync", False),
        ("after_rename", True),
        ("before_250", True),
        ("after_250", True),
    ],
)
def test_crash_points_recover_to_documented_state(
    tmp_path: Path, point: str, committed: bool
) -> None:
    root = tmp_path / "queue"
    Queue(root)
    p = subprocess.run(
        [sys.executable, "-c", CRASHER, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "POSTVAKT_CRASH_AT": point},
    )
    assert p.returncode == 137, p.stderr
    qid = p.stdout.split()[0]
    assert ("250" in p.stdout.split()) == (point == "after_250")
    q = Queue(root)
    r = q.recover()
    state = files(q)
    assert state["tmp"] == []
    assert state["corrupt"] == []
    if committed:
        assert r.removed_tmp == 0
        assert state["incoming"] == [qid]
        m = q.load(qid, INCOMING)
        assert q.read_body(m).endswith(b"y" * 100000 + b"\r\n")
    else:
        assert r.removed_tmp == 1
        assert state["incoming"] == []


def test_recovery_keeps_tmp_file_of_a_live_writer(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    m = q.new_message()
    m.write(BODY)
    assert q.recover().removed_tmp == 0
    m.commit(env())
    assert files(q)["incoming"] == [m.queue_id]


def commit(q: Queue, e: Envelope | None = None) -> str:
    m = q.new_message()
    m.write(BODY)
    m.commit(e or env())
    return m.queue_id


def test_interrupted_delivery_is_requeued_with_its_status(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    qid = commit(q)
    assert q.move(qid, "incoming", "active")
    st = Status(
        units=(
            Unit(0, "bob@pv.test", True, DONE, (250, "2.0.0", "ok"), "local", 1),
            Unit(1, "carol@other.example", False),
        )
    )
    q.write_status(qid, st)
    r = q.recover()
    assert r.requeued_active == 1
    assert files(q)["incoming"] == [qid] and files(q)["active"] == []
    assert q.read_status(qid) == st  # done stays done: only carol is retried


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"",  # empty
        lambda data: data[:-10],  # truncated trailer
        lambda data: data[:20],  # no trailer at all
        lambda data: data.replace(b"alice@pv.test", b"alicE@pv.test"),  # envelope bit flip
        lambda data: data + b"junk",  # trailing garbage
    ],
)
def test_corrupt_entry_is_quarantined_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage
) -> None:  # type: ignore[no-untyped-def]
    q = Queue(tmp_path / "queue")
    good = commit(q)
    bad = commit(q)
    p = q.path("incoming", bad)
    p.write_bytes(damage(p.read_bytes()))
    with caplog.at_level(logging.ERROR, logger="postvakt.queue"):
        r = q.recover()
    assert r.quarantined == 1
    assert files(q)["incoming"] == [good]
    assert files(q)["corrupt"] == [bad]
    assert any(bad in rec.getMessage() and "corrupt" in rec.getMessage() for rec in caplog.records)
    # A second start finds nothing more to do: no crash loop.
    assert q.recover().quarantined == 0


def test_body_corruption_is_detected_on_read(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    qid = commit(q)
    p = q.path("incoming", qid)
    data = bytearray(p.read_bytes())
    data[3] ^= 0x20
    p.write_bytes(bytes(data))
    m = q.load(qid, INCOMING)  # the envelope is fine
    with pytest.raises(CorruptEntry):
        q.read_body(m)


def test_orphan_status_is_removed_and_bad_status_means_nothing_done(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    (q.root / "status" / "ABCDEF").write_bytes(b"{}")
    (q.root / "status" / ".ABCDEF.123").write_bytes(b"half")
    qid = commit(q)
    (q.root / "status" / qid).write_bytes(b"{not json")
    assert q.recover().removed_status == 2
    assert files(q)["status"] == [qid]
    assert q.read_status(qid) == Status()


def test_admin_renames(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    qid = commit(q)
    assert q.hold(qid) and q.find(qid) == "hold"
    assert not q.retry(qid)  # held mail is not retried, only released
    assert q.release(qid) and q.find(qid) == "incoming"
    assert q.move(qid, "incoming", "deferred")
    assert q.retry(qid) and q.find(qid) == "incoming"
    assert q.delete(qid) and q.find(qid) is None
    assert not q.delete(qid)
    assert q.find("../../etc/passwd") is None


def test_commit_leaves_one_whole_file_in_incoming(tmp_path: Path) -> None:
    """When commit returns, incoming/ holds the complete file (its trailer and
    checksums check out) and tmp/ nothing. That it is also on disk, whatever a
    power loss does, is test_power_loss.py's part."""
    q = Queue(tmp_path / "queue")
    qid = commit(q)
    assert files(q)["tmp"] == [] and files(q)["incoming"] == [qid]
    m = q.load(qid, INCOMING)
    assert m.envelope == env()
    assert q.read_body(m) == BODY


def _filled(q: Queue, n: int) -> list:
    msgs = []
    for _ in range(n):
        m = q.new_message()
        m.write(BODY)
        msgs.append(m)
    return msgs


def test_group_commit_commits_each_message_of_a_batch(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    msgs = _filled(q, 3)
    held = env(hold="over the limit")
    errors = commit_batch([(msgs[0], env()), (msgs[1], held), (msgs[2], env())])
    assert errors == [None, None, None]
    assert files(q)["tmp"] == []
    assert files(q)["incoming"] == sorted([msgs[0].queue_id, msgs[2].queue_id])
    assert files(q)["hold"] == [msgs[1].queue_id]
    assert q.read_body(q.load(msgs[2].queue_id, INCOMING)) == BODY


def test_group_commit_a_failed_directory_fsync_undoes_only_that_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename happened but the directory fsync failed: the messages renamed
    into that directory are taken back (their clients get 451), the others stay."""
    q = Queue(tmp_path / "queue")
    msgs = _filled(q, 3)
    real = spool.fsync_dir

    def failing(path: Path | str) -> None:
        if Path(path).name == INCOMING:
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(spool, "fsync_dir", failing)
    errors = commit_batch([(msgs[0], env()), (msgs[1], env(hold="h")), (msgs[2], env())])
    assert [type(e) for e in errors] == [QueueWriteError, type(None), QueueWriteError]
    assert errors[0] is not None and "Input/output error" in errors[0].reason
    assert errors[0].reply.code == 451
    assert files(q) == {
        **{d: [] for d in ("tmp", "incoming", "active", "deferred", "corrupt", "status")},
        "hold": [msgs[1].queue_id],
    }


def test_group_commit_one_bad_message_does_not_fail_the_others(tmp_path: Path) -> None:
    q = Queue(tmp_path / "queue")
    msgs = _filled(q, 2)
    msgs[0].abort()  # its writer gave up before the batch ran
    errors = commit_batch([(msgs[0], env()), (msgs[1], env())])
    assert isinstance(errors[0], QueueWriteError) and errors[1] is None
    assert files(q)["incoming"] == [msgs[1].queue_id] and files(q)["tmp"] == []


@pytest.mark.parametrize("fill", [0, spool.WHOLE_READ - 600, spool.WHOLE_READ])
def test_open_message_reads_what_was_committed_and_checks_it(tmp_path: Path, fill: int) -> None:
    """A file shorter than WHOLE_READ is read whole in one read (the body
    comes back in memory, no descriptor stays open); a larger one keeps a
    descriptor. Both check the trailer, the envelope and the body as `load`
    and `read_body` do."""
    q = Queue(tmp_path / "queue")
    body = BODY + b"x" * fill
    m = q.new_message()
    m.write(body)
    m.commit(env())
    whole = q.path(INCOMING, m.queue_id).stat().st_size < spool.WHOLE_READ
    opened = q.open_message(m.queue_id, INCOMING)
    assert opened.msg == q.load(m.queue_id, INCOMING)
    if whole:
        assert opened.fd is None and opened.body == body
    else:
        assert opened.body is None and opened.fd is not None
        try:
            assert os.pread(opened.fd, len(body) + 1, 0) == body + env().to_json()[:1]
        finally:
            os.close(opened.fd)
    p = q.path(INCOMING, m.queue_id)
    good = p.read_bytes()
    # A flipped bit in the body, in the envelope, in the trailer; a cut file.
    trailer = len(good) - spool.FOOTER_LEN
    for damaged in (
        _flip(good, 3),
        _flip(good, len(body) + 2),
        _flip(good, trailer + 9),
        good[:-1],
    ):
        p.write_bytes(damaged)
        with pytest.raises(CorruptEntry):
            q.open_message(m.queue_id, INCOMING)
    p.unlink()
    with pytest.raises(FileNotFoundError):
        q.open_message(m.queue_id, INCOMING)


def _flip(data: bytes, i: int) -> bytes:
    b = bytearray(data)
    b[i] ^= 0x01
    return bytes(b)


def committed(q: Queue, body: bytes = BODY) -> str:
    m = q.new_message()
    m.write(body)
    m.commit(env())
    return m.queue_id


def test_a_delivered_small_messages_file_becomes_the_next_messages_file(tmp_path: Path) -> None:
    """No inode made or freed per message: the delivered file is kept in spare/."""
    q = Queue(tmp_path / "queue")
    first = committed(q, b"Subject: one\r\n\r\n" + b"o" * 3000 + b"\r\n")
    inode = (q.root / INCOMING / first).stat().st_ino
    assert q.remove(first, INCOMING, spare=True)
    assert files(q)["incoming"] == [] and os.listdir(q.root / spool.SPARE) == [first]
    # Another process (a front) takes it for its next message, a shorter one:
    # none of the old bytes stay behind.
    q2 = Queue(q.root)
    second = committed(q2, b"Subject: two\r\n\r\nsecond\r\n")
    assert os.listdir(q.root / spool.SPARE) == [] and files(q2)["tmp"] == []
    assert (q.root / INCOMING / second).stat().st_ino == inode
    assert q2.read_body(q2.load(second, INCOMING)) == b"Subject: two\r\n\r\nsecond\r\n"
    assert b"o" * 10 not in (q.root / INCOMING / second).read_bytes()
    # spare/ holds no mail: recovery and the queue's states do not see it.
    assert q2.recover() == spool.Recovery()
    assert q2.ids(INCOMING) == [second]
    # An admin's delete (and any removal not marked spare) unlinks.
    assert q2.remove(second, INCOMING) and os.listdir(q.root / spool.SPARE) == []


def test_a_spare_files_old_bytes_are_never_read_as_the_new_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spare file is written over, not emptied first: what a check reads
    back before the commit, and the committed file, hold the new message only,
    though the old one was longer."""
    monkeypatch.setattr(spool, "SPILL", 64)  # the message spills to its file
    q = Queue(tmp_path / "queue")
    (q.root / spool.SPARE / "0A").write_bytes(b"#OLD#" * 1000)
    q._spares = ["0A"]
    m = q.new_message()
    body = b"Subject: new\r\n\r\n" + b"n" * 200 + b"\r\n"
    m.write(body)
    assert os.listdir(q.root / spool.SPARE) == []  # it took the spare file
    assert m.read_back() == body
    m.commit(env())
    assert q.read_body(q.load(m.queue_id, INCOMING)) == body
    assert b"#OLD#" not in (q.root / INCOMING / m.queue_id).read_bytes()


def test_a_spare_file_is_locked_before_it_is_in_tmp(tmp_path: Path) -> None:
    """Recovery removes a tmp/ file whose writer holds no lock: a spare file
    must never be there unlocked, and one another writer holds is left alone."""
    q = Queue(tmp_path / "queue")
    for name in ("0A", "0B"):
        (q.root / spool.SPARE / name).write_bytes(b"old")
    held = os.open(q.root / spool.SPARE / "0B", os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        writer = Queue(q.root)
        writer._spares = ["0A", "0B"]  # "0B" is looked at first
        fd = writer.take_spare(q.root / "tmp" / "0C")
        assert fd is not None
        assert sorted(os.listdir(q.root / spool.SPARE)) == ["0B"]
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # written from its start
        probe = os.open(q.root / "tmp" / "0C", os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(probe)
        assert q.recover().removed_tmp == 0 and files(q)["tmp"] == ["0C"]
        os.close(fd)
    finally:
        os.close(held)


def test_spare_files_are_bounded_and_taken_names_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool, "SPARE_MAX", 2)
    q = Queue(tmp_path / "queue")
    ids = [committed(q) for _ in range(3)]
    assert [q.remove(i, INCOMING, spare=True) for i in ids] == [True, True, True]
    assert len(os.listdir(q.root / spool.SPARE)) == 2  # the third was unlinked
    # A writer whose list of names went stale (another process took them) makes a file.
    writer = Queue(q.root)
    fd = writer.take_spare(q.root / "tmp" / "A1")
    assert fd is not None
    os.close(fd)
    for name in os.listdir(q.root / spool.SPARE):
        os.unlink(q.root / spool.SPARE / name)
    qid = committed(writer)
    assert writer.read_body(writer.load(qid, INCOMING)) == BODY
    os.unlink(q.root / "tmp" / "A1")


def test_recovery_leaves_a_tmp_file_made_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery runs while the fronts accept mail: a file that came into tmp/
    after recovery began belongs to a live writer, locked yet or not."""
    q = Queue(tmp_path / "queue")
    old = q.root / "tmp" / "0OLD"
    old.write_bytes(b"a writer that died")
    new = q.root / "tmp" / "0NEW"
    while True:  # a later change time than the first (the kernel's clock is coarse)
        new.write_bytes(b"a writer between its file and its flock")
        if new.stat().st_ctime > old.stat().st_ctime:
            break
        time.sleep(0.01)
    made = new.stat().st_ctime
    monkeypatch.setattr(spool.time, "time", lambda: made)  # recovery began as it was made
    assert q.recover().removed_tmp == 1 and files(q)["tmp"] == ["0NEW"]
    monkeypatch.undo()
    assert q.recover().removed_tmp == 1 and files(q)["tmp"] == []


def test_a_new_tmp_file_recovery_removed_before_its_flock_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery runs while the fronts accept mail: it may find a writer's new
    file between its creation and its flock, unlocked, and remove it (the
    change time it goes by is coarse). The writer makes its file again, and
    the message is committed, not refused for a file that went missing."""
    q = Queue(tmp_path / "queue")
    real_flock = fcntl.flock
    removed: list[int] = []

    def flock(fd: int, op: int) -> None:
        if op == fcntl.LOCK_EX and not removed:  # the writer's own lock, the first time
            made = os.fstat(fd).st_ctime
            monkeypatch.setattr(spool.time, "time", lambda: made + 1.0)
            removed.append(Queue(q.root).recover().removed_tmp)
            monkeypatch.setattr(spool.time, "time", time.time)
        real_flock(fd, op)

    monkeypatch.setattr(spool.fcntl, "flock", flock)
    m = q.new_message()
    m.write(BODY)
    m.commit(env())
    assert removed == [1]  # recovery did take the first file
    assert files(q)["tmp"] == [] and files(q)["incoming"] == [m.queue_id]
    assert q.read_body(q.load(m.queue_id, INCOMING)) == BODY


def test_settling_a_unit_keeps_every_field_it_does_not_settle() -> None:
    """Unit.settle builds a new Unit field by field: a field added to Unit and
    left out there would silently fall back to its default on every try."""
    unit = Unit(3, "bob@pv.test", False, "pending", (451, "4.3.0", "later"), "mx", 2, True)
    settled = unit.settle(DONE, Reply(250, "2.0.0", "ok"), "local")
    assert (settled.state, settled.reply, settled.relay, settled.attempts) == (
        DONE,
        (250, "2.0.0", "ok"),
        "local",
        3,
    )
    for f in dataclasses.fields(Unit):
        if f.name not in ("state", "reply", "relay", "attempts"):
            assert getattr(settled, f.name) == getattr(unit, f.name), f.name
            assert getattr(unit, f.name) != f.default, (
                f"give {f.name} a value that is not its default"
            )
