"""The grant-report socket: IMAP logins at the Dovecot beside us open POP-before-SMTP.

A grant lets an address relay, so who may create one is the whole question.
Three guards, each enough against a local user who is not us:
1. the socket lives in data_dir (mode 0750, the server's user) and is itself
   mode 0660: only the server's user, its group and root can connect;
2. the kernel names the connecting process's user (SO_PEERCRED): only root,
   the server's own user and `[server] user` (whom Dovecot runs the post-login
   script as) may report; anyone else gets `NO` and a log line, even if the
   modes above were opened by mistake;
3. the report must name a user of our directory, a known protocol and a valid
   address (`postvakt.grants.report`).
Whoever runs as the server's user can read every mailbox anyway; that user is
the trust boundary, as it is for the Maildirs and the user database.

The listener runs in the front process, next to the POP3 listener, and writes
through the same grant store, so a report takes effect for the next RCPT.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from postvakt.directory import DirectoryUnavailable, canonical
from postvakt.grants.report import (
    MAX_LINE,
    REPLY_OFF,
    ReportError,
    parse_report,
    reply_no,
    reply_ok,
    socket_path_problem,
)

if TYPE_CHECKING:
    from postvakt.config import Config
    from postvakt.grants import GrantStore

log = logging.getLogger("postvakt.grants")

# Owner and group may connect, nobody else (connect(2) on a Unix socket needs write).
SOCKET_MODE = 0o660
# A reporter that says nothing for this long is dropped: the script sends its
# line at once, and Dovecot's login waits for it.
READ_TIMEOUT = 5.0
# struct ucred: pid, uid, gid (Linux).
_UCRED = struct.Struct("3i")


def peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process at the other end of a Unix socket (None if unknown)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


def allowed_uids(config: Config) -> frozenset[int]:
    """Root, the server's own user, and `[server] user` if this machine has it."""
    uids = {0, os.geteuid()}
    with contextlib.suppress(KeyError):
        uids.add(pwd.getpwnam(config.server.user).pw_uid)
    return frozenset(uids)


class GrantReports:
    """Handles one connection per report; state is the grant store, nothing else."""

    def __init__(
        self,
        *,
        config: Callable[[], Config],
        grants: GrantStore,
        user_exists: Callable[[str], bool],
        allowed: frozenset[int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.grants = grants
        self.user_exists = user_exists
        self.allowed = allowed
        self.clock = clock

    def answer(self, uid: int | None, line: bytes) -> bytes:
        """The reply to one report from a peer running as `uid`; grants when it is OK."""
        if uid is None or uid not in self.allowed:
            log.warning("grant report refused peer_uid=%s: not a user allowed to report", uid)
            return reply_no("not allowed to report logins")
        try:
            report = parse_report(line)
        except ReportError as e:
            log.warning("grant report refused peer_uid=%s: %s", uid, e)
            return reply_no(str(e))
        login = canonical(report.login)
        try:
            exists = self.user_exists(login)
        except DirectoryUnavailable as e:
            log.warning("grant report refused peer_uid=%s client=%s: %s", uid, report.ip, e)
            return reply_no("user database unavailable, try again later")
        if not exists:
            log.warning(
                "grant report refused peer_uid=%s client=%s user=%s: no such user",
                uid,
                report.ip,
                login[:64],
            )
            return reply_no("no such user")
        ttl = self.config().relay.pop_before_smtp
        if ttl <= 0:
            return REPLY_OFF
        expires = self.clock() + ttl
        self.grants.grant(report.ip, login, expires, report.protocol)
        log.info(
            "%s login client=%s user=%s pop-before-smtp until=%.0f (reported)",
            report.protocol,
            report.ip,
            login,
            expires,
        )
        return reply_ok(expires)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else None
        try:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT)
            except asyncio.LimitOverrunError:
                line = b"x" * (MAX_LINE + 1)
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            writer.write(self.answer(uid, line))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def start_grant_reports(
    path: Path, reports: GrantReports, config: Config
) -> asyncio.AbstractServer | None:
    """Listen on `path`; None (and one log line) when that cannot be done.

    A missing socket costs only IMAP-before-SMTP, never the mail server, so
    the server starts anyway and says why Dovecot's script will be refused.
    """
    problem = socket_path_problem(path)
    if problem is None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()  # left behind by a server that died
        try:
            server = await asyncio.start_unix_server(reports.handle, path=str(path), limit=MAX_LINE)
            os.chmod(path, SOCKET_MODE)
            if os.geteuid() == 0:
                _give_to_server_user(path, config)
            return server
        except OSError as e:
            problem = f"cannot listen on {path}: {e.strerror or e}"
    log.error("grant reports off: %s; IMAP logins will not open POP-before-SMTP", problem)
    return None


def _give_to_server_user(path: Path, config: Config) -> None:
    """Started as root: let `[server] user` (Dovecot's post-login script) connect."""
    try:
        uid = pwd.getpwnam(config.server.user).pw_uid
        gid = grp.getgrnam(config.server.group).gr_gid
    except KeyError:
        return
    with contextlib.suppress(OSError):
        os.chown(path, uid, gid)


def stop_grant_reports(server: asyncio.AbstractServer | None, path: Path) -> None:
    if server is None:
        return
    server.close()
    with contextlib.suppress(OSError):
        path.unlink()
