"""The front's limits glue on a real queue directory: counting, notices, failures."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from postvakt.config import Config, from_dict
from postvakt.grants.counters import MemoryCounterStore
from postvakt.policy import Client, Verdict
from postvakt.policy.limits import Usage
from postvakt.queue import Queue
from postvakt.queue.spool import INCOMING
from postvakt.server.limits import Limiter

# 2026-11-27 12:30:00 UTC
NOW = 1795782600.0
REASON = "user.messages_per_hour: user alice@pv.test: 3 messages in this clock hour with this one, limit 2: over the limit, hold"


def config(tmp_path: Path, **limits: object) -> Config:
    return from_dict(
        {
            "hostname": "mx.pv.test",
            "data_dir": str(tmp_path),
            "domains": {"local": ["pv.test"]},
            "limits": {"exempt": [], "user": {"messages_per_hour": 2}, **limits},
        }
    )


def notices(queue: Queue) -> list[tuple[str, list[str], bytes]]:
    out = []
    for qid in queue.ids(INCOMING):
        msg = queue.load(qid, INCOMING)
        body = queue.read_body(msg)
        out.append((msg.envelope.sender, [r.address for r in msg.envelope.recipients], body))
    return out


def alice(now: float = NOW) -> Client:
    return Client(ip="192.0.2.7", port="submission", tls=True, login="alice@pv.test", now=now)


def test_accepted_mail_is_counted_and_judged(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    lim = Limiter(MemoryCounterStore(), Queue(tmp_path / "queue"))

    async def run() -> None:
        for _ in range(2):
            assert lim.check_mail(cfg, alice()).verdict is Verdict.PERMIT
            await lim.accepted(cfg, alice(), "Q1", 3, None)

    asyncio.run(run())
    assert lim.store.usage("user:alice@pv.test", NOW) == Usage(2, 2, 6, 6)
    assert lim.check_mail(cfg, alice()).verdict is Verdict.HOLD
    assert lim.check_mail(cfg, alice(NOW + 1800)).verdict is Verdict.PERMIT  # next hour
    assert notices(lim.queue) == []


def test_one_notice_per_subject_and_limit_per_window(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    lim = Limiter(MemoryCounterStore(), Queue(tmp_path / "queue"))

    async def run() -> None:
        await lim.accepted(cfg, alice(), "QHELD1", 1, REASON)
        await lim.accepted(cfg, alice(NOW + 60), "QHELD2", 1, REASON)
        assert len(notices(lim.queue)) == 1
        await lim.accepted(cfg, alice(NOW + 1800), "QHELD3", 1, REASON)  # a new hour

    asyncio.run(run())
    found = notices(lim.queue)
    assert len(found) == 2
    sender, rcpts, body = found[0]
    assert sender == "" and rcpts == ["postmaster@pv.test"]  # null sender: never bounced back
    text = body.decode()
    assert "Auto-Submitted: auto-generated" in text
    assert (
        "Subject: Outbound limit: mail from user alice@pv.test held (user.messages_per_hour)"
        in text
    )
    assert "postvakt queue release QHELD" in text and "postvakt user passwd alice@pv.test" in text
    assert "\r\n\r\n" in text and "\n" not in text.replace("\r\n", "")


def test_user_notice_when_configured(tmp_path: Path) -> None:
    cfg = config(tmp_path, notify_user=True)
    lim = Limiter(MemoryCounterStore(), Queue(tmp_path / "queue"))
    asyncio.run(lim.accepted(cfg, alice(), "QHELD", 1, REASON))
    by_rcpt = {rcpts[0]: body.decode() for _, rcpts, body in notices(lim.queue)}
    assert set(by_rcpt) == {"postmaster@pv.test", "alice@pv.test"}
    user = by_rcpt["alice@pv.test"]
    assert "Your outgoing mail was paused" in user and "QHELD" in user
    assert "13:00 UTC" in user  # when sending resumes
    assert "postvakt queue" not in user  # the user gets no admin commands


class BrokenStore(MemoryCounterStore):
    def add(self, subject: str, messages: int, recipients: int, now: float) -> None:
        raise OSError("disk gone")


def test_bookkeeping_failure_after_250_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path)
    lim = Limiter(BrokenStore(), Queue(tmp_path / "queue"))
    with caplog.at_level(logging.ERROR, logger="postvakt.limits"):
        asyncio.run(lim.accepted(cfg, alice(), "QX", 1, None))
    assert "limits bookkeeping failed id=QX" in caplog.text
