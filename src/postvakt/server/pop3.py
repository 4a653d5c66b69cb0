"""POP3 listeners: a thin asyncio adapter around `postvakt.pop3`.

The core decides every reply; this module only moves bytes, runs TLS
(`loop.start_tls()` for STLS, `ssl=` for 995), asks the authenticator and the
Maildir, keeps time (idle timeout, failure delays) and writes POP-before-SMTP
grants.

Login, in order (a wrong password, an unknown user and a refused attempt get
the same reply after the same delay):
1. the attempt is reserved in the failed-login throttle shared with the SMTP
   front (`postvakt.grants.logins`); a login or address with too many recent
   failures is refused there without a check;
2. the password is verified (cached Argon2, off the event loop);
3. the reservation is settled: a failure stays counted and is answered only
   once the pair's delay has passed since the attempt began, so an unknown
   user and a wrong password take the same time; a success is refunded;
4. a success locks the Maildir ([IN-USE] if another session has it), takes
   the snapshot, and only then grants relay to the client address for
   `[relay] pop_before_smtp` seconds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import secrets
import ssl
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from postvakt import metrics
from postvakt.directory import DirectoryUnavailable, canonical
from postvakt.grants.logins import Outcome, Reservation
from postvakt.logtext import printable
from postvakt.mailbox.maildir import MailboxError, MailboxLocked, MaildirMailbox
from postvakt.net import client_address, in_networks
from postvakt.pop3 import (
    NEED_DATA,
    PAUSED,
    Authenticate,
    Close,
    Fetch,
    POP3Connection,
    Settings,
    StartTLS,
    Update,
    encode_message,
)
from postvakt.pop3 import replies as R
from postvakt.server.accept import Connections, Refused, Slot, client_limit
from postvakt.server.handshake import Listening, listener_of, start_server_tls
from postvakt.server.listeners import Opener
from postvakt.server.proxy import Proxied
from postvakt.store.local import LockStore, NoLocks

if TYPE_CHECKING:
    from postvakt.auth import Authenticator
    from postvakt.config import Config
    from postvakt.directory import Directory
    from postvakt.grants import GrantStore
    from postvakt.grants.logins import LoginThrottle

log = logging.getLogger("postvakt.pop3")

# LOGIN-DELAY bookkeeping is pruned past this many users (one entry per user
# who logged in within the delay; a small provider has far fewer).
MAX_LOGIN_DELAY_ENTRIES = 100_000


class POP3Context:
    """What every connection of one server process shares."""

    def __init__(
        self,
        config: Config,
        *,
        directory: Directory,
        authenticator: Authenticator,
        grants: GrantStore,
        login_throttle: LoginThrottle,
        ssl_context: ssl.SSLContext | None,
        login_delay: float = 0.0,
        clock: Callable[[], float] = time.time,
        locks: LockStore | None = None,
    ) -> None:
        self.config = config
        # The maildrop lock across nodes (RFC 1939 §8: exclusive access), over the flock.
        self.locks: LockStore = locks if locks is not None else NoLocks()
        self.directory = directory
        self.authenticator = authenticator
        self.grants = grants
        self.login_throttle = login_throttle
        self.ssl_context = ssl_context
        self.login_delay = login_delay
        self.clock = clock
        # login -> time of the last successful login, for LOGIN-DELAY (this process only).
        self.last_login: dict[str, float] = {}
        self.sessions: set[POP3Protocol] = set()

    def too_soon(self, login: str, now: float) -> bool:
        last = self.last_login.get(login)
        return self.login_delay > 0 and last is not None and now - last < self.login_delay

    def logged_in(self, login: str, now: float) -> None:
        if self.login_delay <= 0:
            return
        self.last_login[login] = now
        if len(self.last_login) > MAX_LOGIN_DELAY_ENTRIES:
            cutoff = now - self.login_delay
            for k in [k for k, t in self.last_login.items() if t < cutoff]:
                del self.last_login[k]

    def plaintext_allowed(self, ip: str) -> bool:
        mode = self.config.pop3.plaintext
        if mode == "always":
            return True
        if mode == "networks":
            return in_networks(ip, self.config.relay.networks)
        return False

    def client_limit(self, ip: str) -> int:
        """`[pop3] max_connections_per_client` for this address (0: none; `networks` are exempt)."""
        cfg = self.config
        return client_limit(ip, cfg.pop3.max_connections_per_client, cfg.relay.networks)

    @staticmethod
    def refusal(why: Refused, ip: str) -> bytes:
        if why is Refused.CLIENT:
            return f"-ERR [SYS/TEMP] Too many connections from {ip}\r\n".encode()
        return b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"

    def open_mailbox(self, login: str) -> MaildirMailbox:
        """Lock the maildrop on every node, then here (flock), and take the snapshot."""
        name, owner = f"pop3:{login}", f"{self.config.node}:{os.getpid()}:{secrets.token_hex(6)}"
        if not self.locks.acquire(name, owner):
            raise MailboxLocked(login)
        try:
            mailbox = MaildirMailbox.open(self.directory.maildir(login))
        except BaseException:
            self.locks.release(name, owner)
            raise
        mailbox.on_close = functools.partial(self.locks.release, name, owner)
        return mailbox

    def failure_delay(self, reservation: Reservation) -> float:
        """Seconds between a failed attempt's start and its reply (grows per address and login)."""
        p = self.config.pop3
        return min(
            max(self.login_throttle.delay(reservation), p.fail_delay),
            max(p.fail_delay_max, p.fail_delay),
        )


