"""Helpers for the web tests: the real `postvakt serve` with [web] on, a test CA
whose certificate names the public host, and a plain HTTP client that shows
every status and header (http.client: no redirects followed, no retries)."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from support import Running, base_config, postvakt, to_toml

ALICE = "alice@pv.test"
PASSWORD = "correct horse 7"
# The name mail programs are told; the tests map it to 127.0.0.1 the way DNS would.
PUBLIC_HOST = "mail.pv.test"
# Short, so that the slow-client tests wait a second, not ten.
REQUEST_TIMEOUT = 1.0


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass
class WebServer:
    srv: Running
    ca: trustme.CA

    @property
    def port(self) -> int:
        return self.srv.port("web")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return Reply(r.status, r.headers, r.read())
        finally:
            conn.close()

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def stop(self) -> None:
        self.srv.stop()


def start_web_server(
    tmp_path: Path,
    *,
    drop_listeners: tuple[str, ...] = (),
    web: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> WebServer:
    ca = trustme.CA()
    cert = ca.issue_cert(PUBLIC_HOST)
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    web_section = {
        "listen": "127.0.0.1:0",
        "public_host": PUBLIC_HOST,
        "request_timeout": f"{REQUEST_TIMEOUT}s",
        **(web or {}),
    }
    data_dir = tmp_path / "data"
    cfg = base_config(
        data_dir,
        tls={"cert": str(cert_path), "key": str(key_path)},
        web=web_section,
        **sections,
    )
    for kind in drop_listeners:
        cfg["listen"].pop(kind)
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(to_toml(cfg))
    postvakt("user", "add", ALICE, "--password-stdin", config=cfg_path, input=PASSWORD + "\n")
    return WebServer(Running(cfg_path, data_dir).start(), ca)


def connect_public(port: int, timeout: float = 10.0) -> socket.socket:
    """A connection to PUBLIC_HOST:port, which on this machine is 127.0.0.1."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
