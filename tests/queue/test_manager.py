"""The queue manager with real peers: Maildir, smtp-sink, bounces, retries."""

from __future__ import annotations

import asyncio
import email
import logging
import mailbox
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from postvakt import config as C
from postvakt.directory import Directory
from postvakt.queue import Envelope, Queue, Recipient, manager, spool
from postvakt.queue.envelope import Status
from postvakt.queue.manager import QueueManager, QueueManagerError
from support import free_port

BODY = b"Received: from client\r\nFrom: alice@pv.test\r\nSubject: %s\r\n\r\nhello\r\n"


class NoDNS:
    async def mx(self, domain: str) -> list[tuple[int, str]]:
        raise AssertionError(f"no DNS in tests ({domain})")

    async def addresses(self, host: str) -> list[str]:
        raise AssertionError(f"no DNS in tests ({host})")


class World:
    def __init__(self, tmp_path: Path, routes: dict[str, int], **delivery: Any) -> None:
        self.config = C.from_dict(
            {
                "hostname": "mx.pv.test",
                "data_dir": str(tmp_path / "data"),
                "domains": {"local": ["pv.test"]},
                "postmaster": "alice@pv.test",
                "delivery": {
                    "routes": {d: f"127.0.0.1:{p}" for d, p in routes.items()},
                    **delivery,
                },
            }
        )
        self.directory = Directory.for_config(self.config)
        for u in ("alice@pv.test", "bob@pv.test"):
            self.directory.add_user(u, "pw")
        self.directory.add_alias("list@pv.test", "bob@pv.test")
        self.directory.add_alias("list@pv.test", "carol@a.example")
        self.queue = Queue(self.config.data_dir / "queue")

    def submit(
        self,
        sender: str,
        rcpts: list[str | Recipient],
        subject: str = "test",
        data: bytes | None = None,
        **kw: Any,
    ) -> str:
        m = self.queue.new_message()
        m.write(BODY % subject.encode() if data is None else data)
        kw.setdefault("received_at", time.time())
        m.commit(
            Envelope(
                sender=sender,
                recipients=tuple(r if isinstance(r, Recipient) else Recipient(r) for r in rcpts),
                client_ip="127.0.0.1",
                helo="client.test",
                login=None,
                **kw,
            )
        )
        return m.queue_id

    def maildir(self, user: str) -> list[email.message.Message]:
        path = self.directory.maildir(user)
        if not path.exists():
            return []
        return [m for _, m in sorted(mailbox.Maildir(path, create=False).items())]

    def manager(self) -> QueueManager:
        return QueueManager(self.config, self.directory, self.queue, resolver=NoDNS())

    def empty(self) -> bool:
        return not any(self.queue.ids(s) for s in ("incoming", "active", "deferred"))


