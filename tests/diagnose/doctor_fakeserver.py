"""A scripted SMTP server on loopback that records every line it receives.

It stands in for servers we cannot start here (qmail's wording, an expired
certificate, a firewall that swallows connections) and lets a test assert on
exactly what the doctor said to it. Real sockets, real TLS.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from support import free_port


@dataclass
class Script:
    banner: str = "220 fake.test ESMTP"
    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME")
    starttls: bool = False
    auth_plain: str = ""  # "" = no AUTH; else the mechanisms line, e.g. "PLAIN LOGIN"
    auth_after_tls_only: bool = False
    auth_reply: str = "235 2.7.0 Authentication successful"
    mail_reply: str = "250 2.1.0 Ok"
    rcpt_reply: str = "250 2.1.5 Ok"
    # When set, decides per RCPT path (the text after "RCPT TO:"): True = rcpt_reply, False = 554.
    rcpt_accept: Callable[[str], bool] | None = None
    hangup_on: str = ""  # close without a reply when this verb arrives, e.g. "MAIL"
    silent: bool = False  # accept the connection, never say anything
    implicit_tls: bool = False


@dataclass
class FakeServer:
    script: Script
    tls_context: ssl.SSLContext | None = None
    port: int = field(default_factory=free_port)
    received: list[str] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def verbs(self) -> list[str]:
        return [line.split(" ", 1)[0].split(":", 1)[0].upper() for line in self.received]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        s = self.script
        conn.settimeout(10)
        try:
            if s.silent:
                self._stop.wait(30)
                return
            if s.implicit_tls:
                assert self.tls_context is not None
                conn = self.tls_context.wrap_socket(conn, server_side=True)
            f = conn.makefile("rwb", buffering=0)
            tls = s.implicit_tls

            def say(text: str) -> None:
                f.write(text.encode() + b"\r\n")

            say(s.banner)
            while True:
                raw = f.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.received.append(line)
                verb = line.split(" ", 1)[0].upper()
                if s.hangup_on and line.upper().startswith(s.hangup_on):
                    return
                if verb in ("EHLO", "HELO"):
                    ext = list(s.extensions)
                    if s.starttls and not tls:
                        ext.append("STARTTLS")
                    if s.auth_plain and (tls or not s.auth_after_tls_only):
                        ext.append("AUTH " + s.auth_plain)
                    lines = ["fake.test", *ext]
                    for i, text in enumerate(lines):
                        say(f"250{'-' if i < len(lines) - 1 else ' '}{text}")
                elif verb == "STARTTLS" and s.starttls and not tls:
                    say("220 2.0.0 Ready to start TLS")
                    assert self.tls_context is not None
                    conn = self.tls_context.wrap_socket(conn, server_side=True)
                    f = conn.makefile("rwb", buffering=0)
                    tls = True
                elif verb == "AUTH":
                    if s.auth_after_tls_only and not tls:
                        say("538 5.7.11 Encryption required for requested authentication mechanism")
                    else:
                        say(s.auth_reply)
                elif line.upper().startswith("MAIL FROM:"):
                    say(s.mail_reply)
                elif line.upper().startswith("RCPT TO:"):
                    if s.rcpt_accept is None or s.rcpt_accept(line[8:]):
                        say(s.rcpt_reply)
                    else:
                        say("554 5.7.1 Relay access denied")
                elif verb in ("RSET", "NOOP"):
                    say("250 2.0.0 Ok")
                elif verb == "QUIT":
                    say("221 2.0.0 Bye")
                    return
                elif verb == "DATA":
                    say("354 End data with <CR><LF>.<CR><LF>")
                else:
                    say("502 5.5.2 Error: command not recognized")
        except (OSError, ssl.SSLError, ValueError):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass
