"""imaplib clients that can connect from a chosen loopback address (127.0.0.2 looks like outside)."""

from __future__ import annotations

import imaplib
import socket
import ssl
from typing import Any

from stack import tls_context

TIMEOUT = 30.0


class IMAPFrom(imaplib.IMAP4):
    """IMAP on the STARTTLS port, from `source`."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.source = source
        super().__init__("127.0.0.1", port, timeout=TIMEOUT)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


class IMAPSFrom(imaplib.IMAP4_SSL):
    """IMAP with implicit TLS, from `source`."""

    def __init__(
        self, port: int, source: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.source = source
        super().__init__(
            "127.0.0.1", port, ssl_context=ssl_context or tls_context(), timeout=TIMEOUT
        )

    def _create_socket(self, timeout: float | None) -> Any:
        sock = socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def imap_login(port: int, user: str, password: str, source: str = "127.0.0.1") -> IMAPSFrom:
    """A logged-in implicit-TLS session; raises imaplib.IMAP4.error when the login fails."""
    m = IMAPSFrom(port, source)
    try:
        m.login(user, password)
    except BaseException:
        m.shutdown()
        raise
    return m


def login_fails(port: int, user: str, password: str, source: str = "127.0.0.1") -> bool:
    try:
        imap_login(port, user, password, source).logout()
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e) or "Authentication failed" in str(e), e
        return True
    return False


def uid_of(m: imaplib.IMAP4, marker: str) -> str | None:
    """The IMAP UID of the message whose Message-ID carries `marker` (None: not there)."""
    typ, data = m.uid("SEARCH", "HEADER", "Message-ID", marker)
    assert typ == "OK", data
    uids = data[0].split() if data and data[0] else []
    assert len(uids) <= 1, f"{marker} is in the mailbox {len(uids)} times"
    return uids[0].decode() if uids else None


def flags_of(m: imaplib.IMAP4, uid: str) -> set[str]:
    typ, data = m.uid("FETCH", uid, "(FLAGS)")
    assert typ == "OK", data
    text = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
    inner = text[text.index("FLAGS (") + 7 :]
    return set(inner[: inner.index(")")].split())