async def until(pred: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = pred()
        if not isinstance(r, bool):
            r = await r
        if r:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def settled(w: World, qm: QueueManager) -> None:
    """Wait for a marker message committed now to be delivered and the queue to
    be empty: whatever the manager was going to do before it (a bounce, a
    notice, a delivery) has then been done. Used instead of a fixed sleep before
    asserting that something did not happen."""
    marker = f"marker {time.monotonic_ns()}"
    w.submit("alice@pv.test", ["bob@pv.test"], marker)
    qm.wake()
    await until(lambda: w.empty() and any(m["Subject"] == marker for m in w.maildir("bob@pv.test")))


def run(
    world: World,
    body: Callable[[QueueManager], Awaitable[None]],
    before_start: Callable[[QueueManager], None] = lambda qm: None,
) -> None:
    async def go() -> None:
        qm = world.manager()
        before_start(qm)
        await qm.start()
        try:
            await body(qm)
        finally:
            await qm.stop(5)

    asyncio.run(go())


def status_part(msg: email.message.Message) -> list[email.message.Message]:
    assert msg.get_content_type() == "multipart/report"
    return msg.get_payload()[1].get_payload()  # type: ignore[index,union-attr,no-any-return]


def test_local_remote_and_unknown_recipient(tmp_path: Path, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink()
    w = World(tmp_path, {"a.example": sink.port})
    w.submit("alice@pv.test", ["bob@pv.test", "dave@a.example", "nobody@pv.test"], "mixed")

    async def body(qm: QueueManager) -> None:
        qm.wake()
        await until(lambda: w.empty() and len(w.maildir("alice@pv.test")) == 1)

    run(w, body)
    [m] = w.maildir("bob@pv.test")
    assert (
        m["Subject"] == "mixed"
        and m["Delivered-To"] == "bob@pv.test"
        and m["Return-Path"] == "<alice@pv.test>"
    )
    [dump] = sink.messages()
    assert "X-Rcpt-Args: <dave@a.example>" in dump and "Subject: mixed" in dump
    [bounce] = w.maildir("alice@pv.test")
    assert bounce["Return-Path"] == "<>"
    _, nobody = status_part(bounce)
    assert nobody["Final-Recipient"] == "rfc822; nobody@pv.test"
    assert nobody["Status"] == "5.1.1"


def test_alias_expansion_and_postmaster(tmp_path: Path, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink()
    w = World(tmp_path, {"a.example": sink.port})
    w.submit(
        "someone@elsewhere.example", ["list@pv.test", "bob@pv.test", "postmaster@pv.test"], "alias"
    )

    async def body(qm: QueueManager) -> None:
        qm.wake()
        await until(lambda: w.empty() and len(sink.messages()) == 1)

    run(w, body)
    assert len(w.maildir("bob@pv.test")) == 1  # via the alias and directly: one copy
    [pm] = w.maildir("alice@pv.test")  # postmaster -> config.postmaster
    assert pm["Delivered-To"] == "alice@pv.test"
    assert "X-Rcpt-Args: <carol@a.example>" in sink.messages()[0]


def test_4xx_stays_queued_across_restart_then_delivered(tmp_path: Path, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    refusing = smtp_sink("-r", "RCPT")
    w = World(tmp_path, {"a.example": refusing.port}, retry_initial=1)
    qid = w.submit("alice@pv.test", ["dave@a.example"], "deferred")

    async def first(qm: QueueManager) -> None:
        qm.wake()
        await until(lambda: w.queue.find(qid) == "deferred")

    run(w, first)
    st = w.queue.read_status(qid)
    assert st.attempts >= 1 and "450 4.3.0" in st.last_error
    refusing.stop()
    accepting = smtp_sink(port=refusing.port)

    async def second(qm: QueueManager) -> None:
        await until(w.empty)

    run(w, second)  # a new manager, as after a server restart
    [dump] = accepting.messages()
    assert "Subject: deferred" in dump
    assert w.maildir("alice@pv.test") == []  # no bounce, no warning


def test_5xx_bounces_to_sender_with_remote_reply(tmp_path: Path, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink("-f", "RCPT")
    w = World(tmp_path, {"a.example": sink.port})
    w.submit("alice@pv.test", ["dave@a.example", "erin@a.example"], "to be bounced")

    async def body(qm: QueueManager) -> None:
        qm.wake()
        await until(lambda: w.empty() and len(w.maildir("alice@pv.test")) == 1)

    run(w, body)
    [bounce] = w.maildir("alice@pv.test")
    assert bounce["Subject"] == "Undelivered Mail Returned to Sender"
    _, dave, erin = status_part(bounce)
    assert dave["Final-Recipient"] == "rfc822; dave@a.example"
    assert erin["Final-Recipient"] == "rfc822; erin@a.example"
    assert dave["Diagnostic-Code"] == "smtp; 500 5.3.0 Error: command failed"
    assert dave["Remote-MTA"] == f"dns; 127.0.0.1[127.0.0.1]:{sink.port}"
    text = bounce.get_payload()[0].get_payload()  # type: ignore[index,union-attr]
    assert "dave@a.example" in text and "500 5.3.0 Error: command failed" in text


def test_failing_bounce_to_null_sender_is_dropped_not_looped(
    tmp_path: Path,
    smtp_sink,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    sink = smtp_sink("-f", "RCPT")
    w = World(tmp_path, {"a.example": sink.port})
    qid = w.submit("", ["dave@a.example"], "a bounce")

    async def body(qm: QueueManager) -> None:
        qm.wake()
        await until(w.empty)
        await settled(w, qm)

    with caplog.at_level(logging.INFO):
        run(w, body)
    assert w.empty() and w.queue.ids("hold") == []
    lines = [r.getMessage() for r in caplog.records]
    assert any(qid in ln and "bounce dropped" in ln for ln in lines)
    assert not any("dsn=" in ln for ln in lines)


def test_partly_delivered_message_retries_only_the_rest(tmp_path: Path, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    good = smtp_sink()
    bad = smtp_sink("-r", "RCPT")
    w = World(tmp_path, {"a.example": good.port, "b.example": bad.port}, retry_initial=0.5)
    qid = w.submit("alice@pv.test", ["bob@pv.test", "dave@a.example", "frank@b.example"], "partial")

    async def body(qm: QueueManager) -> None:
        qm.wake()
        await until(lambda: w.queue.find(qid) == "deferred")
        await until(lambda: w.queue.read_status(qid).attempts >= 3)  # it keeps retrying b

    run(w, body)
    assert len(good.messages()) == 1
    assert len(w.maildir("bob@pv.test")) == 1
    st = w.queue.read_status(qid)
    assert [(u.address, u.state) for u in st.units or ()] == [
        ("bob@pv.test", "done"),
        ("dave@a.example", "done"),
        ("frank@b.example", "pending"),
    ]


def test_delay_warning_once_then_expiry_bounce(tmp_path: Path, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink("-r", "RCPT")
    w = World(
        tmp_path, {"a.example": sink.port}, retry_initial=0.3, delay_warning="4h", give_up="5d"
    )
    old = time.time() - 5 * 3600
    qid = w.submit("alice@pv.test", ["dave@a.example"], "slow", received_at=old)

    async def body(qm: QueueManager) -> None:
        qm.wake()
        await until(lambda: len(w.maildir("alice@pv.test")) == 1)
        await until(lambda: w.queue.read_status(qid).attempts >= 3)

    run(w, body)
    [warning] = w.maildir("alice@pv.test")  # once, not per try
    assert warning["Subject"] == "Delayed Mail (still being retried)"
    _, dave = status_part(warning)
    assert dave["Action"] == "delayed" and dave["Status"] == "4.3.0"

    expired = w.submit(
        "alice@pv.test", ["erin@a.example"], "ancient", received_at=time.time() - 6 * 86400
    )

    async def body2(qm: QueueManager) -> None:
        await until(lambda: w.queue.find(expired) is None and len(w.maildir("alice@pv.test")) == 2)

    run(w, body2)
    bounce = w.maildir("alice@pv.test")[1]
    assert bounce["Subject"] == "Undelivered Mail Returned to Sender"
    _, erin = status_part(bounce)
    assert erin["Action"] == "failed" and erin["Status"] == "4.4.7"
    assert "450 4.3.0" in erin["Diagnostic-Code"]


def test_notify_never_and_success(tmp_path: Path, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink("-f", "RCPT")
    w = World(tmp_path, {"a.example": sink.port})
    w.submit(
        "alice@pv.test",
        [
            Recipient("dave@a.example", notify=("NEVER",)),
            Recipient("bob@pv.test", notify=("SUCCESS",)),
        ],
        "notify",
    )

    async def body(qm: QueueManager) -> None:
        qm.wake()
        await until(lambda: w.empty() and len(w.maildir("alice@pv.test")) == 1)
        await settled(w, qm)

    run(w, body)
    [report] = w.maildir("alice@pv.test")  # the success report only; no bounce for dave
    assert report["Subject"] == "Successful Mail Delivery Report"
    _, bob = status_part(report)
    assert bob["Action"] == "delivered" and bob["Final-Recipient"] == "rfc822; bob@pv.test"


def test_corrupt_message_in_delivery_is_quarantined(tmp_path: Path) -> None:
    w = World(tmp_path, {})
    qid = w.submit("alice@pv.test", ["bob@pv.test"])
    p = w.queue.path("incoming", qid)
    data = bytearray(p.read_bytes())
    data[5] ^= 0x01
    p.write_bytes(bytes(data))
    ok = w.submit("alice@pv.test", ["bob@pv.test"], "fine")

    async def body(qm: QueueManager) -> None:
        await until(lambda: w.queue.find(qid) == "corrupt" and w.queue.find(ok) is None)

    run(w, body)
    [m] = w.maildir("bob@pv.test")
    assert m["Subject"] == "fine"


def test_status_of_an_earlier_try_goes_with_the_delivered_message(tmp_path: Path) -> None:
    """A local message delivered in one job removes its status file only when
    it read one: a message tried before (here its status says one attempt, as
    after a restart) leaves none behind; a first try had none to remove."""
    w = World(tmp_path, {})
    again = w.submit("alice@pv.test", ["bob@pv.test"], "again")
    w.queue.write_status(again, Status(attempts=1))
    first = w.submit("alice@pv.test", ["bob@pv.test"], "first")

    async def body(qm: QueueManager) -> None:
        await until(lambda: w.empty() and len(w.maildir("bob@pv.test")) == 2)

    run(w, body)
    assert w.queue.find(again) is None and w.queue.find(first) is None
    assert os.listdir(w.queue.root / "status") == []


def test_due_retry_is_taken_up_while_wake_ups_keep_coming(tmp_path: Path) -> None:
    """A wake-up looks at incoming/ only; deferred/ is looked at every
    SCAN_INTERVAL all the same. Here wake-ups come far more often than that,
    each with new mail, while a message in deferred/ falls due: it is
    delivered, and so is the mail that came with the wake-ups."""
    w = World(tmp_path, {})

    async def body(qm: QueueManager) -> None:
        await settled(w, qm)  # the first scan (a full one) is over
        qid = w.submit("alice@pv.test", ["bob@pv.test"], "retried")
        w.queue.write_status(qid, Status(attempts=1, next_try=time.time() + 0.3))
        assert w.queue.move(qid, "incoming", "deferred")
        sent = 0

        async def retried() -> bool:
            nonlocal sent
            w.submit("alice@pv.test", ["bob@pv.test"], f"busy {sent}")
            sent += 1
            qm.wake()
            await asyncio.sleep(0.05)
            return w.queue.find(qid) is None

        await until(retried)
        await until(w.empty)
        subjects = [m["Subject"] for m in w.maildir("bob@pv.test")]
        assert "retried" in subjects
        assert all(f"busy {n}" in subjects for n in range(sent))

    run(w, body)


def test_held_mail_waits_for_release(tmp_path: Path) -> None:
    w = World(tmp_path, {})
    qid = w.submit("alice@pv.test", ["bob@pv.test"], "held", hold="outbound limit")

    async def body(qm: QueueManager) -> None:
        await settled(w, qm)
        assert w.queue.find(qid) == "hold"
        assert [m["Subject"] for m in w.maildir("bob@pv.test")] == [
            m["Subject"] for m in w.maildir("bob@pv.test") if m["Subject"].startswith("marker")
        ]
        assert w.queue.release(qid)
        await until(lambda: len(w.maildir("bob@pv.test")) == 1)

    run(w, body)


def test_only_one_manager_per_queue(tmp_path: Path) -> None:
    w = World(tmp_path, {})

    async def body(qm: QueueManager) -> None:
        with pytest.raises(QueueManagerError):
            await w.manager().start()

    run(w, body)


def test_stop_abandons_slow_delivery_safely(tmp_path: Path, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    slow = smtp_sink("-w", "30")  # waits 30 s before answering DATA
    w = World(tmp_path, {"a.example": slow.port})
    qid = w.submit("alice@pv.test", ["bob@pv.test", "dave@a.example"], "slow")

    async def body(qm: QueueManager) -> None:
        qm.wake()
        await until(lambda: len(w.maildir("bob@pv.test")) == 1)
        t0 = time.monotonic()
        await qm.stop(0.5)
        # The sink holds DATA for 30 s: a stop that waited for it would take that long.
        assert time.monotonic() - t0 < 20

    run(w, body)
    assert w.queue.find(qid) == "active"  # abandoned, not lost
    st = w.queue.read_status(qid)
    assert [(u.address, u.state) for u in st.units or ()] == [
        ("bob@pv.test", "done"),
        ("dave@a.example", "pending"),
    ]
    slow.stop()
    fast = smtp_sink(port=slow.port)

    async def again(qm: QueueManager) -> None:
        await until(w.empty)

    run(w, again)
    assert len(fast.messages()) == 1
    assert len(w.maildir("bob@pv.test")) == 1  # bob is not delivered twice


def test_reloaded_config_applies_to_retries_and_routes(tmp_path: Path, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    """A message deferred under the old config (a route to a closed port, retry
    in 1 h) goes, after the reload and a retry, through the new route; a fresh
    failure under the new config is retried after the new interval."""
    sink = smtp_sink()
    closed = free_port()
    w = World(tmp_path, {"a.example": closed}, retry_initial="1h")
    qid = w.submit("alice@pv.test", ["dave@a.example"], "rerouted")
    new = C.from_dict(
        {
            "hostname": "mx.pv.test",
            "data_dir": str(w.config.data_dir),
            "domains": {"local": ["pv.test"]},
            "delivery": {
                "retry_initial": "2m",
                "routes": {
                    "a.example": f"127.0.0.1:{sink.port}",
                    "b.example": f"127.0.0.1:{closed}",
                },
            },
        }
    )

    async def body(qm: QueueManager) -> None:
        await until(lambda: w.queue.find(qid) == "deferred")
        assert w.queue.read_status(qid).next_try > time.time() + 3000  # the old 1 h
        qm.config = new
        late = w.submit("alice@pv.test", ["erin@b.example"], "new interval")
        assert w.queue.retry(qid)
        qm.wake()
        await until(lambda: len(sink.messages()) == 1 and w.queue.find(qid) is None)
        await until(lambda: w.queue.find(late) == "deferred")
        next_try = w.queue.read_status(late).next_try
        assert time.time() + 60 < next_try < time.time() + 130  # the new 2 m

    run(w, body)
    assert "Subject: rerouted" in sink.messages()[0]


def test_unexpected_error_defers_never_bounces_or_loses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = World(tmp_path, {})
    qid = w.submit("alice@pv.test", ["bob@pv.test"], "directory down")
    w.directory.close()  # every lookup now raises sqlite3.ProgrammingError

    async def body(qm: QueueManager) -> None:
        await until(lambda: w.queue.find(qid) == "deferred")

    with caplog.at_level(logging.ERROR, logger="postvakt.queue"):
        run(w, body)
    assert any(qid in r.getMessage() and "deferred" in r.getMessage() for r in caplog.records)
    assert w.queue.read_status(qid).next_try > time.time()
    assert w.queue.ids("incoming") == [] and w.queue.ids("active") == []


@pytest.mark.parametrize(("sink_options", "reported"), [(("-N",), True), ((), False)])
def test_success_notice_relayed_only_when_the_peer_cannot_take_over(
    tmp_path: Path,
    smtp_sink,
    sink_options: tuple[str, ...],
    reported: bool,  # type: ignore[no-untyped-def]
) -> None:
    sink = smtp_sink(*sink_options)  # -N: the sink does not offer DSN
    w = World(tmp_path, {"a.example": sink.port})
    w.submit("alice@pv.test", [Recipient("dave@a.example", notify=("SUCCESS",))], "relayed")

    async def body(qm: QueueManager) -> None:
        await until(lambda: w.empty() and len(sink.messages()) == 1)
        await settled(w, qm)

    run(w, body)
    notices = w.maildir("alice@pv.test")
    if not reported:
        assert notices == []
        assert "NOTIFY=SUCCESS" in sink.messages()[0]  # the peer got the duty instead
        return
    [notice] = notices
    _, dave = status_part(notice)
    assert dave["Action"] == "relayed" and dave["Status"] == "2.0.0"


def test_hold_during_delivery_keeps_what_was_done(tmp_path: Path, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    slow = smtp_sink("-W", "MAIL:2", "-r", "DATA")  # slow, and then 4xx
    w = World(tmp_path, {"a.example": slow.port})
    qid = w.submit("alice@pv.test", ["bob@pv.test", "dave@a.example"], "held while delivering")

    async def body(qm: QueueManager) -> None:
        await until(lambda: len(w.maildir("bob@pv.test")) == 1)
        assert w.queue.find(qid) == "active"  # dave is still being tried
        assert w.queue.hold(qid)
        await until(lambda: w.queue.read_status(qid).attempts == 1)

    run(w, body)
    assert w.queue.find(qid) == "hold"
    st = w.queue.read_status(qid)
    assert [(u.address, u.state) for u in st.units or ()] == [
        ("bob@pv.test", "done"),
        ("dave@a.example", "pending"),
    ]
    slow.stop()
    fast = smtp_sink(port=slow.port)
    assert w.queue.release(qid)

    async def after_release(qm: QueueManager) -> None:
        await until(w.empty)

    run(w, after_release)
    assert len(fast.messages()) == 1
    assert len(w.maildir("bob@pv.test")) == 1  # bob not twice


# ------------------------------------------------------------ groups of messages


def record_groups(qm: QueueManager, groups: list[list[str]]) -> None:
    """Note the group each of the manager's executor jobs is given."""
    real = qm._prepare_each

    def prepare_each(qids: list[str]) -> list[tuple[str, Any]]:
        groups.append(list(qids))
        return real(qids)

    qm._prepare_each = prepare_each  # type: ignore[method-assign]


def open_here(path: Path) -> bool:
    """Whether this process holds a descriptor of the file at `path`."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                return True
        except OSError:
            pass  # closed meanwhile (the listing's own descriptor)
    return False


@pytest.mark.parametrize(
    ("taken", "sizes"),
    [(0, []), (1, [1]), (3, [1, 2]), (5, [2, 3]), (8, [4, 4]), (128, [32] * 4)],
)
def test_a_scan_takes_its_messages_in_a_few_groups(taken: int, sizes: list[int]) -> None:
    qids = [f"{n:03d}" for n in range(taken)]
    groups = manager._groups(qids)
    assert [len(g) for g in groups] == sizes
    assert [q for g in groups for q in g] == qids


def test_a_burst_larger_than_the_groups_makes_more_groups_not_longer_ones() -> None:
    qids = [f"{n:03d}" for n in range(manager.MAX_ACTIVE)]
    groups = manager._groups(qids)
    assert len(groups) > manager.GROUPS
    assert max(len(g) for g in groups) <= manager.GROUP_SIZE
    assert [q for g in groups for q in g] == qids


def test_each_message_of_a_group_keeps_its_own_fate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One group, one executor job: a corrupt message, one the admin deletes
    just as the job comes to it, and one whose status file cannot be read
    (an unexpected error) each go their own way; every other message of the
    group, before and after them, is delivered once and removed."""
    monkeypatch.setattr(manager, "GROUPS", 1)
    w = World(tmp_path, {})
    fine = [w.submit("alice@pv.test", ["bob@pv.test"], f"fine {n}") for n in range(3)]
    corrupt = w.submit("alice@pv.test", ["bob@pv.test"], "corrupt")
    p = w.queue.path("incoming", corrupt)
    data = bytearray(p.read_bytes())
    data[5] ^= 0x01
    p.write_bytes(bytes(data))
    gone = w.submit("alice@pv.test", ["bob@pv.test"], "gone")
    failing = w.submit("alice@pv.test", ["bob@pv.test"], "failing")
    (w.queue.root / "status" / failing).mkdir()  # reading it raises IsADirectoryError
    fine += [w.submit("alice@pv.test", ["bob@pv.test"], f"fine {n}") for n in range(3, 6)]
    groups: list[list[str]] = []

    def before_start(qm: QueueManager) -> None:
        record_groups(qm, groups)
        real = qm._prepare

        def prepare(qid: str) -> Any:
            if qid == gone:
                assert w.queue.delete(gone)  # the admin, meanwhile
            return real(qid)

        qm._prepare = prepare  # type: ignore[method-assign]

    async def body(qm: QueueManager) -> None:
        await until(
            lambda: (
                w.queue.find(failing) == "deferred"
                and w.queue.find(corrupt) == "corrupt"
                and all(w.queue.find(q) is None for q in fine)
            )
        )
        assert qm._inflight == {}

    with caplog.at_level(logging.ERROR, logger="postvakt.queue"):
        run(w, body, before_start)
    assert groups == [sorted([*fine, corrupt, gone, failing])]
    assert sorted(m["Subject"] for m in w.maildir("bob@pv.test")) == [f"fine {n}" for n in range(6)]
    assert w.queue.find(gone) is None
    lines = [r.getMessage() for r in caplog.records]
    assert any(failing in ln and "failed unexpectedly; deferred" in ln for ln in lines)
    assert any(corrupt in ln and "corrupt queue file" in ln for ln in lines)
    assert not any(q in ln for ln in lines for q in fine)


def test_a_burst_is_delivered_in_groups_each_message_exactly_once(tmp_path: Path) -> None:
    """More messages at once than MAX_ACTIVE, and more coming with wake-ups
    while they are delivered (full scans of active/ among them, which must
    not take up a message a group holds): each is delivered exactly once."""
    w = World(tmp_path, {})
    subjects = [f"burst {n}" for n in range(manager.MAX_ACTIVE + 50)]
    for s in subjects:
        w.submit("alice@pv.test", ["bob@pv.test"], s)
    new = w.directory.maildir("bob@pv.test") / "new"
    groups: list[list[str]] = []

    async def body(qm: QueueManager) -> None:
        deadline = time.monotonic() + manager.SCAN_INTERVAL * 1.5
        n = 0
        while n < 20 or time.monotonic() < deadline:  # past a full scan
            subjects.append(f"late {n}")
            w.submit("alice@pv.test", ["bob@pv.test"], subjects[-1])
            qm.wake()
            n += 1
            await asyncio.sleep(0.05)
        await until(lambda: w.empty() and len(os.listdir(new)) >= len(subjects), timeout=120)
        await settled(w, qm)

    run(w, body, lambda qm: record_groups(qm, groups))
    got = Counter(m["Subject"] for m in w.maildir("bob@pv.test"))
    assert all(got[s] == 1 for s in subjects), [s for s in subjects if got[s] != 1]
    assert sum(got.values()) == len(subjects) + 1  # and the marker
    taken = [q for g in groups for q in g]
    assert len(taken) == len(set(taken)) == len(subjects) + 1
    assert max(len(g) for g in groups) <= manager.GROUP_SIZE
    assert len(groups[0]) > 1


def test_stop_while_a_group_is_in_its_job_loses_nothing(  # type: ignore[no-untyped-def]
    tmp_path: Path, smtp_sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() while a group's job is held up halfway (on an fsync, say): every
    message of the group is in `_inflight` until then, so a sweep of active/
    takes none up twice; stop() cancels the group without waiting for its
    job, which goes on to its end all the same; the queue file it kept open
    for the loop (a large message with a remote recipient) is closed, not
    leaked; after a restart every message is delivered, none lost."""
    monkeypatch.setattr(manager, "GROUPS", 1)
    sink = smtp_sink()
    w = World(tmp_path, {"a.example": sink.port})
    first = w.submit("alice@pv.test", ["bob@pv.test"], "first")
    held = w.submit("alice@pv.test", ["bob@pv.test"], "held up")
    large = BODY % b"large" + (b"x" * 100 + b"\r\n") * 1000  # over spool.WHOLE_READ
    big = w.submit("alice@pv.test", ["dave@a.example"], data=large)
    last = w.submit("alice@pv.test", ["bob@pv.test"], "last")
    reached = threading.Event()
    go_on = threading.Event()

    def before_start(qm: QueueManager) -> None:
        real = qm._prepare

        def prepare(qid: str) -> Any:
            if qid == held:
                reached.set()
                go_on.wait(30)
            return real(qid)

        qm._prepare = prepare  # type: ignore[method-assign]

    async def body(qm: QueueManager) -> None:
        await until(reached.is_set)
        assert set(qm._inflight) == {first, held, big, last}
        await qm.scan(full=True)  # the sweep of active/ finds held, big and last there
        assert len(set(qm._inflight.values())) == 1
        await qm.stop(0.1)
        assert qm._inflight == {}
        go_on.set()
        await until(lambda: w.queue.find(last) is None)  # the job went on past big
        await until(lambda: not open_here(w.queue.path("active", big)))

    run(w, body, before_start)
    assert w.queue.find(big) == "active"
    assert sorted(m["Subject"] for m in w.maildir("bob@pv.test")) == ["first", "held up", "last"]

    async def again(qm: QueueManager) -> None:
        await until(lambda: w.empty() and len(sink.messages()) == 1)

    run(w, again)
    assert len(w.maildir("bob@pv.test")) == 3


def test_a_delivered_small_file_is_kept_as_a_spare_and_a_bigger_one_unlinked(
    tmp_path: Path,
) -> None:
    """spare/ keeps the files of delivered messages up to SPARE_FILE_MAX octets
    (no inode freed for them); a bigger one is unlinked, so spare/ never holds
    more than SPARE_MAX times that."""
    w = World(tmp_path, {})
    small = w.submit("alice@pv.test", ["bob@pv.test"], "small")
    big_body = BODY % b"big" + b"x" * spool.SPARE_FILE_MAX
    big = w.submit("alice@pv.test", ["bob@pv.test"], data=big_body)

    async def body(qm: QueueManager) -> None:
        qm.wake()
        await until(lambda: w.empty() and len(w.maildir("bob@pv.test")) == 2)

    run(w, body)
    assert os.listdir(w.queue.root / spool.SPARE) == [small]
    assert big not in os.listdir(w.queue.root / spool.SPARE)
