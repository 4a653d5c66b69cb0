"""Outbound limits at the SMTP front: counters and hold notices.

The decisions are pure (`postvakt.policy.limits`); this module feeds them the
counters, records what was accepted, and, when a message is held, tells the
admin (a mail to postmaster and a log line) and, with `[limits] notify_user`,
the user. Notices are queued like any mail, from the null sender so that they
can never bounce back and forth; one notice per subject and limit per window,
so a spam run of thousands of messages yields one mail, not thousands.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from postvakt import clock
from postvakt.config import Config
from postvakt.grants.counters import CounterStore
from postvakt.policy import Client, Decision
from postvakt.policy.limits import (
    HOUR,
    WINDOW,
    Subject,
    Usage,
    check_mail_limits,
    check_rcpt_limits,
    subject_for,
    window_end,
)
from postvakt.policy.roads import GENERATED
from postvakt.queue import Envelope, Queue, QueueWriteError, Recipient
from postvakt.queue.notice import notice_text
from postvakt.store.local import MemoryNoticeStore, NoticeStore

log = logging.getLogger("postvakt.limits")

__all__ = ["Limiter"]


@dataclass
class Limiter:
    """The limits' state in one server process: the counter store and who was told."""

    store: CounterStore
    queue: Queue
    # Who was already told in the current window (shared like the counters).
    notices: NoticeStore = field(default_factory=MemoryNoticeStore)
    _flush: Any = None

    def subject(self, config: Config, client: Client) -> Subject | None:
        return subject_for(client, config.limits, config.relay.networks, config.relay.clients)

    def usage(self, subject: Subject | None, now: float) -> Usage:
        return self.store.usage(subject.counter_key, now) if subject is not None else Usage()

    def check_mail(self, config: Config, client: Client, usage: Usage | None = None) -> Decision:
        """`usage`: the subject's counts when the caller read them off the event loop."""
        subject = self.subject(config, client)
        if usage is None:
            usage = self.usage(subject, client.now)
        return check_mail_limits(client, subject, usage)

    def check_rcpt(
        self, config: Config, client: Client, in_message: int, usage: Usage | None = None
    ) -> Decision:
        subject = self.subject(config, client)
        if usage is None:
            usage = self.usage(subject, client.now)
        return check_rcpt_limits(client, subject, usage, in_message)

    async def accepted(
        self, config: Config, client: Client, queue_id: str, recipients: int, held: str | None
    ) -> None:
        """After the 250: count the message; for a held one, send the notices.

        Runs after the client heard 250, so nothing here may fail the session:
        a broken counter store or a full disk is logged, never answered.
        """
        try:
            await self._accepted(config, client, queue_id, recipients, held)
        except Exception:
            log.exception("limits bookkeeping failed id=%s client=%s", queue_id, client.ip)

    async def _accepted(
        self, config: Config, client: Client, queue_id: str, recipients: int, held: str | None
    ) -> None:
        subject = self.subject(config, client)
        loop = asyncio.get_running_loop()
        if subject is not None:
            if getattr(self.store, "blocking", False):
                await loop.run_in_executor(
                    None, self.store.add, subject.counter_key, 1, recipients, client.now
                )
            else:
                self.store.add(subject.counter_key, 1, recipients, client.now)
                if self._flush is None:
                    self._flush = loop.call_later(0.5, self._flush_snapshot)
        if held is None:
            return
        rule = held.partition(":")[0]
        who = str(subject) if subject is not None else f"client address {client.ip}"
        log.warning(
            "held id=%s client=%s login=%s rule=%s reason=%r release=%r",
            queue_id,
            client.ip,
            client.login or "-",
            rule,
            held,
            f"postvakt queue release {queue_id}",
        )
        key = f"{subject.counter_key if subject is not None else client.ip}|{rule}"
        window = WINDOW.get(rule.rpartition(".")[2]) or HOUR
        until = window_end(window, client.now)
        if getattr(self.notices, "blocking", False):
            first = await loop.run_in_executor(None, self.notices.claim, key, until, client.now)
        else:
            first = self.notices.claim(key, until, client.now)
        if not first:
            return
        notices = [
            (
                config.postmaster_address,
                notice_text(config, who, client, queue_id, held, admin=True),
            )
        ]
        if config.limits.notify_user and client.login:
            notices.append(
                (client.login, notice_text(config, who, client, queue_id, held, admin=False))
            )
        for rcpt, text in notices:
            try:
                nid = await loop.run_in_executor(
                    None, self._queue_notice, config, rcpt, text, client.now
                )
            except (QueueWriteError, OSError) as e:
                log.error("hold notice for id=%s to <%s> not queued: %s", queue_id, rcpt, e)
                continue
            log.info("hold notice id=%s for held id=%s to=<%s>", nid, queue_id, rcpt)

    def _flush_snapshot(self) -> None:
        self._flush = None
        if not getattr(self.store, "blocking", False):
            self.store.flush(clock.now())

    def _queue_notice(self, config: Config, rcpt: str, text: str, now: float) -> str:
        msg = self.queue.new_message()
        msg.write(text.encode("utf-8"))
        msg.commit(
            Envelope(
                sender="",
                recipients=(Recipient(address=rcpt),),
                received_at=now,
                client_ip="127.0.0.1",
                helo=config.hostname,
                login=None,
                road=GENERATED,
            )
        )
        return msg.queue_id
