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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from postvakt import clock, metrics, smtp
from postvakt.address import Address
from postvakt.directory import DirectoryUnavailable
from postvakt.grants.logins import Outcome
from postvakt.logtext import printable
from postvakt.net import client_address
from postvakt.policy import Client, Decision, Grant, Port, port_kind
from postvakt.policy.limits import Usage
from postvakt.policy.roads import Road, each_road, first_open
from postvakt.policy.session import (
    Answer,
    Counted,
    on_end_of_data,
    on_mail,
    on_rcpt,
    requires_auth,
    requires_starttls,
)
from postvakt.queue import Envelope, QueueWriteError, Recipient
from postvakt.reply import Reply
from postvakt.server.handshake import listener_of, start_server_tls
from postvakt.server.proxy import Proxied
from postvakt.smtp import replies as smtp_replies

if TYPE_CHECKING:
    from postvakt.auth import Authenticator
    from postvakt.config import Config
    from postvakt.directory import Directory
    from postvakt.grants import GrantStore
    from postvakt.grants.logins import LoginThrottle
    from postvakt.mailauth.inbound import Judgement
    from postvakt.policy.limits import Subject
    from postvakt.queue import IncomingMessage, Queue
    from postvakt.server.accept import Slot
    from postvakt.server.idle import Deadlines
    from postvakt.store import State

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


def received_protocol(esmtp: bool, tls: bool, auth: bool, smtputf8: bool) -> str:
    """The `with` keyword of Received: (RFC 3848; RFC 6531 §3.7.3 for SMTPUTF8).

    ESMTP + S for TLS + A for AUTH (ESMTPSA); a transaction that used SMTPUTF8
    is UTF8SMTP with the same suffixes (UTF8SMTPSA). Plain HELO is SMTP.
    """
    if not esmtp:
        return "SMTP"
    return ("UTF8SMTP" if smtputf8 else "ESMTP") + ("S" if tls else "") + ("A" if auth else "")


class Limits(Protocol):
    """The outbound limits' state (`server.limits.Limiter`): who is counted, their counts,
    and the bookkeeping after a message was queued."""

    def subject(self, config: Config, client: Client) -> Subject | None: ...

    def usage(self, subject: Subject | None, now: float) -> Usage: ...

    async def accepted(
        self, config: Config, client: Client, queue_id: str, recipients: int, held: str | None
    ) -> None: ...


class SessionContext(Protocol):
    """What an SMTP session may use of the server (`server.services.App`), and nothing more."""

    @property
    def config(self) -> Config: ...
    @property
    def directory(self) -> Directory: ...
    @property
    def authenticator(self) -> Authenticator: ...
    @property
    def grants(self) -> GrantStore: ...
    @property
    def login_throttle(self) -> LoginThrottle: ...
    @property
    def queue(self) -> Queue: ...
    @property
    def ssl_context(self) -> Any: ...
    @property
    def state(self) -> State | None: ...
    @property
    def limiter(self) -> Limits | None: ...
    @property
    def sessions(self) -> set[Any]: ...
    @property
    def deadlines(self) -> Deadlines: ...
    @property
    def tasks(self) -> set[asyncio.Future[Any]]: ...

    async def commit(self, msg: IncomingMessage, envelope: Envelope) -> None: ...

    def low_on_space(self, announced_size: int | None) -> bool: ...

    def message_queued(self) -> None: ...

    def crash_point(self, name: str) -> None: ...


# The Received: date, in local time with its real offset (RFC 5322 §3.3).
_RECEIVED_DATE = clock.PerSecond(lambda t: email.utils.formatdate(t, localtime=True))


@dataclass(slots=True)
class Transaction:
    """One mail transaction from MAIL to the end of data, as one value.

    HELO, RSET, MAIL, STARTTLS and a queued message start a new one.
    """

    # The accepted MAIL command (sender and parameters); None before MAIL.
    mail: smtp.MailFrom | None = None
    recipients: list[Recipient] = field(default_factory=list)
    # Why a limit sends the message to the hold queue; None: delivered.
    hold: str | None = None
    # Findings of checks in "warn" mode, carried in the message.
    warnings: list[str] = field(default_factory=list)
    # The POP-before-SMTP grant as read at MAIL (`grant_read`), used by the
    # transaction's later decisions; re-read before a refusal it might lift.
    grant: Grant | None = None
    grant_read: bool = False

    @property
    def sender(self) -> str:
        return str(self.mail.sender) if self.mail is not None else ""

    @property
    def smtputf8(self) -> bool:
        return bool(self.mail and self.mail.smtputf8)


# The protocol core's settings, one object per config, port kind and TLS
# state, shared by the sessions that use them (frozen): one per connection
# was 180 bytes each, 1.7 MB for 10,000 idle connections (measured).
_settings: dict[tuple[str, bool, bool], tuple[Config, smtp.Settings]] = {}


