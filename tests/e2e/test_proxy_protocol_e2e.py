"""PROXY protocol behind a real HAProxy: the client the header names is the client.

HAProxy (Debian's package) listens on 127.0.0.10 and forwards to `postvakt
serve` on 127.0.0.11 with `send-proxy-v2` (and `send-proxy`, v1, on a second
frontend). Clients bind to 127.0.0.2-9; only 127.0.0.5 is in `networks`, so
whether a foreign recipient relays tells which address the server believed.
"""

from __future__ import annotations

import ipaddress
import signal
import smtplib
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from haproxy import requires_haproxy, running_haproxy, tcp_head
from support import (
    LOCAL_DOMAIN,
    RawClient,
    Running,
    base_config,
    connect_from,
    eventually,
    free_port,
    rcpt_on,
    start_server,
    to_toml,
    wait_maildir,
)

PROXY_IP = "127.0.0.10"
NODE_IP = "127.0.0.11"
OUTSIDE = "127.0.0.2"
IN_NETWORKS = "127.0.0.5"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
USER = f"alice@{LOCAL_DOMAIN}"
PASSWORD = "proxy-secret-1"

pytestmark = requires_haproxy


@dataclass
class Stack:
    srv: Running
    smtp_v2: int  # HAProxy frontend ports on PROXY_IP
    smtp_v1: int
    pop3_v2: int
    submissions_v2: int


