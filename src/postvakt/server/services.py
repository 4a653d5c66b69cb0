"""`App`: the services of one front process, as its SMTP sessions and listeners use them.

Below the adapters: `server/smtp.py` is handed an App, `server/app.py` builds
one (`build_app`) and opens the listeners with it; this module imports
neither, so the sessions and what starts them do not lean on each other.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from postvakt.auth import Authenticator
from postvakt.config import Config
from postvakt.directory import Directory
from postvakt.grants import GrantStore
from postvakt.grants.logins import LoginThrottle
from postvakt.queue import Queue, crash_point
from postvakt.queue.envelope import Envelope
from postvakt.queue.spool import IncomingMessage
from postvakt.reply import Reply
from postvakt.server.accept import Connections, Refused, client_limit
from postvakt.server.commit_client import HelperClient
from postvakt.server.idle import Deadlines
from postvakt.server.listeners import Opener
from postvakt.store import State

# How often the queue's free space is looked at (one statvfs, not one per MAIL).
FREE_SPACE_CHECK_INTERVAL = 1.0


@dataclass(eq=False)
class App:
    config: Config
    directory: Directory
    authenticator: Authenticator
    grants: GrantStore
    login_throttle: LoginThrottle
    queue: Queue
    ssl_context: Any
    # The shared state the stores above come from ([store] state).
    state: State | None = None
    manager: Any = None
    # Outbound limits (postvakt.server.limits.Limiter); None: nothing limited.
    limiter: Any = None
    # How listeners are opened (sockets handed down by the parent of several workers).
    opener: Opener | None = None
    sessions: set[Any] = field(default_factory=set)
    # Every connection of the process, from accept to close (postvakt.server.accept).
    connections: Connections = field(default_factory=lambda: Connections(1 << 30))
    _free_bytes: int | None = None
    _free_checked: float = -1e9
    tasks: set[asyncio.Future[Any]] = field(default_factory=set)
    # Group commit in the commit helper (server/commit_process.py), started by
    # `run`; None: each commit runs alone in the default executor (tests that
    # build an App themselves).
    committer: HelperClient | None = None
    # The SMTP sessions' idle deadlines, on a few shared timers.
    deadlines: Deadlines = field(default_factory=Deadlines)

    async def start_committer(self) -> None:
        """Start the commit helper (after the privilege drop: it runs as the front)."""
        committer = HelperClient(self.queue.root)
        await committer.start()
        self.committer = committer

    async def commit(self, msg: IncomingMessage, envelope: Envelope) -> None:
        """Make an accepted message durable; returns once a crash cannot lose it."""
        if self.committer is None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, msg.commit, envelope)
            return
        error = await self.committer.commit(msg, envelope)
        if error is not None:
            raise error

    def low_on_space(self, announced_size: int | None) -> bool:
        """Too little room in the queue for a message: say 452 at MAIL, not 451 after DATA."""
        cfg = self.config.smtp
        need = cfg.queue_minfree or int(1.5 * cfg.max_message_size)
        need = max(need, int(1.5 * (announced_size or 0)))
        now = time.monotonic()
        if now - self._free_checked > FREE_SPACE_CHECK_INTERVAL:
            try:
                st = os.statvfs(self.queue.root)
                self._free_bytes = st.f_bavail * st.f_frsize
            except OSError:
                self._free_bytes = None
            self._free_checked = now
        return self._free_bytes is not None and self._free_bytes < need

    def smtp_client_limit(self, ip: str) -> int:
        """`[smtp] max_connections_per_client` for this address (0: none; `networks` are exempt)."""
        cfg = self.config
        return client_limit(ip, cfg.smtp.max_connections_per_client, cfg.relay.networks)

    def smtp_refusal(self, why: Refused, ip: str) -> bytes:
        name = self.config.hostname
        if why is Refused.CLIENT:
            return Reply(421, "4.7.0", f"{name} Error: too many connections from {ip}").encode()
        return Reply(421, "4.7.0", f"{name} Error: too many connections").encode()

    def message_queued(self) -> None:
        if self.manager is not None:
            self.manager.wake()

    def crash_point(self, name: str) -> None:
        crash_point(name)

    def close_stores(self) -> None:
        """The user directory and the state store, at the end of a process that opened them."""
        self.directory.close()
        if self.state is not None:
            self.state.close()
