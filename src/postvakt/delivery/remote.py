"""Remote delivery: one SMTP transaction per destination domain, with a
concurrency limit per next hop and reuse of idle connections (Postfix's scache).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from postvakt.config import Config
from postvakt.delivery import DeliveryError
from postvakt.delivery.resolver import SMTP_PORT, Resolver, destination
from postvakt.delivery.smtpclient import (
    LINE_LENGTH_LIMIT,
    Hop,
    MailParams,
    Outcome,
    RcptParams,
    RcptResult,
    SMTPClient,
    SMTPClientError,
    StaleConnection,
)
from postvakt.delivery.source import MessageSource
from postvakt.reply import Reply

log = logging.getLogger("postvakt.delivery")

# Postfix smtp_connection_cache_time_limit is 2 s; a little longer suits a
# small server whose queue manager looks every second.
IDLE_REUSE = 5.0
# RFC 5321 §4.5.3.1.10: "452 too many recipients" asks for another transaction.
TOO_MANY_RECIPIENTS = 452
# Postfix smtp_connection_reuse_count_limit: bound how long one peer keeps a connection.
MAX_TRANSACTIONS_PER_CONNECTION = 100


@dataclass(frozen=True)
class RemoteResult:
    """One recipient's result: `outcome` SENT only after the peer's 2xx to
    the body (see `SMTPClient.transaction`), else the failure's class."""

    reply: Reply
    outcome: Outcome
    relay: str = ""
    peer_dsn: bool = False  # the peer took over DSN duties (RFC 3461 §5.2.3)


class RemoteDelivery:
    def __init__(self, config: Config, resolver: Resolver, mx_port: int = SMTP_PORT) -> None:
        self.config = config
        self.resolver = resolver
        self.mx_port = mx_port
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._idle: dict[Hop, list[tuple[SMTPClient, float]]] = {}
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        idle, self._idle = self._idle, {}
        await asyncio.gather(*(c.quit() for lst in idle.values() for c, _ in lst))

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for hop, lst in list(self._idle.items()):
                keep = [(c, t) for c, t in lst if now - t < IDLE_REUSE and not c.closed]
                for c, t in lst:
                    if (c, t) not in keep:
                        loop.create_task(c.quit())
                self._idle[hop] = keep

    async def _attempt(
        self, hop: Hop, mail: MailParams, rcpts: list[RcptParams], message: MessageSource
    ) -> tuple[SMTPClient, list[RcptResult]]:
        """The transactions on an idle connection to `hop` (probed with RSET
        in the same write as the transaction when the peer pipelines), or on
        a new one when none is left alive. Raises SMTPClientError when `hop`
        cannot be talked to; the connection is closed then."""
        idle = self._idle.get(hop, [])
        while idle:
            client, _ = idle.pop()
            if client.closed:
                continue
            try:
                return client, await self._transactions(client, mail, rcpts, message, probe=True)
            except StaleConnection:
                continue
            except BaseException:
                client.close()
                raise
        client = await SMTPClient.connect(
            hop,
            self.config.hostname,
            timeout=self.config.delivery.connect_timeout,
            starttls=self.config.delivery.tls == "opportunistic",
        )
        try:
            return client, await self._transactions(client, mail, rcpts, message)
        except BaseException:
            client.close()
            raise

    def _release(self, client: SMTPClient) -> None:
        if client.closed:
            return
        if client.transactions >= MAX_TRANSACTIONS_PER_CONNECTION:
            asyncio.get_running_loop().create_task(client.quit())
            return
        self._idle.setdefault(client.hop, []).append((client, asyncio.get_running_loop().time()))

    async def deliver(
        self, domain: str, mail: MailParams, rcpts: list[RcptParams], message: MessageSource
    ) -> list[RemoteResult]:
        """Deliver to all `rcpts` (one domain); a result per recipient, in order."""
        try:
            dest = await destination(
                domain, self.config.delivery, self.resolver, self.mx_port, self.config.hostname
            )
        except DeliveryError as e:
            outcome = Outcome.DEFERRED if e.temporary else Outcome.BOUNCED
            return [RemoteResult(e.reply, outcome)] * len(rcpts)
        limit = self._limits.get(dest.key)
        if limit is None:
            limit = self._limits[dest.key] = asyncio.Semaphore(
                max(1, self.config.delivery.concurrency_per_destination)
            )
        last = Reply(451, "4.4.1", f"no host to try for {domain}")
        async with limit:
            # Try the next MX (or address) when a host cannot be talked to at
            # all; once a host answers MAIL, its answers are the results.
            for hop in dest.hops:
                try:
                    client, results = await self._attempt(hop, mail, rcpts, message)
                except SMTPClientError as e:
                    last = e.reply
                    continue
                if client.lines_broken:
                    log.info(
                        "relay=%s lines longer than %d octets broken for the peer: %d",
                        hop,
                        LINE_LENGTH_LIMIT,
                        client.lines_broken,
                    )
                self._release(client)
                peer_dsn = "DSN" in client.extensions
                return [RemoteResult(r.reply, r.outcome, str(hop), peer_dsn) for r in results]
        failed = RcptResult.failure(last)
        return [RemoteResult(failed.reply, failed.outcome, "")] * len(rcpts)

    async def _transactions(
        self,
        client: SMTPClient,
        mail: MailParams,
        rcpts: list[RcptParams],
        message: MessageSource,
        *,
        probe: bool = False,
    ) -> list[RcptResult]:
        """One transaction (`probe`: see `SMTPClient.transaction`), and more
        on the same connection for recipients the peer put off with 452 "too
        many recipients" (RFC 5321 §4.5.3.1.10) as long as each round gets at
        least one through. A connection lost in a later round fails only that
        round's recipients: the ones sent stay sent."""
        results = await client.transaction(mail, rcpts, message, probe=probe)
        while True:
            rest = [i for i, r in enumerate(results) if r.reply.code == TOO_MANY_RECIPIENTS]
            if not rest or len(rest) == len(results) or not await client.rset():
                return results
            try:
                again = await client.transaction(mail, [rcpts[i] for i in rest], message)
            except SMTPClientError as e:
                client.close()
                failed = RcptResult.failure(e.reply)
                for i in rest:
                    results[i] = failed
                return results
            if all(r.reply.code == TOO_MANY_RECIPIENTS for r in again):
                return results
            for i, r in zip(rest, again, strict=True):
                results[i] = r