def _haproxy_config(srv: Running, ports: dict[str, int]) -> str:
    def pair(name: str, port: int, backend_port: int, send: str) -> str:
        return (
            f"frontend f_{name}\n    bind {PROXY_IP}:{port}\n    default_backend b_{name}\n\n"
            f"backend b_{name}\n    source {PROXY_IP}\n"
            f"    server node {NODE_IP}:{backend_port} {send}\n\n"
        )

    return (
        tcp_head()
        + pair("smtp_v2", ports["smtp_v2"], srv.port("smtp"), "send-proxy-v2")
        + pair("smtp_v1", ports["smtp_v1"], srv.port("smtp"), "send-proxy")
        + pair("pop3_v2", ports["pop3_v2"], srv.port("pop3"), "send-proxy-v2")
        + pair("subs_v2", ports["subs_v2"], srv.port("submissions"), "send-proxy-v2")
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("proxy")
    srv = start_server(
        tmp,
        users={USER: PASSWORD},
        listen={
            "smtp": [f"{NODE_IP}:0"],
            "pop3": [f"{NODE_IP}:0"],
            "submission": [],
            "submissions": [f"{NODE_IP}:0"],
            "pop3s": [],
            "proxy_protocol": ["smtp", "pop3", "submissions"],
            "proxy_trusted": [f"{PROXY_IP}/32"],
        },
        relay={"networks": [f"{IN_NETWORKS}/32"], "pop_before_smtp": "30m"},
        pop3={"plaintext": "always"},
    )
    ports = {k: free_port(PROXY_IP) for k in ("smtp_v2", "smtp_v1", "pop3_v2", "subs_v2")}
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(_haproxy_config(srv, ports))
    try:
        with running_haproxy(cfg, PROXY_IP, ports.values()):
            yield Stack(srv, ports["smtp_v2"], ports["smtp_v1"], ports["pop3_v2"], ports["subs_v2"])
    finally:
        srv.stop()


def _client(port: int, source: str) -> RawClient:
    """A raw client of HAProxy's frontend, from a given source address."""
    return RawClient(port, source_ip=source, host=PROXY_IP)


def _rcpt_foreign(port: int, source: str) -> str:
    return rcpt_on(_client(port, source), "someone@elsewhere.example", "friend@foreign.example")


def test_outside_client_through_haproxy_is_refused_relay(stack: Stack) -> None:
    for port in (stack.smtp_v2, stack.smtp_v1):
        reply = _rcpt_foreign(port, OUTSIDE)
        assert reply.startswith("550 5.7.1"), reply
    eventually(
        lambda: _assert_in(stack.srv.log(), f"client={OUTSIDE} port=smtp proxy={PROXY_IP}"),
        timeout=10,
    )


def test_client_in_networks_by_the_header_relays(stack: Stack) -> None:
    # The TCP peer is HAProxy (127.0.0.10, not in networks): only the header makes this relay.
    for port in (stack.smtp_v2, stack.smtp_v1):
        reply = _rcpt_foreign(port, IN_NETWORKS)
        assert reply.startswith("250"), reply


def test_received_header_names_the_client_from_the_header(stack: Stack) -> None:
    token = f"proxied-{time.monotonic_ns()}"
    c = _client(stack.smtp_v2, "127.0.0.7")
    try:
        c.reply()
        c.cmd("EHLO seven.example")
        assert c.cmd("MAIL FROM:<someone@elsewhere.example>").startswith("250")
        assert c.cmd(f"RCPT TO:<{USER}>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        reply = c.cmd(f"Subject: {token}\r\n\r\nhello\r\n.")
        assert reply.startswith("250"), reply
    finally:
        c.close()
    msgs = wait_maildir(stack.srv.data_dir, USER, containing=token.encode())
    assert msgs, "the message was not delivered"
    text = msgs[0].replace(b"\r\n", b"\n")
    head = text.split(b"\n\n", 1)[0].replace(b"\n ", b" ").replace(b"\n\t", b" ")
    received = [ln for ln in head.split(b"\n") if ln.startswith(b"Received:")]
    assert b"[127.0.0.7]" in received[0], received
    assert PROXY_IP.encode() not in received[0]


def test_pop3_login_through_haproxy_grants_that_address_only(stack: Stack) -> None:
    source = "127.0.0.3"
    c = _client(stack.pop3_v2, source)
    try:
        assert c.line().startswith("+OK")
        assert c.cmd(f"USER {USER}").startswith("+OK")
        reply = c.cmd(f"PASS {PASSWORD}")
        assert reply.startswith("+OK"), reply
        c.cmd("QUIT")
    finally:
        c.close()
    assert _rcpt_foreign(stack.smtp_v2, source).startswith("250")
    assert _rcpt_foreign(stack.smtp_v2, "127.0.0.4").startswith("550")
    grants = stack.srv.cli("grants", "list").stdout
    assert source in grants and PROXY_IP not in grants, grants


def _assert_in(text: str, needle: str) -> None:
    assert needle in text, needle


def _refused(stack: Stack, source: str, send: bytes, reason: str) -> None:
    """A direct connection to the node: closed without a banner, and logged."""
    before = stack.srv.log().count("proxy refused")
    s = connect_from(source, stack.srv.port("smtp"), host=NODE_IP, timeout=20)
    try:
        if send:
            s.sendall(send)
        got = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        assert got == b"", f"the server spoke: {got!r}"
    finally:
        s.close()

    def logged() -> None:
        lines = [ln for ln in stack.srv.log().splitlines() if "proxy refused" in ln]
        assert len(lines) > before
        assert any(reason in ln and f"proxy={source}" in ln for ln in lines[before:]), lines

    eventually(logged, timeout=10)


def _v2_header(client: str) -> bytes:
    block = ipaddress.ip_address(client).packed + ipaddress.ip_address(NODE_IP).packed
    block += struct.pack("!HH", 40000, 25)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(block)) + block


def test_header_from_untrusted_source_is_closed_without_banner(stack: Stack) -> None:
    # 127.0.0.2 claims to be a client in networks: it is not a trusted proxy.
    _refused(stack, OUTSIDE, _v2_header(IN_NETWORKS), "not in [listen] proxy_trusted")


def test_missing_header_is_closed_without_banner(stack: Stack) -> None:
    _refused(stack, PROXY_IP, b"", "no PROXY header within")


def test_protocol_instead_of_header_is_closed_without_banner(stack: Stack) -> None:
    _refused(stack, PROXY_IP, b"EHLO direct.example\r\n", "no PROXY header (the connection")


def test_malformed_header_is_closed_without_banner(stack: Stack) -> None:
    _refused(stack, PROXY_IP, b"PROXY TCP4 127.0.0.5 127.0.0.11 1 025\r\n", "PROXY v1 header")
    _refused(stack, PROXY_IP, V2_SIGNATURE + b"\x21\x11\x00\x04abcd", "address bytes")


def test_health_checks_get_the_banner(stack: Stack) -> None:
    for header in (b"PROXY UNKNOWN\r\n", V2_SIGNATURE + b"\x20\x00\x00\x00"):
        s = connect_from(PROXY_IP, stack.srv.port("smtp"), host=NODE_IP)
        try:
            s.sendall(header)
            assert s.recv(4096).startswith(b"220 "), header
            s.sendall(b"QUIT\r\n")
        finally:
            s.close()


def test_implicit_tls_after_the_header(stack: Stack) -> None:
    """465 behind HAProxy: the header first, then the client's own TLS handshake."""
    source = "127.0.0.6"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP_SSL(
        PROXY_IP, stack.submissions_v2, context=ctx, source_address=(source, 0), timeout=20
    ) as c:
        c.ehlo("six.example")
        c.login(USER, PASSWORD)
        c.mail("alice@" + LOCAL_DOMAIN)
        code, _ = c.rcpt("friend@foreign.example")
        assert code == 250
        c.rset()
    eventually(
        lambda: _assert_in(
            stack.srv.log(),
            f"RCPT client={source} port=submissions login=alice@pv.test proxy={PROXY_IP}",
        ),
        timeout=10,
    )


def test_proxy_trusted_empty_trusts_nobody_and_a_reload_changes_it(tmp_path: Path) -> None:
    sections: dict[str, dict[str, object]] = {
        "listen": {
            "smtp": [f"{NODE_IP}:0"],
            "submission": [],
            "submissions": [],
            "pop3": [],
            "pop3s": [],
            "proxy_protocol": ["smtp"],
        },
    }
    srv = start_server(tmp_path, **sections)
    header = b"PROXY TCP4 127.0.0.7 127.0.0.11 40000 25\r\n"
    try:
        stack = Stack(srv, 0, 0, 0, 0)
        _refused(stack, PROXY_IP, header, "not in [listen] proxy_trusted")
        raw = base_config(srv.data_dir)
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        raw["listen"]["proxy_trusted"] = [f"{PROXY_IP}/32"]
        srv.config_path.write_text(to_toml(raw))
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)
        eventually(lambda: _assert_in(srv.log(), "reloaded "), timeout=20)
        assert "take effect after a restart" not in srv.log()
        s = connect_from(PROXY_IP, srv.port("smtp"), host=NODE_IP)
        try:
            s.sendall(header)
            assert s.recv(4096).startswith(b"220 ")
        finally:
            s.close()
        eventually(
            lambda: _assert_in(srv.log(), f"connect client=127.0.0.7 port=smtp proxy={PROXY_IP}"),
            timeout=10,
        )
    finally:
        srv.stop()
