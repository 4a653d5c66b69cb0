"""Failure paths of the queue manager: whatever fails, the message ends in a
state that is tried again, without a restart (issue: a bounce that failed
with ENOSPC, then a deferral record that failed too, left a message in
active/ until restart)."""

from __future__ import annotations

import asyncio
import logging
import mailbox
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from smtp_peer import Peer

from postvakt import config as C
from postvakt.directory import Directory
from postvakt.queue import Envelope, Queue, Recipient
from postvakt.queue.manager import QueueManager
from smallfs import fill, small_fs
from support import free_port

BODY = b"Received: from client\r\nFrom: alice@pv.test\r\nSubject: %s\r\n\r\nhello\r\n"


class NoDNS:
    async def mx(self, domain: str) -> list[tuple[int, str]]:
        raise AssertionError(f"no DNS in tests ({domain})")

    async def addresses(self, host: str) -> list[str]:
        raise AssertionError(f"no DNS in tests ({host})")


def setup(
    tmp_path: Path, port: int, queue_root: Path | None = None
) -> tuple[C.Config, Directory, Queue]:
    config = C.from_dict(
        {
            "hostname": "mx.pv.test",
            "data_dir": str(tmp_path / "data"),
            "domains": {"local": ["pv.test"]},
            "postmaster": "alice@pv.test",
            "delivery": {"routes": {"x.example": f"127.0.0.1:{port}"}, "retry_initial": 600},
        }
    )
    directory = Directory.for_config(config)
    for u in ("alice@pv.test", "bob@pv.test"):
        directory.add_user(u, "pw")
    return config, directory, Queue(queue_root or config.data_dir / "queue")


def submit(q: Queue, rcpts: list[str], subject: str, hold: str | None = None) -> str:
    m = q.new_message()
    m.write(BODY % subject.encode())
    m.commit(
        Envelope(
            sender="alice@pv.test",
            recipients=tuple(Recipient(r) for r in rcpts),
            received_at=time.time(),
            client_ip="127.0.0.1",
            helo="client.test",
            login=None,
            hold=hold,
        )
    )
    return m.queue_id


async def until(pred: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def maildir_subjects(directory: Directory, user: str) -> list[str]:
    path = directory.maildir(user)
    if not path.exists():
        return []
    return [str(m["Subject"]) for _, m in mailbox.Maildir(path, create=False).items()]


def run(
    config: C.Config,
    directory: Directory,
    q: Queue,
    peer: Peer | None,
    body: Callable[[QueueManager], Awaitable[None]],
) -> None:
    async def go() -> None:
        if peer is not None:
            await peer.start()
        qm = QueueManager(config, directory, q, resolver=NoDNS())  # type: ignore[arg-type]
        await qm.start()
        try:
            await body(qm)
        finally:
            await qm.stop(5)
            if peer is not None:
                await peer.close()

    asyncio.run(go())


def test_bounce_and_deferral_failing_on_a_full_disk_keep_the_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    peer = Peer(port=free_port(), replies={"RCPT": "550 5.1.1 no such user"})
    with small_fs(tmp_path / "fs", "4m") as fs:
        config, directory, q = setup(tmp_path, peer.port, fs / "queue")
        qid = submit(q, ["gone@x.example"], "full disk")
        filler = fill(fs)

        async def body(qm: QueueManager) -> None:
            qm.wake()
            # The bounce cannot be queued and the status cannot be written:
            # the message must still leave active/ for deferred/.
            await until(lambda: q.find(qid) == "deferred")
            assert q.ids("incoming") == [] and q.ids("active") == []
            assert maildir_subjects(directory, "alice@pv.test") == []
            filler.unlink()  # space again: the admin retries it
            assert q.retry(qid)
            qm.wake()
            await until(
                lambda: q.find(qid) is None and bool(maildir_subjects(directory, "alice@pv.test"))
            )

        with caplog.at_level(logging.INFO, logger="postvakt"):
            run(config, directory, q, peer, body)
    [bounce] = maildir_subjects(directory, "alice@pv.test")
    assert "Undelivered" in bounce or "undeliverable" in bounce.lower()
    text = caplog.text
    assert "not queued" in text and qid in text


def test_a_message_left_in_active_is_taken_up_without_a_restart(tmp_path: Path) -> None:
    config, directory, q = setup(tmp_path, 9)
    qid = submit(q, ["bob@pv.test"], "stranded", hold="admin")

    async def body(qm: QueueManager) -> None:
        # As an error would leave it: in active/, and no delivery holds it.
        assert q.move(qid, "hold", "active")
        qm.wake()
        await until(lambda: q.find(qid) is None)

    run(config, directory, q, None, body)
    assert maildir_subjects(directory, "bob@pv.test") == ["stranded"]


def test_peer_answering_250_to_data_never_marks_the_message_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    peer = Peer(
        port=free_port(),
        replies={"MAIL": "252 2.1.0 ok", "RCPT": "252 2.1.5 ok", "DATA": "250 2.0.0 Ok"},
    )
    config, directory, q = setup(tmp_path, peer.port)
    qid = submit(q, ["b@x.example"], "no body sent")

    async def body(qm: QueueManager) -> None:
        qm.wake()
        await until(lambda: q.find(qid) == "deferred")

    with caplog.at_level(logging.INFO, logger="postvakt.delivery"):
        run(config, directory, q, peer, body)
    assert "status=sent" not in caplog.text and "status=deferred" in caplog.text
    assert peer.transactions == []
    assert maildir_subjects(directory, "alice@pv.test") == []  # no bounce either
