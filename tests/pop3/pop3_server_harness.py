"""The POP3 listeners started in-process on 127.0.0.1 with port 0.

    srv = LiveServer(tmp_path)            # alice@pv.test / secret exists
    srv.deliver("alice@pv.test", b"Subject: hi\n\nbody\n")
    srv.port("pop3"), srv.port("pop3s")
    srv.stop()

The server runs on its own event loop in a thread, so tests can use blocking
clients (poplib, raw sockets, curl and fetchmail in subprocesses).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from postvakt.auth import Authenticator
from postvakt.config import Config, from_dict
from postvakt.directory import Directory
from postvakt.grants import MemoryGrantStore
from postvakt.grants.logins import LoginThrottle, MemoryLoginFailureStore
from postvakt.server.pop3 import start_pop3
from postvakt.server.tls import server_context

LOCAL_DOMAIN = "pv.test"
ALICE = "alice@pv.test"
PASSWORD = "secret"
OUTSIDE_IP = "127.0.0.2"
OTHER_OUTSIDE_IP = "127.0.0.3"

_seq = itertools.count()


def make_throttle(
    delay_start: float = 2.0,
    delay_max: float = 15.0,
    per_login: int = 10,
    per_address: int = 100,
    window: float = 900.0,
) -> LoginThrottle:
    """The failed-login throttle on an in-memory store (the defaults are the config's)."""
    return LoginThrottle(
        MemoryLoginFailureStore(),
        delay_start=delay_start,
        delay_max=delay_max,
        per_login=per_login,
        per_address=per_address,
        window=window,
    )


class LiveServer:
    def __init__(
        self,
        tmp_path: Path,
        *,
        users: dict[str, str] | None = None,
        pop3: dict[str, Any] | None = None,
        relay: dict[str, Any] | None = None,
        throttle: LoginThrottle | None = None,
        login_delay: float | None = None,
    ) -> None:
        raw: dict[str, Any] = {
            "hostname": "mx.pv.test",
            "data_dir": str(tmp_path / "data"),
            "listen": {"pop3": ["127.0.0.1:0"], "pop3s": ["127.0.0.1:0"]},
            "domains": {"local": [LOCAL_DOMAIN]},
            "relay": {"networks": ["127.0.0.1/32"], **(relay or {})},
            "pop3": {"fail_delay": 0.05, "fail_delay_max": 0.4, **(pop3 or {})},
        }
        self.config: Config = from_dict(raw, source="<test>", base_dir=tmp_path)
        self.directory = Directory.for_config(self.config)
        for address, password in (users if users is not None else {ALICE: PASSWORD}).items():
            self.directory.add_user(address, password)
        self.authenticator = Authenticator(self.directory)
        self.grants = MemoryGrantStore()
        self.throttle = throttle or make_throttle(delay_start=0.05, delay_max=0.4)
        self.ssl_context = server_context(self.config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers = self.call(
            start_pop3(
                self.config,
                directory=self.directory,
                authenticator=self.authenticator,
                grants=self.grants,
                login_throttle=self.throttle,
                ssl_context=self.ssl_context,
                login_delay=login_delay,
            )
        )
        n = len(self.config.listen.pop3)
        self.ports = {
            "pop3": [s.sockets[0].getsockname()[1] for s in self.servers[:n]],
            "pop3s": [s.sockets[0].getsockname()[1] for s in self.servers[n:]],
        }

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def port(self, kind: str = "pop3") -> int:
        return self.ports[kind][0]

    def maildir(self, mailbox: str = ALICE) -> Path:
        return self.directory.maildir(mailbox)

    def deliver(self, data: bytes, mailbox: str = ALICE, name: str | None = None) -> str:
        """Put a message into new/ as local delivery does (tmp/ then rename); returns its unique name."""
        md = self.maildir(mailbox)
        for sub in ("tmp", "new", "cur"):
            (md / sub).mkdir(parents=True, exist_ok=True)
        name = name or f"{int(time.time())}.M{next(_seq)}P{os.getpid()}.{socket.gethostname()}"
        tmp = md / "tmp" / name
        tmp.write_bytes(data)
        os.rename(tmp, md / "new" / name)
        return name

    def files(self, mailbox: str = ALICE) -> list[str]:
        md = self.maildir(mailbox)
        return sorted(
            p.name for sub in ("new", "cur") for p in (md / sub).iterdir() if (md / sub).exists()
        )

    def stop(self) -> None:
        if self.loop.is_closed() or not self.thread.is_alive():
            return

        async def close() -> None:
            for s in self.servers:
                s.close()
            for s in self.servers:
                await s.wait_closed()

        try:
            self.call(close(), timeout=10)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.directory.close()


def client_tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class POP3Raw:
    """A byte-exact POP3 client on a raw socket, optionally from another loopback address."""

    def __init__(
        self, port: int, source_ip: str = "127.0.0.1", *, tls: bool = False, timeout: float = 10.0
    ) -> None:
        sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source_ip, 0)
        )
        self.sock: socket.socket = client_tls_context().wrap_socket(sock) if tls else sock
        self.buf = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def multiline(self) -> list[str]:
        out = []
        while (line := self.line()) != ".":
            out.append(line[1:] if line.startswith(".") else line)
        return out

    def cmd(self, text: str) -> str:
        self.send(text + "\r\n")
        return self.line()

    def starttls(self) -> None:
        assert self.buf == b"", f"unread bytes before TLS: {self.buf!r}"
        self.sock = client_tls_context().wrap_socket(self.sock)

    def login(self, user: str = ALICE, password: str = PASSWORD) -> str:
        assert self.cmd(f"USER {user}") == "+OK"
        return self.cmd(f"PASS {password}")

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