class POP3Protocol(asyncio.Protocol):
    # Set before connection_made on a PROXY listener: the client the header names.
    proxied: Proxied | None = None

    def __init__(self, ctx: POP3Context, *, implicit_tls: bool, slot: Slot | None = None) -> None:
        self.ctx = ctx
        self.implicit_tls = implicit_tls
        # This connection's place in the accept path's counts, given back when it ends.
        self.slot = slot
        self.transport: asyncio.Transport | None = None
        self.conn: POP3Connection | None = None
        self.ip = ""
        self.mailbox: MaildirMailbox | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: asyncio.TimerHandle | None = None
        self._tls_pending = False
        self._writing_paused = False
        self._start_tls_running = False
        self._lost = False
        self.pop3_config = ctx.config

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but speak its API.
        self.transport = cast(asyncio.Transport, transport)
        if self.proxied is not None:
            self.ip = client_address(self.proxied.client, missing="")
        else:
            self.ip = client_address(transport.get_extra_info("peername"), missing="")
        # This session's settings from start to end, whatever a reload changes meanwhile.
        self.pop3_config = cfg = self.ctx.config
        self.conn = POP3Connection(
            Settings(
                tls_active=self.implicit_tls,
                tls_available=self.ctx.ssl_context is not None and not self.implicit_tls,
                plaintext_allowed=self.ctx.plaintext_allowed(self.ip),
                max_failures=max(1, cfg.pop3.max_failures),
                login_delay=math.ceil(self.ctx.login_delay),
            )
        )
        self.ctx.sessions.add(self)
        log.info(
            "pop3 connect client=%s tls=%s%s",
            self.ip,
            self.implicit_tls,
            f" proxy={self.proxied.proxy}" if self.proxied is not None else "",
        )
        metrics.pop3_connect(self.listener)
        self._flush()

    def data_received(self, data: bytes) -> None:
        assert self.conn is not None
        if self._tls_pending:
            # Reading was paused before the handshake, so these bytes came
            # through TLS: the session continues encrypted.
            self._tls_pending = False
            self.conn.tls_started()
        self.conn.receive_data(data)
        self._touch()
        if self.transport is not None and not self._start_tls_running:
            self._pump()

    def eof_received(self) -> bool | None:
        if self.conn is not None:
            self.conn.receive_data(b"")
            self._pump()
        return None

    @property
    def listener(self) -> str:
        return "pop3s" if self.implicit_tls else "pop3"

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self) -> None:
        """The connection is over, however it ended: stop timers and tasks, unlock the Maildir."""
        if self._lost:
            return
        self._lost = True
        if self.slot is not None:
            self.slot.release()
        self.ctx.sessions.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        current = asyncio.current_task()
        for t in list(self._tasks):
            if t is not current:
                t.cancel()
        self._release()
        summary = self.conn.command_summary() if self.conn is not None else "commands=0"
        # One line per session, with the commands it used (as SMTP's).
        log.info("pop3 disconnect from unknown[%s] port=%s %s", self.ip, self.listener, summary)

    def shutdown(self) -> None:
        """Server stop: end the session without its UPDATE state (nothing is deleted)."""
        if self.conn is not None and not self.conn.closed:
            self.conn.abort(R.SHUTTING_DOWN, "server shutdown")
            self._pump()

    def pause_writing(self) -> None:
        # The peer reads slower than we answer: stop reading its commands too,
        # so that neither our output nor its pipelined input piles up here.
        self._writing_paused = True
        if self.transport is not None and not self._start_tls_running:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.transport is not None and not self._start_tls_running and not self._lost:
            self.transport.resume_reading()
        self._touch()  # a long download is activity, not idleness
        self._pump()

    # ------------------------------------------------------------ the event pump

    def _pump(self) -> None:
        conn = self.conn
        if conn is None or self._lost:
            return
        while not self._writing_paused:
            ev = conn.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                break
            if isinstance(ev, Authenticate):
                self._spawn(self._authenticate(ev))
            elif isinstance(ev, Fetch):
                self._fetch(ev)
            elif isinstance(ev, Update):
                self._update(ev)
            elif isinstance(ev, StartTLS):
                self._flush()
                self._spawn(self._start_tls())
                return
            elif isinstance(ev, Close):
                self._flush()
                self._release()
                if self.transport is not None:
                    self.transport.close()
                return
        self._flush()

    def _flush(self) -> None:
        if self.conn is None or self.transport is None:
            return
        out = self.conn.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)
            self._touch()  # the client's turn starts when we have answered

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pop3 internal error client=%s", self.ip, exc_info=task.exception())
            if self.conn is not None and not self.conn.closed:
                self.conn.abort(R.SYS_TEMP, "internal error")
                self._pump()

    def _touch(self) -> None:
        if self._lost:
            return
        if self._idle is not None:
            self._idle.cancel()
        timeout = self.pop3_config.pop3.idle_timeout
        if timeout > 0:
            self._idle = asyncio.get_running_loop().call_later(timeout, self._on_idle)

    def _on_idle(self) -> None:
        if self._tasks:
            self._touch()  # we are the slow one (a password check): not the client's idleness
            return
        if self.conn is not None:
            self.conn.idle_timeout()
            self._pump()

    def _release(self) -> None:
        mb, self.mailbox = self.mailbox, None
        if mb is not None:
            mb.close()

    # ------------------------------------------------------------ events

    async def _authenticate(self, ev: Authenticate) -> None:
        conn = self.conn
        assert conn is not None
        ctx = self.ctx
        started = ctx.clock()
        reservation = await ctx.login_throttle.reserve(self.ip, ev.login, started)
        checked = (
            await self._check_password(ev, reservation) if reservation.granted else (None, None)
        )
        if checked is None:
            return  # the password could not be checked: answered already
        login, outcome = checked
        if login is None:
            await self._login_failed(ev, reservation, outcome, started)
            return
        await ctx.login_throttle.settle(reservation, Outcome.SUCCEEDED, "", ctx.clock())
        if ctx.too_soon(login, ctx.clock()):
            log.info("pop3 login delay client=%s user=%s", self.ip, login)
            metrics.pop3_login(self.listener, "delayed")
            conn.login_failed(R.LOGIN_DELAY, counts=False)
            self._pump()
            return
        mailbox = await self._open_mailbox(login)
        if mailbox is None:
            return
        if self._lost or conn.closed:
            mailbox.close()
            return
        self._logged_in(ev, login, mailbox)

    async def _check_password(
        self, ev: Authenticate, reservation: Reservation
    ) -> tuple[str | None, Outcome | None] | None:
        """The login the password proves (None: none) and, on a failure, the
        throttle's outcome; None when the check itself failed (answered here)."""
        assert self.conn is not None
        ctx = self.ctx
        throttle = ctx.login_throttle
        try:
            login = await ctx.authenticator.verify(ev.login, ev.password)
        except BaseException as e:
            await throttle.settle(reservation, Outcome.UNCHECKED, "", ctx.clock())
            if not isinstance(e, Exception):
                raise
            if isinstance(e, DirectoryUnavailable):
                log.warning("pop3 login client=%s user=%s: %s", self.ip, ev.login, e)
            else:
                log.exception("pop3 auth backend error client=%s", self.ip)
            self.conn.login_failed(R.SYS_TEMP, counts=False)
            self._pump()
            return None
        if login is not None and ev.authzid:
            # Acting for another user is never allowed; refuse like a bad password.
            if canonical(ev.authzid) != login:
                login = None
        if login is None:
            return None, await throttle.settle(
                reservation, Outcome.FAILED, ev.password, ctx.clock()
            )
        return login, None

    async def _login_failed(
        self,
        ev: Authenticate,
        reservation: Reservation,
        outcome: Outcome | None,
        started: float,
    ) -> None:
        """A wrong password, or a login the throttle refused: the same reply, after the same delay."""
        assert self.conn is not None
        ctx = self.ctx
        wait = started + ctx.failure_delay(reservation) - ctx.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        if reservation.refused is not None:
            reason = f" refused: too many failures ({reservation.refused.value})"
        elif outcome is Outcome.REPEATED:
            reason = " (same password as before)"
        else:
            reason = ""
        log.info(
            "pop3 login failed client=%s user=<%s> mechanism=%s%s",
            self.ip,
            printable(ev.login, 64),
            ev.mechanism,
            reason,
        )
        metrics.pop3_login(
            self.listener, "refused" if reservation.refused is not None else "failed"
        )
        self.conn.login_failed(R.AUTH_FAILED)
        self._pump()

    async def _open_mailbox(self, login: str) -> MaildirMailbox | None:
        """The locked maildrop; None when it cannot be had (answered here)."""
        assert self.conn is not None
        opening = asyncio.get_running_loop().run_in_executor(None, self.ctx.open_mailbox, login)
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The connection died while the Maildir was being opened: do not leak the lock.
            opening.add_done_callback(_close_if_opened)
            raise
        except MailboxLocked:
            log.info("pop3 mailbox in use client=%s user=%s", self.ip, login)
            metrics.pop3_login(self.listener, "in_use")
            self.conn.login_failed(R.IN_USE, counts=False)
        except MailboxError as e:
            log.error("pop3 mailbox error client=%s user=%s: %s", self.ip, login, e)
            self.conn.login_failed(R.SYS_PERM if e.permanent else R.SYS_TEMP, counts=False)
        self._pump()
        return None

    def _logged_in(self, ev: Authenticate, login: str, mailbox: MaildirMailbox) -> None:
        assert self.conn is not None
        ctx = self.ctx
        self.mailbox = mailbox
        ctx.logged_in(login, ctx.clock())
        self.conn.login_ok(login, mailbox.infos())
        metrics.pop3_login(self.listener, "ok")
        ttl = ctx.config.relay.pop_before_smtp
        if ttl > 0:
            expires = ctx.clock() + ttl
            ctx.grants.grant(self.ip, login, expires, "pop3")
            log.info(
                "pop3 login client=%s user=%s mechanism=%s messages=%d pop-before-smtp until=%.0f",
                self.ip,
                login,
                ev.mechanism,
                len(mailbox.messages),
                expires,
            )
        else:
            log.info(
                "pop3 login client=%s user=%s mechanism=%s messages=%d",
                self.ip,
                login,
                ev.mechanism,
                len(mailbox.messages),
            )
        self._pump()

    def _fetch(self, ev: Fetch) -> None:
        self._spawn(self._read_message(ev))

    async def _read_message(self, ev: Fetch) -> None:
        """RETR/TOP: the file is read and encoded for the wire (CRLF, dot-stuffing, the
        TOP cut) in one executor job, so that a big message never holds up the other
        sessions on the loop; the connection stays PAUSED meanwhile, and pipelined
        commands wait their turn."""
        assert self.conn is not None and self.mailbox is not None
        mailbox = self.mailbox

        def read() -> tuple[bytes | None, bytes | None]:
            data = mailbox.read(ev.uid)
            return data, (encode_message(data, ev.lines) if data is not None else None)

        loop = asyncio.get_running_loop()
        try:
            data, encoded = await loop.run_in_executor(None, read)
        except MailboxError as e:
            log.error("pop3 read error client=%s: %s", self.ip, e)
            data = encoded = None
        if self._lost:
            return
        if data is None:
            log.info("pop3 message vanished client=%s uid=%s", self.ip, ev.uid)
        self.conn.message(data, encoded)
        self._pump()

    def _update(self, ev: Update) -> None:
        assert self.conn is not None
        mb = self.mailbox
        ok = True
        if mb is not None and ev.deleted:
            ok = mb.delete(ev.deleted)
        log.info(
            "pop3 quit client=%s user=%s deleted=%d ok=%s",
            self.ip,
            self.conn.login,
            len(ev.deleted),
            ok,
        )
        self.conn.update_done(ok)

    async def _start_tls(self) -> None:
        assert self.transport is not None and self.ctx.ssl_context is not None
        old = self.transport
        # No plaintext read from here on: what the kernel still holds goes to TLS.
        old.pause_reading()
        self._tls_pending = True
        self._start_tls_running = True
        try:
            new = await start_server_tls(
                old, self, self.ctx.ssl_context, client=self.ip, listener=listener_of("pop3", old)
            )
        finally:
            self._start_tls_running = False
        if new is None:
            self._gone()
            return
        self.transport = new
        if self._tls_pending:
            self._tls_pending = False
            assert self.conn is not None
            self.conn.tls_started()
        log.info("pop3 stls client=%s", self.ip)
        self._pump()


_contexts: weakref.WeakKeyDictionary[Listening, POP3Context] = weakref.WeakKeyDictionary()


def stop_pop3(servers: list[Listening]) -> None:
    """Stop accepting, and end every open POP3 session of these servers.

    A session ended here deletes nothing (RFC 1939 §6: only QUIT enters the
    UPDATE state); its client sees `-ERR [SYS/TEMP]` and will retry later.
    """
    seen: set[int] = set()
    for srv in servers:
        srv.close()
        ctx = _contexts.get(srv)
        if ctx is None or id(ctx) in seen:
            continue
        seen.add(id(ctx))
        for session in list(ctx.sessions):
            session.shutdown()


def _pop3_protocol(ctx: POP3Context, implicit_tls: bool, slot: Slot) -> POP3Protocol:
    return POP3Protocol(ctx, implicit_tls=implicit_tls, slot=slot)


def reload_pop3(servers: list[Listening], config: Config) -> None:
    """SIGHUP: new connections get the new [pop3] settings; sessions in flight keep theirs."""
    for srv in servers:
        ctx = _contexts.get(srv)
        if ctx is not None:
            ctx.config = config
            ctx.login_delay = config.pop3.login_delay


def _close_if_opened(fut: asyncio.Future[MaildirMailbox]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


async def start_pop3(
    config: Config,
    *,
    directory: Directory,
    authenticator: Authenticator,
    grants: GrantStore,
    login_throttle: LoginThrottle,
    ssl_context: ssl.SSLContext | None,
    login_delay: float | None = None,
    reuse_port: bool = False,
    connections: Connections | None = None,
    opener: Opener | None = None,
    locks: LockStore | None = None,
) -> list[Listening]:
    """One server per address in [listen] pop3 (STLS) and pop3s (implicit TLS).

    The pop3 servers come first, then the pop3s ones, each in config order.
    `login_delay` (seconds, RFC 2449 LOGIN-DELAY) defaults to `[pop3] login_delay`;
    `reuse_port` lets several worker processes share the ports (SO_REUSEPORT);
    `connections` is the process's count shared with the other listeners (default:
    one of its own, capped by `[server] max_connections` alone).
    """
    if connections is None:
        connections = Connections(
            config.server.max_connections or 1 << 30, ipv6_prefix=config.limits.ipv6_prefix
        )
    ctx = POP3Context(
        config,
        directory=directory,
        authenticator=authenticator,
        grants=grants,
        login_throttle=login_throttle,
        ssl_context=ssl_context,
        login_delay=config.pop3.login_delay if login_delay is None else login_delay,
        locks=locks,
    )
    servers: list[Listening] = []
    opener = opener or Opener(lambda: config, reuse_port=reuse_port)
    try:
        for kind, addresses in (("pop3", config.listen.pop3), ("pop3s", config.listen.pop3s)):
            for hp in addresses:
                servers.append(
                    await opener.open(
                        kind,
                        hp,
                        functools.partial(_pop3_protocol, ctx, kind == "pop3s"),
                        ssl_context,
                        family="pop3",
                        connections=connections,
                        client_limit=ctx.client_limit,
                        refusal=ctx.refusal,
                    )
                )
    except BaseException:
        for s in servers:
            s.close()
        raise
    for srv in servers:
        _contexts[srv] = ctx
    return servers
