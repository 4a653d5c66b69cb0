"""Bad input to the web service of a real `postvakt serve`: huge bodies, wrong
methods, odd encodings, slow and greedy clients. Each gets a clear 4xx with a
sentence, and the server log never shows a traceback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from web_support import REQUEST_TIMEOUT, WebServer, start_web_server

FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    srv = start_web_server(tmp_path_factory.mktemp("web-bad"))
    try:
        yield srv
        assert "Traceback" not in srv.srv.log(), srv.srv.log()
    finally:
        srv.stop()


def raw(live: WebServer, data: bytes, *, then: bytes = b"", pause: float = 0.0) -> bytes:
    """Send bytes (optionally more after a pause), read until the server closes."""
    s = socket.create_connection(("127.0.0.1", live.port), timeout=30)
    try:
        s.sendall(data)
        if pause:
            time.sleep(pause)
            try:
                s.sendall(then)
            except OSError:
                pass
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/help", "GET"),
        ("DELETE", "/help", "GET"),
        ("GET", "/help/check", "POST"),
        ("GET", "/autodiscover/autodiscover.xml", "POST"),
        ("POST", "/mail/config-v1.1.xml", "GET"),
        ("PATCH", "/mail/profile.mobileconfig", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(
    live: WebServer, method: str, path: str, allowed: str
) -> None:
    r = live.request(method, path)
    assert r.status == 405
    assert allowed in r.headers["Allow"]


def test_unknown_path_is_404(live: WebServer) -> None:
    assert live.get("/wp-admin/setup.php").status == 404


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": FORM},
        {"Content-Type": FORM, "Expect": "100-continue"},
    ],
)
def test_huge_declared_body_is_413_before_it_is_sent(
    live: WebServer, headers: dict[str, str]
) -> None:
    head = (
        "POST /help HTTP/1.1\r\nHost: x\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "Content-Length: 50000000\r\n\r\n"
    ).encode()
    out = raw(live, head)
    assert status_of(out) == 413, out[:200]
    assert b"larger than" in out


def test_huge_chunked_body_is_413(live: WebServer) -> None:
    chunk = b"a" * 65536
    body = b"6\r\nerror=\r\n"
    body += b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"
    head = (
        f"POST /help HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    out = raw(live, head + body)
    assert status_of(out) == 413, out[:200]


def test_huge_autodiscover_body_is_413(live: WebServer) -> None:
    r = live.request(
        "POST", "/autodiscover/autodiscover.xml", body=b"<a>" + b"x" * 100_000 + b"</a>"
    )
    assert r.status == 413


@pytest.mark.parametrize(
    ("content_type", "body", "status", "words"),
    [
        (FORM, b"error=%FF%FE%FD", 400, b"not valid UTF-8"),
        (FORM, "error=åäö".encode("latin-1"), 400, b"not valid UTF-8"),
        (FORM, "error=åäö".encode(), 400, b"not valid UTF-8"),
        (f"{FORM}; charset=utf-16", "error=x".encode("utf-16"), 415, b"must be UTF-8"),
        (f"{FORM}; charset=klingon", b"error=x", 415, b"must be UTF-8"),
        ("multipart/form-data; boundary=x", b"--x--", 415, b"urlencoded"),
        ("application/json", b'{"error": "x"}', 415, b"urlencoded"),
        ("", b"error=x", 415, b"urlencoded"),
        (FORM, b"&".join(b"f%d=x" % i for i in range(50)), 400, b"too many fields"),
    ],
)
def test_odd_encodings_are_refused_with_the_reason(
    live: WebServer, content_type: str, body: bytes, status: int, words: bytes
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = live.request("POST", "/help", body=body, headers=headers)
    assert r.status == status, r.body
    assert words in r.body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /help HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /h\xffelp HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /help HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /help HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(500)) + b"\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello on plain HTTP
    ],
)
def test_malformed_requests_are_4xx(live: WebServer, request_bytes: bytes) -> None:
    out = raw(live, request_bytes)
    assert out.startswith(b"HTTP/1."), out[:100]
    assert 400 <= status_of(out) < 500, out[:200]
    assert b"Traceback" not in out


def test_slow_headers_get_408(live: WebServer) -> None:
    """Slowloris: headers trickle in and never end."""
    start = time.monotonic()
    out = raw(
        live, b"GET /help HTTP/1.1\r\nHost: x\r\n", then=b"X-A: b\r\n", pause=REQUEST_TIMEOUT / 2
    )
    assert status_of(out) == 408, out
    assert b"did not arrive in time" in out
    assert time.monotonic() - start < 20  # closed by the server, not by our read timeout


def test_a_silent_connection_gets_408(live: WebServer) -> None:
    out = raw(live, b"")
    assert status_of(out) == 408


def test_slow_body_gets_408(live: WebServer) -> None:
    head = (
        f"POST /help HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    out = raw(live, head + b"error=abc")
    assert status_of(out) == 408, out
    assert b"body did not arrive in time" in out


def test_slow_second_request_on_a_kept_alive_connection_gets_408(live: WebServer) -> None:
    out = raw(live, b"GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /help HTTP/1.1\r\nHo")
    first, _, rest = out.partition(b"\r\n\r\n")
    assert status_of(first) == 200
    assert b"HTTP/1.1 408" in rest


def test_too_many_connections_from_one_address_get_429(live: WebServer) -> None:
    from postvakt.web.guard import MAX_CONNECTIONS_PER_CLIENT

    held = []
    try:
        for _ in range(MAX_CONNECTIONS_PER_CLIENT):
            held.append(socket.create_connection(("127.0.0.1", live.port), timeout=30))
        # Each held connection is counted once the server accepted it: ask on a
        # fresh one until the count has caught up (it must say 429, never hang).
        deadline = time.monotonic() + 30
        while True:
            out = raw(live, b"GET /robots.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if status_of(out) == 429 or time.monotonic() > deadline:
                break
        assert status_of(out) == 429
        assert b"too many connections" in out
    finally:
        for s in held:
            s.close()
    # Once they are gone, the address is welcome again.
    deadline = time.monotonic() + 30
    while (
        status_of(raw(live, b"GET /robots.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        != 200
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_every_answer_carries_the_security_headers(live: WebServer) -> None:
    for r in (live.get("/help"), live.get("/nowhere"), live.request("PUT", "/help")):
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Server"] == "postvakt"