def core_settings(cfg: Config, kind: Port, tls_available: bool, tls_active: bool) -> smtp.Settings:
    key = (kind, tls_available, tls_active)
    cached = _settings.get(key)
    if cached is not None and cached[0] is cfg:
        return cached[1]
    settings = smtp.Settings(
        hostname=cfg.hostname,
        max_message_size=cfg.smtp.max_message_size,
        max_recipients=cfg.smtp.max_recipients,
        soft_error_limit=cfg.smtp.soft_error_limit,
        hard_error_limit=cfg.smtp.hard_error_limit,
        max_hops=cfg.smtp.max_hops,
        max_line_length=cfg.smtp.max_line_length,
        tls_available=tls_available,
        tls_active=tls_active,
        require_tls=requires_starttls(kind),
        require_auth=requires_auth(kind),
    )
    _settings[key] = (cfg, settings)
    return settings


class SMTPSession(asyncio.Protocol):
    # One per connection, idle ones included: slots, not an instance dictionary
    # (720 -> 624 bytes each with its transaction, measured with tracemalloc;
    # 1.7 MB less for 10,000 idle connections).
    __slots__ = (
        "app",
        "busy",
        "closing",
        "config",
        "conn",
        "deadline",
        "idle_key",
        "ip",
        "kind",
        "loop",
        "msg",
        "msg_failed",
        "proxied",
        "shared_grant",
        "shared_usage",
        "slot",
        "summarized",
        "tls_info",
        "tls_pending",
        "transport",
        "tx",
        "write_paused",
    )

    def __init__(self, app: SessionContext, kind: str, slot: Slot | None = None) -> None:
        self.app = app
        # Set before connection_made on a PROXY listener: the client the header names.
        self.proxied: Proxied | None = None
        # This session's settings from its start to its end: a reload (SIGHUP) applies
        # to the sessions that start after it, as Postfix's and Dovecot's do.
        self.config = app.config
        self.kind: Port = port_kind(kind)
        # Made by the loop, which is asked once: `asyncio.get_running_loop()` is a
        # system call (getpid) each time, and a session needs the loop for every reply.
        self.loop = asyncio.get_running_loop()
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
        self.tx = Transaction()
        # Several nodes: the grant and counts read off the loop for this command.
        self.shared_grant: Grant | None = None
        self.shared_usage: Usage | None = None
        # Armed in app.deadlines (server/idle.py): its key there, None when not armed.
        self.idle_key: int | None = None
        self.deadline = 0.0
        self.tls_pending: list[bytes] | None = None
        self.write_paused = False
        self.summarized = False

    @property
    def in_transaction(self) -> bool:
        tx = self.tx
        return bool(tx.mail is not None or tx.recipients or self.msg is not None)

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
            core_settings(cfg, self.kind, self.app.ssl_context is not None, tls_active)
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
        if self.idle_key is not None:
            self.app.deadlines.cancel(self, self.idle_key)
            self.idle_key = None
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
        self.deadline = self.loop.time() + self.config.smtp.idle_timeout
        if self.idle_key is None:
            self.idle_key = self.app.deadlines.arm(self, self.deadline)

    def _extend_deadline(self, nbytes: int) -> None:
        rate = self.config.smtp.min_data_rate
        if rate > 0:
            self.deadline += nbytes / rate

    def on_deadline(self) -> None:
        self.idle_key = None
        if self.conn is None or self.closing:
            return
        loop = self.loop
        if loop.time() < self.deadline or self.busy:
            self.idle_key = self.app.deadlines.arm(self, max(self.deadline, loop.time() + 0.5))
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

    def _client(self, *, fresh: bool = False) -> Client:
        """The client with its grant: read once per transaction (an SQLite query was
        ~10% of the front's loop time when read for every MAIL, RCPT and DATA)."""
        assert self.conn is not None
        now = clock.now()
        tx = self.tx
        if self.app.state is not None and self.app.state.remote:
            grant = self.shared_grant  # read off the loop by _read_shared
        elif self.config.relay.pop_before_smtp > 0:
            if fresh or not tx.grant_read:
                tx.grant, tx.grant_read = self.app.grants.lookup(self.ip, now), True
            grant = tx.grant
        else:
            grant = None
        return self._client_as(grant, now)

    def _grant_came(self) -> bool:
        """Before a refusal: did a POP3 login since MAIL give (or renew) this client's
        grant? Then the command is judged again with it, as if read per command."""
        tx = self.tx
        if not tx.grant_read:
            return False
        before = tx.grant
        self._client(fresh=True)
        return tx.grant is not None and tx.grant != before

    def _client_as(self, grant: Grant | None, now: float) -> Client:
        """The policy's view of this connection, with the grant read for it."""
        assert self.conn is not None
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
                self.loop.call_later(cfg.error_sleep, self._delayed_write, out)
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
        task = self.loop.create_task(coro)
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
            self._on_data_start()
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
        self.tx = Transaction()

    async def _read_shared(self, handler: Callable[[Any], None], event: object) -> None:
        """A shared store over the network: read the grant and counts in a thread, then decide."""
        app = self.app

        def read(now: float) -> tuple[Grant | None, Usage | None]:
            grant = (
                app.grants.lookup(self.ip, now) if app.config.relay.pop_before_smtp > 0 else None
            )
            if app.limiter is None:
                return grant, None
            client = self._client_as(grant, now)
            return grant, app.limiter.usage(app.limiter.subject(app.config, client), now)

        loop = self.loop
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
        answer = on_mail(client, ev.sender, self.config, self.app.directory, self._counts(client))
        self._log_answer("MAIL", answer, **{"from": str(ev.sender)})
        self.tx.hold = answer.hold
        if answer.decision.reply.positive:
            self.tx.mail = ev
            self.tx.warnings.extend(answer.warnings)
        self.conn.respond(answer.decision.reply)

    def _on_rcpt(self, ev: smtp.RcptTo) -> None:
        assert self.conn is not None
        tx = self.tx
        answer = self._judge_rcpt(ev, self._client())
        if not answer.decision.reply.positive and self._grant_came():
            answer = self._judge_rcpt(ev, self._client())
        self._log_answer("RCPT", answer, **{"from": tx.sender, "to": str(ev.recipient)})
        tx.hold = tx.hold or answer.hold
        if answer.decision.reply.positive:
            tx.recipients.append(
                Recipient(address=str(ev.recipient), orcpt=ev.orcpt, notify=ev.notify)
            )
        self.conn.respond(answer.decision.reply)

    def _judge_rcpt(self, ev: smtp.RcptTo, client: Client) -> Answer:
        counts = self._counts(client)
        return on_rcpt(
            client, ev.recipient, self.config, self.app.directory, counts, len(self.tx.recipients)
        )

    def _counts(self, client: Client) -> Callable[[], Counted] | None:
        """The counters, read when the limits are consulted; None when none are kept."""
        limiter = self.app.limiter
        if limiter is None:
            return None

        def counts() -> Counted:
            subject = limiter.subject(self.config, client)
            usage = self.shared_usage
            return Counted(
                subject, usage if usage is not None else limiter.usage(subject, client.now)
            )

        return counts

    def _log_answer(self, stage: str, answer: Answer, **fields: str) -> None:
        """The policy's line; a limit that did more than permit has its own."""
        self._log_decision(stage, answer.policy, **fields)
        if answer.limit is not None and answer.limit_hit:
            self._log_decision("LIMIT", answer.limit, **fields)

    def _on_data_start(self) -> None:
        assert self.conn is not None
        try:
            # No file system work here: the message stays in memory until it
            # outgrows spool.SPILL or the committer writes it (queue/spool.py).
            self.msg = self.app.queue.new_message()
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
        """Refuse, or commit and answer 250: the header policy, the checks, the commit."""
        conn = self.conn
        assert conn is not None
        msg, self.msg = self.msg, None
        if msg is None or self.msg_failed or ev.problem is not None:
            self._refuse_data(msg, ev.problem)
            return
        header = on_end_of_data(
            self._client(), ev.headers, ev.headers_complete, self.config, self.app.directory
        )
        if not header.decision.reply.positive and self._grant_came():
            header = on_end_of_data(
                self._client(), ev.headers, ev.headers_complete, self.config, self.app.directory
            )
        header_from = ",".join(map(str, header.header_from))
        self._log_decision("DATA", header.decision, id=msg.queue_id, header_from=header_from)
        if not header.decision.reply.positive:
            msg.abort()
            conn.respond(header.decision.reply)
            return
        road = first_open(each_road(self._client(), self.config))
        auth = await self._check_authentication(msg, road, header.header_from)
        if auth is not None and not auth.decision.reply.positive:
            msg.abort()
            conn.respond(auth.decision.reply)
            return
        warnings = [*self.tx.warnings, *header.warnings]
        for w in warnings:
            log.warning(
                "sender warning id=%s client=%s login=%s: %s",
                msg.queue_id,
                self.ip,
                conn.login or "-",
                w,
            )
        await self._commit(msg, self._envelope(road, auth, warnings), ev.size)

    def _refuse_data(self, msg: IncomingMessage | None, problem: Reply | None) -> None:
        """A message that is not taken whatever the policy says: the core's refusal
        (bare LF, too big, too many hops, ...) or a spool that failed us."""
        assert self.conn is not None
        if msg is not None:
            msg.abort()
        if msg is None or problem is None:
            self.conn.respond(REPLY_QUEUE_ERROR)
            return
        log.info(
            "DATA client=%s login=%s id=%s refused reply=%r",
            self.ip,
            self.conn.login or "-",
            msg.queue_id,
            str(problem),
        )
        metrics.smtpd_reject("data", problem.code)
        self.conn.respond(problem)

    def _envelope(self, road: Road | None, auth: Judgement | None, warnings: list[str]) -> Envelope:
        conn, tx = self.conn, self.tx
        assert conn is not None
        mail = tx.mail
        return Envelope(
            sender=tx.sender,
            recipients=tuple(tx.recipients),
            received_at=time.time(),
            client_ip=self.ip,
            helo=conn.helo or "",
            login=conn.login,
            smtputf8=tx.smtputf8,
            body=mail.body if mail else None,
            ret=mail.ret if mail else None,
            envid=mail.envid if mail else None,
            hold=tx.hold or (auth.hold if auth else None),
            # Authentication-Results: first (RFC 8601 §5: at the top of the message).
            headers=(
                *([auth.header] if auth else []),
                *(f"{WARNING_HEADER}: {w}" for w in warnings),
            ),
            # Signing (queue manager) vouches only for a sender that passed every check.
            road=road.rule if road is not None and not warnings else None,
            authserv_id=self.config.hostname,
        )

    async def _commit(self, msg: IncomingMessage, envelope: Envelope, size: int) -> None:
        """THE COMMIT POINT, then the 250; the limits count the message after it."""
        conn, tx = self.conn, self.tx
        assert conn is not None
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
            tx.sender,
            len(tx.recipients),
            size,
            " hold=" + tx.hold if tx.hold else "",
        )
        metrics.message_accepted(self.kind, envelope.hold)
        conn.respond(smtp_replies.queued(msg.queue_id))
        self._flush()
        self.app.crash_point("after_250")
        self.app.message_queued()
        if self.app.limiter is not None:
            await self.app.limiter.accepted(
                self.config, self._client(), msg.queue_id, len(tx.recipients), tx.hold
            )
        self.tx = Transaction()

    async def _check_authentication(
        self, msg: IncomingMessage, road: Road | None, header_from: tuple[Address, ...]
    ) -> Judgement | None:
        """SPF, DKIM and DMARC (`[auth_checks]`) for mail from outside: port 25,
        a client on no road. None when they do not apply or are off."""
        cfg = self.config
        if self.kind != "smtp" or road is not None or not cfg.auth_checks.enabled:
            return None
        # Here, only with [auth_checks] on (off by default): their DNS resolver
        # (dnspython) and DKIM verifier (dkimpy, cryptography) cost the front
        # 4.5 MB PSS (measured); loaded once, by the first message checked.
        from postvakt.dnsclient import client_for
        from postvakt.mailauth.inbound import Inbound, judge

        assert self.conn is not None
        loop = self.loop
        try:
            message = await loop.run_in_executor(None, msg.read_back)
        except QueueWriteError as e:
            log.error("auth checks: %s", e)
            message = None
        inbound = Inbound(
            ip=self.ip,
            helo=self.conn.helo or "",
            mail_from=self.tx.sender,
            message=message,
            from_domains=tuple(a.domain.lower() for a in header_from if a.domain),
        )
        auth = await judge(client_for(cfg.dns), cfg, inbound)
        self._log_decision("CHECKS", auth.decision, **{"id": msg.queue_id, "from": self.tx.sender})
        return auth

    async def _on_auth(self, ev: smtp.AuthCredentials) -> None:
        """Reserve the attempt, check, settle (postvakt.grants.logins): parallel
        sessions cannot get more passwords checked than serial ones."""
        conn = self.conn
        assert conn is not None
        throttle = self.app.login_throttle
        loop = self.loop
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
        proto = received_protocol(conn.esmtp, conn.tls, bool(conn.login), self.tx.smtputf8)
        helo = (conn.helo or "unknown").replace("\r", "").replace("\n", "")[:255]
        lines = [
            f"Received: from {helo} ([{self.ip}])",
            f"\tby {self.config.hostname} (postvakt) with {proto} id {qid}",
        ]
        if self.tls_info and conn.tls:
            lines.append(f"\t(using {self.tls_info})")
        if len(self.tx.recipients) == 1:
            lines.append(f"\tfor <{self.tx.recipients[0].address}>")
        lines[-1] += ";"
        # RFC 5322 §3.3: "-0000" means "local time unknown"; we know it.
        lines.append("\t" + _RECEIVED_DATE.text(time.time()))
        return "\r\n".join(lines) + "\r\n"

    def shutdown(self) -> None:
        """Server stopping: finish the transaction in flight, then say 421."""
        if self.conn is not None and not self.closing:
            self.conn.shutdown()
            self._pump()
