"""A TLS handshake that fails on any listener leaves one log line naming the
client, the listener, the reason and what the client had sent (issue 18 §2),
on uvloop and on plain asyncio alike.

Each case connects from its own loopback address, so the line it caused can be
told from the others'.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import ssl
import urllib.request
from collections.abc import Iterator

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from support import Running, connect_from, eventually, start_server

LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"
        ),
    ),
]


@pytest.fixture(scope="module", params=LOOPS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POSTVAKT_EVENT_LOOP", request.param)
        srv = start_server(
            tmp_path_factory.mktemp(f"tls-{request.param}"), metrics={"listen": "127.0.0.1:0"}
        )
    try:
        assert f"event loop {request.param}" in srv.log()
        yield srv
    finally:
        srv.stop()


def strangers_ca() -> ssl.SSLContext:
    """A client that trusts only some other CA: it refuses our certificate."""
    ctx = ssl.create_default_context()
    trustme.CA().configure_trust(ctx)
    return ctx


def trusting_us(srv: Running) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(srv.data_dir / "tls" / "cert.pem"))


def read_reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data[3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\r\n") and re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", data):
            break
    return data


def starttls(sock: socket.socket, pop3: bool) -> None:
    if pop3:
        assert sock.recv(4096).startswith(b"+OK")
        sock.sendall(b"STLS\r\n")
        assert sock.recv(4096).startswith(b"+OK")
        return
    assert read_reply(sock).startswith(b"220")
    sock.sendall(b"EHLO client.example\r\n")
    assert b"STARTTLS" in read_reply(sock)
    sock.sendall(b"STARTTLS\r\n")
    assert read_reply(sock).startswith(b"220")


def handshake(
    srv: Running, kind: str, ip: str, ctx: ssl.SSLContext, name: str = "mx.pv.test"
) -> None:
    sock = connect_from(ip, srv.port(kind))
    try:
        if kind in ("smtp", "submission", "pop3"):
            starttls(sock, pop3=kind == "pop3")
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(sock, server_hostname=name)
    finally:
        sock.close()


def failure_line(srv: Running, ip: str) -> str:
    lines: list[str] = []

    def logged() -> None:
        lines[:] = [x for x in srv.log().splitlines() if f"handshake failed client={ip} " in x]
        assert lines

    eventually(logged, timeout=15)
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("kind", "ip"),
    [
        ("submissions", "127.0.0.2"),
        ("submission", "127.0.0.3"),
        ("smtp", "127.0.0.4"),
        ("pop3s", "127.0.0.5"),
        ("pop3", "127.0.0.6"),
    ],
)
def test_a_client_refusing_our_certificate_is_logged_on_every_listener(
    server: Running, kind: str, ip: str
) -> None:
    handshake(server, kind, ip, strangers_ca())
    line = failure_line(server, ip)
    assert f"listener={kind} local=127.0.0.1:{server.port(kind)}" in line
    assert 'reason="the client does not trust our certificate (TLS alert: unknown CA)"' in line
    assert "error=TLSV1_ALERT_UNKNOWN_CA" in line
    assert 'sent="TLS ClientHello (up to TLS 1.3, SNI mx.pv.test)"' in line


def test_a_name_the_certificate_lacks_is_pointed_out(server: Running) -> None:
    handshake(server, "submissions", "127.0.0.7", trusting_us(server), name="smtp.elsewhere.test")
    line = failure_line(server, "127.0.0.7")
    assert "SNI smtp.elsewhere.test (not covered by our certificate)" in line
    assert "reason=" in line and "error=" in line


@pytest.mark.parametrize(
    ("kind", "ip", "greeting"),
    [("submissions", "127.0.0.8", b"EHLO client.example\r\n"), ("pop3s", "127.0.0.9", b"CAPA\r\n")],
)
def test_plaintext_on_an_implicit_tls_port_is_named(
    server: Running, kind: str, ip: str, greeting: bytes
) -> None:
    """A mail program set to STARTTLS on port 465 (or plain POP3 on 995)."""
    sock = connect_from(ip, server.port(kind))
    sock.sendall(greeting)
    sock.settimeout(10)
    try:
        assert not sock.recv(4096).startswith((b"220", b"+OK"))
    except (ConnectionError, TimeoutError):
        pass
    sock.close()
    line = failure_line(server, ip)
    assert 'reason="not a TLS handshake"' in line
    quoted = greeting.decode().strip()
    assert f"sent=\"plaintext '{quoted}'\"" in line


def test_a_client_that_gives_up_after_connecting_is_logged(server: Running) -> None:
    sock = connect_from("127.0.0.10", server.port("pop3s"))
    sock.close()
    line = failure_line(server, "127.0.0.10")
    assert 'sent="nothing before closing the connection"' in line


def test_good_handshakes_log_no_failure(server: Running) -> None:
    for kind, ip in (("submissions", "127.0.0.11"), ("pop3s", "127.0.0.11")):
        sock = trusting_us(server).wrap_socket(
            connect_from(ip, server.port(kind)), server_hostname="mx.pv.test"
        )
        assert sock.recv(4096).startswith((b"220", b"+OK"))  # the handshake is over
        sock.close()
    assert "handshake failed client=127.0.0.11 " not in server.log()


def handshake_failures(srv: Running) -> dict[tuple[str, str], float]:
    """postvakt_tls_handshake_failures_total by (listener, error), from a real scrape."""
    port = srv.ports["metrics"][0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "postvakt_tls_handshake_failures_total":
                out[(s.labels["listener"], s.labels["error"])] = s.value
    return out


def test_failed_handshakes_are_counted_in_the_metrics(server: Running) -> None:
    unknown_ca = "TLSV1_ALERT_UNKNOWN_CA"
    before = handshake_failures(server)
    handshake(server, "submissions", "127.0.0.12", strangers_ca())
    handshake(server, "submission", "127.0.0.12", strangers_ca())
    handshake(server, "submission", "127.0.0.12", strangers_ca())
    for kind, n in (("submissions", 1), ("submission", 2)):
        want = before.get((kind, unknown_ca), 0.0) + n

        def counted(kind: str = kind, want: float = want) -> None:
            assert handshake_failures(server).get((kind, unknown_ca), 0.0) == want

        eventually(counted, timeout=15)
    # A good handshake counts nothing.
    now = handshake_failures(server)
    sock = trusting_us(server).wrap_socket(
        connect_from("127.0.0.12", server.port("submissions")), server_hostname="mx.pv.test"
    )
    assert sock.recv(4096).startswith(b"220")
    sock.close()
    assert handshake_failures(server) == now
