"""The SMTP front's asyncio adapter: sockets, TLS, time; nothing else.

The sans-IO core (`postvakt.smtp`) owns the only receive buffer and every
protocol rule; the policy (`postvakt.policy`) owns every decision; the queue
owns durability. This module moves bytes between the socket and the core,
asks the policy when the core asks for an answer, streams DATA into the spool
and sends the `250` only after `commit()` returned (file and directory fsync).

STARTTLS follows the order that keeps plaintext out of the encrypted session:
the core queues `220` and emits `StartTLS`; we write the 220, pause reading,
run `loop.start_tls()`, then tell the core, which drops whatever plaintext was
pipelined behind the command and resets the session (RFC 3207 §4.2).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from postvakt import clock, metrics, smtp
from postvakt.address import Address, AddressError, parse_header_addresses
from postvakt.directory import DirectoryUnavailable
from postvakt.dnsclient import client_for
from postvakt.grants.logins import Outcome
from postvakt.logtext import printable
from postvakt.mailauth.inbound import Inbound, Judgement, judge
from postvakt.net import client_address
from postvakt.policy import (
    Client,
    Decision,
    Grant,
    Verdict,
    check_header_from,
    check_rcpt,
    check_sender,
)
from postvakt.policy.limits import Usage
from postvakt.policy.limits import hold_reason as limits_hold_reason
from postvakt.policy.roads import Road, each_road, first_open
from postvakt.queue import Envelope, QueueWriteError, Recipient
from postvakt.reply import Reply
from postvakt.server.handshake import listener_of, start_server_tls
from postvakt.server.proxy import Proxied
from postvakt.smtp import replies as smtp_replies

if TYPE_CHECKING:
    from postvakt.queue import IncomingMessage
    from postvakt.server.accept import Slot
    from postvakt.server.services import App

log = logging.getLogger("postvakt.smtp")

# The write buffer above which we stop reading from a client that does not read
# our replies (robustness P13: 10^5 pipelined NOOPs must not grow memory).
WRITE_HIGH_WATER = 256 * 1024

REPLY_AUTH_BLOCKED = Reply(454, "4.7.0", "Too many failed logins, try again later")
# The user database cannot be reached: never "no such user" for one who may exist.
REPLY_AUTH_UNAVAILABLE = Reply(454, "4.7.0", "Temporary authentication failure")
REPLY_LOOKUP_UNAVAILABLE = Reply(451, "4.3.0", "Temporary lookup failure, try again later")
# Warn mode: the finding travels with the message, where the recipient's filters can see it.
WARNING_HEADER = "X-Postvakt-Sender-Warning"
# The core's catalogue and the queue's own error reply, so every side says the same.
REPLY_DATA_GO = smtp_replies.START_DATA
REPLY_QUEUE_ERROR = QueueWriteError.reply
REPLY_NO_SPACE = Reply(452, "4.3.1", "Insufficient system storage")
REPLY_HEADER_TOO_LONG = Reply(552, "5.3.4", "Header section too long to check the sender")


def received_protocol(esmtp: bool, tls: bool, auth: bool, smtputf8: bool) -> str:
    """The `with` keyword of Received: (RFC 3848; RFC 6531 §3.7.3 for SMTPUTF8).

    ESMTP + S for TLS + A for AUTH (ESMTPSA); a transaction that used SMTPUTF8
    is UTF8SMTP with the same suffixes (UTF8SMTPSA). Plain HELO is SMTP.
    """
    if not esmtp:
        return "SMTP"
    return ("UTF8SMTP" if smtputf8 else "ESMTP") + ("S" if tls else "") + ("A" if auth else "")


def _header_values(headers: tuple[tuple[str, str], ...], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


class SMTPSession(asyncio.Protocol):
    # Set before connection_made on a PROXY listener: the client the header names.
    proxied: Proxied | None = None

    def __init__(self, app: App, kind: str, slot: Slot | None = None) -> None:
        self.app = app
        # This session's settings from its start to its end: a reload (SIGHUP) applies
        # to the sessions that start after it, as Postfix's and Dovecot's do.
        self.config = app.config
        self.kind = kind  # "smtp" | "submission" | "submissions"
        # This connection's place in the accept path's counts, given back when it ends.
        self.slot = slot
        self.transport: asyncio.Transport | None = None
        self.conn: smtp.SMTPServer | None = None
        self.ip = "?"
        self.tls_info = ""
        self.busy = False  # an answer is being computed in a task
        self.closing = False
        self.msg: IncomingMessage | None = None
        self.msg_failed = False
        self.sender = ""
        self.rcpts: list[Recipient] = []
        self.mail_event: smtp.MailFrom | None = None
        self.hold_reason: str | None = None
        self.warnings: list[str] = []
        # Several nodes: the grant and counts read off the loop for this command.
        self.shared_grant: Grant | None = None
        self.shared_usage: Usage | None = None
        self.idle_handle: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.tls_pending: list[bytes] | None = None
        self.write_paused = False
        self.summarized = False

    @property
    def in_transaction(self) -> bool:
        return bool(self.sender or self.rcpts or self.msg is not None)

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        if self.proxied is not None:
            self.ip = self.proxied.client
        else:
            self.ip = client_address(transport.get_extra_info("peername"))
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        cfg = self.config
        tls_active = transport.get_extra_info("ssl_object") is not None
        if tls_active:
            self._note_tls()
        self.conn = smtp.SMTPServer(
            smtp.Settings(
                hostname=cfg.hostname,
                max_message_size=cfg.smtp.max_message_size,
                max_recipients=cfg.smtp.max_recipients,
                soft_error_limit=cfg.smtp.soft_error_limit,
                hard_error_limit=cfg.smtp.hard_error_limit,
                max_hops=cfg.smtp.max_hops,
                max_line_length=cfg.smtp.max_line_length,
                tls_available=self.app.ssl_context is not None,
                tls_active=tls_active,
                require_tls=self.kind == "submission",
                require_auth=self.kind in ("submission", "submissions"),
            )
        )
        self.app.sessions.add(self)
        if self.proxied is not None:
            log.info(
                "connect client=%s port=%s proxy=%s%s",
                self.ip,
                self.kind,
                self.proxied.proxy,
                " health-check" if self.proxied.local else "",
            )
        else:
            log.debug("connect client=%s port=%s", self.ip, self.kind)
        metrics.smtpd_connect(self.kind)
        self._flush()
        self._reset_idle()

    def data_received(self, data: bytes) -> None:
        if self.conn is None or self.closing:
            return
        if self.tls_pending is not None:
            # Decrypted bytes that arrive after the handshake but before the
            # core heard of it: they belong to the new session, keep them.
            self.tls_pending.append(data)
            return
        if self.msg is not None:
            # In DATA the deadline moves with the bytes that arrive, at the
            # minimum data rate: a slow but honest upload goes on, one byte
            # every few seconds does not (robustness P10).
            self._extend_deadline(len(data))
        self.conn.receive_data(data)
        self._pump()

    def eof_received(self) -> bool | None:
        if self.conn is not None and not self.closing:
            self.conn.receive_data(b"")
            self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None and not self.summarized:
            # One line per session, as Postfix's: what the client did, in counts.
            self.summarized = True
            log.info(
                "disconnect from unknown[%s] port=%s %s",
                self.ip,
                self.kind,
                self.conn.command_summary(),
            )
        self.closing = True
        self._abort_message()
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        self.app.sessions.discard(self)
        if self.slot is not None:
            self.slot.release()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.transport.is_closing() and not self.busy:
            self.transport.resume_reading()

    # ------------------------------------------------------------ plumbing

    def _reset_idle(self) -> None:
        """A per-request deadline: reset when we answer a command, not by every byte."""
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.config.smtp.idle_timeout
        if self.idle_handle is None:
            self.idle_handle = loop.call_at(self.deadline, self._on_idle)

    def _extend_deadline(self, nbytes: int) -> None:
        rate = self.config.smtp.min_data_rate
        if rate > 0:
            self.deadline += nbytes / rate

    def _on_idle(self) -> None:
        self.idle_handle = None
        if self.conn is None or self.closing:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self.deadline or self.busy:
            self.idle_handle = loop.call_at(max(self.deadline, loop.time() + 0.5), self._on_idle)
            return
        log.info("timeout client=%s port=%s", self.ip, self.kind)
        self._abort_message()
        self.conn.idle_timeout()
        self._pump()

    def _flush(self) -> None:
        if self.conn is None or self.transport is None:
            return
        out = self.conn.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)
            self._reset_idle()

    def _close(self) -> None:
        self.closing = True
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _client(self) -> Client:
        assert self.conn is not None
        now = clock.now()
        if self.app.state is not None and self.app.state.remote:
            grant = self.shared_grant  # read off the loop by _read_shared
        elif self.config.relay.pop_before_smtp > 0:
            grant = self.app.grants.lookup(self.ip, now)
        else:
            grant = None
        return Client(
            ip=self.ip,
            port=self.kind,
            tls=self.conn.tls,
            login=self.conn.login,
            grant=grant,
            now=now,
        )

    def _log_decision(self, stage: str, decision: Decision, **fields: str) -> None:
        assert self.conn is not None
        extra = " ".join(f"{k}=<{v}>" for k, v in fields.items())
        if self.proxied is not None:
            extra = f"proxy={self.proxied.proxy} {extra}"
        log.info(
            "%s client=%s port=%s login=%s %s %s",
            stage,
            self.ip,
            self.kind,
            self.conn.login or "-",
            extra,
            decision.log_line(),
        )
        if stage == "LIMIT":
            metrics.limit_hit(decision.rule, decision.verdict.value)
        else:
            metrics.smtpd_decision(
                stage.lower(), decision.verdict.value, decision.rule, decision.reply.code
            )

    def _pump(self) -> None:
        """Drive the core until it needs more input or an answer we compute in a task."""
        conn = self.conn
        if conn is None:
            return
        while not self.closing and not self.busy:
            try:
                event = conn.next_event()
            except Exception:  # the core promises never to raise; if it does, fail closed
                log.exception("core error client=%s", self.ip)
                self._abort_message()
                self._close()
                return
            if event is smtp.NEED_DATA or event is smtp.PAUSED:
                break
            self._handle(event)
        if not self.closing:
            self._send_pending()

    def _send_pending(self) -> None:
        assert self.conn is not None
        cfg = self.config.smtp
        if self.conn.error_count > cfg.soft_error_limit and cfg.error_sleep > 0:
            # Tar-pit an erring client (Postfix smtpd_error_sleep_time): delay the
            # reply and stop reading meanwhile, so pipelined junk gains nothing.
            out = self.conn.data_to_send()
            if out and self.transport is not None:
                self.busy = True
                self.transport.pause_reading()
                asyncio.get_running_loop().call_later(cfg.error_sleep, self._delayed_write, out)
            return
        self._flush()

    def _delayed_write(self, out: bytes) -> None:
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(out)
        self._reset_idle()
        if not self.write_paused:
            self.transport.resume_reading()
        self._pump()

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        """Answer an event in a task; the core stays PAUSED until we respond."""
        self.busy = True
        assert self.transport is not None
        self.transport.pause_reading()
        task = asyncio.ensure_future(coro)
        self.app.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[None]) -> None:
        self.app.tasks.discard(task)
        self.busy = False
        if task.cancelled():
            self._abort_message()
            self._close()
            return
        if task.exception() is not None:
            log.error("session error client=%s: %r", self.ip, task.exception())
            self._abort_message()
            if self.conn is not None:
                self.conn.respond(Reply(451, "4.3.0", "Local error in processing"))
        if self.transport is not None and not self.transport.is_closing() and not self.write_paused:
            self.transport.resume_reading()
        self._pump()

    # ------------------------------------------------------------ events

    def _handle(self, event: object) -> None:
        conn = self.conn
        assert conn is not None
        remote = self.app.state is not None and self.app.state.remote
        if isinstance(event, smtp.MailFrom | smtp.RcptTo):
            handler: Callable[[Any], None] = (
                self._on_mail if isinstance(event, smtp.MailFrom) else self._on_rcpt
            )
            if remote:
                self._run(self._read_shared(handler, event))
            else:
                self._decide(handler, event)
        elif isinstance(event, smtp.DataStart):
            self._run(self._on_data_start())
        elif isinstance(event, smtp.DataChunk):
            self._on_chunk(event.data)
        elif isinstance(event, smtp.EndOfData):
            self._run(self._on_end_of_data(event))
        elif isinstance(event, smtp.AuthCredentials):
            self._run(self._on_auth(event))
        elif isinstance(event, smtp.StartTLS):
            self._run(self._on_starttls())
        elif isinstance(event, smtp.Helo):
            self._reset_transaction()
        elif isinstance(event, smtp.Quit | smtp.Close):
            self._abort_message()
            self._close()

    def _reset_transaction(self) -> None:
        self._abort_message()
        self.sender = ""
        self.rcpts = []
        self.mail_event = None
        self.hold_reason = None
        self.warnings = []

    async def _read_shared(self, handler: Callable[[Any], None], event: object) -> None:
        """A shared store over the network: read the grant and counts in a thread, then decide."""
        assert self.conn is not None
        conn, app = self.conn, self.app

        def read(now: float) -> tuple[Grant | None, Usage | None]:
            grant = (
                app.grants.lookup(self.ip, now) if app.config.relay.pop_before_smtp > 0 else None
            )
            if app.limiter is None:
                return grant, None
            client = Client(
                ip=self.ip, port=self.kind, tls=conn.tls, login=conn.login, grant=grant, now=now
            )
            return grant, app.limiter.usage(app.limiter.subject(app.config, client), now)

        loop = asyncio.get_running_loop()
        self.shared_grant, self.shared_usage = await loop.run_in_executor(None, read, time.time())
        self._decide(handler, event)

    def _decide(self, handler: Callable[[Any], None], event: object) -> None:
        """MAIL or RCPT; a user database that cannot be reached gets 451, never a 550."""
        try:
            handler(event)
        except DirectoryUnavailable as e:
            assert self.conn is not None
            log.warning("%s client=%s: %s", type(event).__name__, self.ip, e)
            self.conn.respond(REPLY_LOOKUP_UNAVAILABLE)

    def _on_mail(self, ev: smtp.MailFrom) -> None:
        assert self.conn is not None
        self._reset_transaction()
        if self.app.low_on_space(ev.size):
            log.warning("MAIL client=%s refused: queue file system low on space", self.ip)
            metrics.smtpd_reject("mail", REPLY_NO_SPACE.code)
            self.conn.respond(REPLY_NO_SPACE)
            return
        client = self._client()
        decision = check_sender(client, ev.sender, self.config, self.app.directory)
        self._log_decision("MAIL", decision, **{"from": str(ev.sender)})
        if decision.reply.positive and self.app.limiter is not None:
            limit = self.app.limiter.check_mail(self.config, client, self.shared_usage)
            if limit.verdict is not Verdict.PERMIT:
                self._log_decision("LIMIT", limit, **{"from": str(ev.sender)})
                decision = decision if limit.accepted else limit
                self.hold_reason = limits_hold_reason(limit)
        if decision.reply.positive:
            self.sender = str(ev.sender)
            self.mail_event = ev
            self.warnings.extend(s.detail for s in decision.trace if s.result == "warn")
        self.conn.respond(decision.reply)

    def _on_rcpt(self, ev: smtp.RcptTo) -> None:
        assert self.conn is not None
        client = self._client()
        decision = check_rcpt(client, ev.recipient, self.config, self.app.directory)
        self._log_decision("RCPT", decision, **{"from": self.sender, "to": str(ev.recipient)})
        if decision.reply.positive and self.app.limiter is not None:
            limit = self.app.limiter.check_rcpt(
                self.config, client, len(self.rcpts), self.shared_usage
            )
            if limit.verdict is not Verdict.PERMIT:
                self._log_decision("LIMIT", limit, **{"from": self.sender, "to": str(ev.recipient)})
                decision = decision if limit.accepted else limit
                self.hold_reason = self.hold_reason or limits_hold_reason(limit)
        if decision.reply.positive:
            self.rcpts.append(
                Recipient(address=str(ev.recipient), orcpt=ev.orcpt, notify=ev.notify)
            )
        self.conn.respond(decision.reply)

    async def _on_data_start(self) -> None:
        assert self.conn is not None
        try:
            # Creating the spool file waits on the file system (the journal is
            # busy with other sessions' fsyncs): off the event loop.
            loop = asyncio.get_running_loop()
            self.msg = await loop.run_in_executor(None, self.app.queue.new_message)
            self.msg.write(
                self._received_header(self.msg.queue_id).encode("utf-8", "surrogateescape")
            )
        except (QueueWriteError, OSError) as e:
            log.error("queue error client=%s: %s", self.ip, e)
            self._abort_message()
            self.conn.respond(REPLY_QUEUE_ERROR)
            return
        self.msg_failed = False
        self.conn.respond(REPLY_DATA_GO)

    def _on_chunk(self, data: bytes) -> None:
        if self.msg is None or self.msg_failed:
            return
        try:
            self.msg.write(data)
        except (QueueWriteError, OSError) as e:
            log.error("queue write error client=%s id=%s: %s", self.ip, self.msg.queue_id, e)
            self.msg_failed = True

    async def _on_end_of_data(self, ev: smtp.EndOfData) -> None:
        conn = self.conn
        assert conn is not None
        msg, self.msg = self.msg, None
        if msg is None:
            conn.respond(REPLY_QUEUE_ERROR)
            return
        if ev.problem is not None:
            msg.abort()
            log.info(
                "DATA client=%s login=%s id=%s refused reply=%r",
                self.ip,
                conn.login or "-",
                msg.queue_id,
                str(ev.problem),
            )
            metrics.smtpd_reject("data", ev.problem.code)
            conn.respond(ev.problem)
            return
        if self.msg_failed:
            msg.abort()
            conn.respond(REPLY_QUEUE_ERROR)
            return
        if not ev.headers_complete and self.config.sender.header_from != "off":
            # A From: beyond the part of the header we read could not be checked:
            # refuse rather than let a forged sender through unseen.
            msg.abort()
            log.info(
                "DATA client=%s login=%s id=%s refused: header section too long to check reply=%r",
                self.ip,
                conn.login or "-",
                msg.queue_id,
                str(REPLY_HEADER_TOO_LONG),
            )
            metrics.smtpd_reject("data", REPLY_HEADER_TOO_LONG.code)
            conn.respond(REPLY_HEADER_TOO_LONG)
            return
        try:
            header_from = [
                a for v in _header_values(ev.headers, "from") for a in parse_header_addresses(v)
            ]
            header_sender = [
                a for v in _header_values(ev.headers, "sender") for a in parse_header_addresses(v)
            ]
        except AddressError as e:
            # A From: that two parsers would read differently (CVE-2023-27043) is
            # refused rather than skipped: skipping would let a forged sender through.
            if self.config.sender.header_from != "off":
                msg.abort()
                log.info(
                    "DATA client=%s login=%s id=%s refused: bad From:/Sender: reply=%r",
                    self.ip,
                    conn.login or "-",
                    msg.queue_id,
                    str(e.reply),
                )
                metrics.smtpd_reject("data", e.reply.code)
                conn.respond(e.reply)
                return
            header_from, header_sender = [], []
        decision = check_header_from(
            self._client(), header_from, header_sender, self.config, self.app.directory
        )
        self._log_decision(
            "DATA", decision, **{"id": msg.queue_id, "header_from": ",".join(map(str, header_from))}
        )
        if not decision.reply.positive:
            msg.abort()
            conn.respond(decision.reply)
            return
        road = first_open(each_road(self._client(), self.config))
        auth = await self._check_authentication(msg, road, header_from)
        if auth is not None and not auth.decision.reply.positive:
            msg.abort()
            conn.respond(auth.decision.reply)
            return
        warnings = self.warnings + [s.detail for s in decision.trace if s.result == "warn"]
        for w in warnings:
            log.warning(
                "sender warning id=%s client=%s login=%s: %s",
                msg.queue_id,
                self.ip,
                conn.login or "-",
                w,
            )
        mail = self.mail_event
        envelope = Envelope(
            sender=self.sender,
            recipients=tuple(self.rcpts),
            received_at=time.time(),
            client_ip=self.ip,
            helo=conn.helo or "",
            login=conn.login,
            smtputf8=bool(mail and mail.smtputf8),
            body=mail.body if mail else None,
            ret=mail.ret if mail else None,
            envid=mail.envid if mail else None,
            hold=self.hold_reason or (auth.hold if auth else None),
            # Authentication-Results: first (RFC 8601 §5: at the top of the message).
            headers=(
                *([auth.header] if auth else []),
                *(f"{WARNING_HEADER}: {w}" for w in warnings),
            ),
            # Signing (queue manager) vouches only for a sender that passed every check.
            road=road.rule if road is not None and not warnings else None,
            authserv_id=self.config.hostname,
        )
        try:
            await self.app.commit(msg, envelope)
        except (QueueWriteError, OSError) as e:
            log.error("queue commit failed client=%s id=%s: %s", self.ip, msg.queue_id, e)
            msg.abort()
            conn.respond(REPLY_QUEUE_ERROR)
            return
        self.app.crash_point("before_250")
        log.info(
            "queued id=%s client=%s login=%s from=<%s> nrcpt=%d size=%d%s",
            msg.queue_id,
            self.ip,
            conn.login or "-",
            self.sender,
            len(self.rcpts),
            ev.size,
            " hold=" + self.hold_reason if self.hold_reason else "",
        )
        metrics.message_accepted(self.kind, envelope.hold)
        conn.respond(smtp_replies.queued(msg.queue_id))
        self._flush()
        self.app.crash_point("after_250")
        self.app.message_queued()
        if self.app.limiter is not None:
            await self.app.limiter.accepted(
                self.config, self._client(), msg.queue_id, len(self.rcpts), self.hold_reason
            )
        self.sender, self.rcpts, self.mail_event, self.hold_reason, self.warnings = (
            "",
            [],
            None,
            None,
            [],
        )

    async def _check_authentication(
        self, msg: IncomingMessage, road: Road | None, header_from: list[Address]
    ) -> Judgement | None:
        """SPF, DKIM and DMARC (`[auth_checks]`) for mail from outside: port 25,
        a client on no road. None when they do not apply or are off."""
        cfg = self.config
        if self.kind != "smtp" or road is not None or not cfg.auth_checks.enabled:
            return None
        assert self.conn is not None
        loop = asyncio.get_running_loop()
        try:
            message = await loop.run_in_executor(None, msg.read_back)
        except QueueWriteError as e:
            log.error("auth checks: %s", e)
            message = None
        inbound = Inbound(
            ip=self.ip,
            helo=self.conn.helo or "",
            mail_from=self.sender,
            message=message,
            from_domains=tuple(a.domain.lower() for a in header_from if a.domain),
        )
        auth = await judge(client_for(cfg.dns), cfg, inbound)
        self._log_decision("CHECKS", auth.decision, **{"id": msg.queue_id, "from": self.sender})
        return auth

    async def _on_auth(self, ev: smtp.AuthCredentials) -> None:
        """Reserve the attempt, check, settle (postvakt.grants.logins): parallel
        sessions cannot get more passwords checked than serial ones."""
        conn = self.conn
        assert conn is not None
        throttle = self.app.login_throttle
        loop = asyncio.get_running_loop()
        started = loop.time()
        reservation = await throttle.reserve(self.ip, ev.username, time.time())
        if not reservation.granted:
            assert reservation.refused is not None
            log.info(
                "AUTH client=%s port=%s user=<%s> refused: too many failures (%s)",
                self.ip,
                self.kind,
                printable(ev.username),
                reservation.refused.value,
            )
            metrics.smtpd_auth(self.kind, ev.mechanism, ok=False)
            conn.respond(REPLY_AUTH_BLOCKED)
            return
        try:
            login = await self.app.authenticator.verify(ev.username, ev.password)
        except DirectoryUnavailable as e:
            await throttle.settle(reservation, Outcome.UNCHECKED, "", time.time())
            log.warning("AUTH client=%s port=%s user=<%s>: %s", self.ip, self.kind, ev.username, e)
            conn.respond(REPLY_AUTH_UNAVAILABLE)
            return
        except BaseException:
            await throttle.settle(reservation, Outcome.UNCHECKED, "", time.time())
            raise
        if login is None:
            outcome = await throttle.settle(reservation, Outcome.FAILED, ev.password, time.time())
            # The answer waits the pair's slow-down, counted from the attempt's start.
            wait = started + throttle.delay(reservation) - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            log.info(
                "AUTH client=%s port=%s user=<%s> mechanism=%s failed%s",
                self.ip,
                self.kind,
                printable(ev.username),
                ev.mechanism,
                " (same password as before)" if outcome is Outcome.REPEATED else "",
            )
            metrics.smtpd_auth(self.kind, ev.mechanism, ok=False)
            conn.respond(smtp_replies.AUTH_INVALID)
            return
        await throttle.settle(reservation, Outcome.SUCCEEDED, "", time.time())
        log.info(
            "AUTH client=%s port=%s user=<%s> mechanism=%s ok",
            self.ip,
            self.kind,
            login,
            ev.mechanism,
        )
        metrics.smtpd_auth(self.kind, ev.mechanism, ok=True)
        conn.respond(smtp_replies.AUTH_OK, login=login)

    async def _on_starttls(self) -> None:
        conn, transport = self.conn, self.transport
        assert conn is not None and transport is not None
        ctx = self.app.ssl_context
        self._flush()  # the 220
        if ctx is None:
            self._close()
            return
        # Reading stays paused until start_tls has put the TLS layer in front of
        # us (it resumes the raw transport itself): a ClientHello must never
        # reach this protocol as plaintext.
        self.tls_pending = []
        new_transport = await start_server_tls(
            transport, self, ctx, client=self.ip, listener=listener_of(self.kind, transport)
        )
        if new_transport is None:
            # The failed handshake closed the connection; the TLS layer never
            # made it ours, so no connection_lost() comes: end the session here.
            self.connection_lost(None)
            return
        self.transport = new_transport
        self._note_tls()
        self._reset_transaction()
        conn.tls_started()
        pending, self.tls_pending = self.tls_pending, None
        for chunk in pending:
            conn.receive_data(chunk)

    def _note_tls(self) -> None:
        assert self.transport is not None
        obj = self.transport.get_extra_info("ssl_object")
        if obj is not None:
            cipher = obj.cipher()
            self.tls_info = f"{obj.version()} with cipher {cipher[0] if cipher else '?'}"

    def _abort_message(self) -> None:
        if self.msg is not None:
            try:
                self.msg.abort()
            except OSError:
                pass
            self.msg = None

    def _received_header(self, qid: str) -> str:
        """RFC 5321 §4.4 trace header, stamped with the local time and its real offset."""
        conn = self.conn
        assert conn is not None
        smtputf8 = bool(self.mail_event and self.mail_event.smtputf8)
        proto = received_protocol(conn.esmtp, conn.tls, bool(conn.login), smtputf8)
        helo = (conn.helo or "unknown").replace("\r", "").replace("\n", "")[:255]
        lines = [
            f"Received: from {helo} ([{self.ip}])",
            f"\tby {self.config.hostname} (postvakt) with {proto} id {qid}",
        ]
        if self.tls_info and conn.tls:
            lines.append(f"\t(using {self.tls_info})")
        if len(self.rcpts) == 1:
            lines.append(f"\tfor <{self.rcpts[0].address}>")
        lines[-1] += ";"
        # RFC 5322 §3.3: "-0000" means "local time unknown"; we know it.
        lines.append("\t" + email.utils.formatdate(localtime=True))
        return "\r\n".join(lines) + "\r\n"

    def shutdown(self) -> None:
        """Server stopping: finish the transaction in flight, then say 421."""
        if self.conn is not None and not self.closing:
            self.conn.shutdown()
            self._pump()
