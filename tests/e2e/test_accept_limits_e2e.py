"""Connection limits counted from accept, on every listener, against the real
`postvakt serve` (issue 16 points 3 and 4).

- the per-client limit holds on 465 and 995 before any handshake, and on POP3;
- a handshake that never starts is cut off after the handshake timeout;
- the process's cap refuses with a reply before descriptors run out;
- with the descriptors gone anyway (a cap set above them), accepting pauses,
  one line is logged, and the server serves again when descriptors free up.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import (
    HOSTNAME,
    OTHER_OUTSIDE_IP,
    OUTSIDE_IP,
    RawClient,
    Running,
    eventually,
    start_server,
    write_server_config,
)

PER_CLIENT = 4
# Deadline for an event the server should cause at once (not a timing claim).
PATIENCE = 20.0


def raw(port: int, ip: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE, source_address=(ip, 0))
    return s


def read_line(s: socket.socket) -> bytes:
    """The first line the server sends, or b"" when it closes without one."""
    buf = b""
    while b"\r\n" not in buf:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            return buf
        if not chunk:
            return buf
        buf += chunk
    return buf.split(b"\r\n", 1)[0]


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    srv = start_server(
        tmp_path_factory.mktemp("accept"),
        smtp={"max_connections_per_client": PER_CLIENT},
        pop3={"max_connections_per_client": PER_CLIENT},
    )
    yield srv
    srv.stop()


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def wait_until_counted_free(srv: Running, kind: str, ip: str, greeting: bytes) -> None:
    """Closed connections are given back: a new one from `ip` is served again."""

    def served() -> None:
        s = raw(srv.port(kind), ip)
        try:
            assert read_line(s).startswith(greeting)
        finally:
            s.close()

    eventually(served, timeout=PATIENCE)


def test_idle_sockets_on_465_count_before_any_handshake(limited: Running) -> None:
    # Sockets that never send a ClientHello hold the address's places: the
    # next one on 465 is closed at once, and port 25 says why.
    idle = [raw(limited.port("submissions"), OUTSIDE_IP) for _ in range(PER_CLIENT)]
    try:
        extra = raw(limited.port("submissions"), OUTSIDE_IP)
        assert read_line(extra) == b""  # closed without a handshake, long before any timeout
        extra.close()
        plain = raw(limited.port("smtp"), OUTSIDE_IP)
        assert read_line(plain) == (
            f"421 4.7.0 {HOSTNAME} Error: too many connections from {OUTSIDE_IP}".encode()
        )
        plain.close()
        # Another address is not affected.
        other = RawClient(limited.port("smtp"), OTHER_OUTSIDE_IP)
        assert other.reply().startswith("220")
        other.close()
    finally:
        close_all(idle)
    wait_until_counted_free(limited, "smtp", OUTSIDE_IP, b"220 ")


def test_a_handshake_that_never_starts_is_cut_off(limited: Running) -> None:
    ip = "127.0.0.9"
    s = raw(limited.port("pop3s"), ip)
    try:
        s.settimeout(PATIENCE + 5)
        assert read_line(s) == b""  # the server gave up on us

        def logged() -> None:
            lines = [x for x in limited.log().splitlines() if f"failed client={ip} " in x]
            assert lines and "no finished handshake within 10 s" in lines[0], lines

        eventually(logged, timeout=5)
    finally:
        s.close()


def test_pop3_has_a_per_client_limit_on_110_and_995(limited: Running) -> None:
    ip = "127.0.0.7"
    held = [raw(limited.port("pop3"), ip) for _ in range(PER_CLIENT - 1)]
    try:
        for s in held:
            assert read_line(s).startswith(b"+OK")
        held.append(raw(limited.port("pop3s"), ip))  # an idle TLS socket counts too
        extra = raw(limited.port("pop3"), ip)
        assert read_line(extra) == f"-ERR [SYS/TEMP] Too many connections from {ip}".encode()
        extra.close()
        tls_extra = raw(limited.port("pop3s"), ip)
        assert read_line(tls_extra) == b""
        tls_extra.close()
        # SMTP counts its own: the same address still gets a banner there.
        smtp = raw(limited.port("smtp"), ip)
        assert read_line(smtp).startswith(b"220 ")
        smtp.close()
    finally:
        close_all(held)
    wait_until_counted_free(limited, "pop3", ip, b"+OK")


def low_descriptor_server(tmp_path: Path, nofile: int, **sections: dict[str, object]) -> Running:
    cfg, data = write_server_config(tmp_path, **sections)
    return Running(cfg, data, nofile=nofile).start()


def connection_cap(srv: Running) -> int:
    m = re.search(r"at most (\d+) connections at once", srv.log())
    assert m, srv.log()
    return int(m.group(1))


def test_the_process_cap_refuses_with_a_reply_before_descriptors_run_out(
    tmp_path: Path,
) -> None:
    srv = low_descriptor_server(tmp_path, 96)
    socks: list[socket.socket] = []
    try:
        cap = connection_cap(srv)
        assert 0 < cap < 96
        # 127.0.0.1 is in `networks`: no per-client limit, only the process's cap.
        for _ in range(cap):
            socks.append(raw(srv.port("smtp"), "127.0.0.1"))
            assert read_line(socks[-1]).startswith(b"220 ")
        for kind, expected in (
            ("smtp", f"421 4.7.0 {HOSTNAME} Error: too many connections".encode()),
            ("submission", f"421 4.7.0 {HOSTNAME} Error: too many connections".encode()),
            ("pop3", b"-ERR [SYS/TEMP] Too many connections, try again later"),
            ("submissions", b""),
            ("pop3s", b""),
        ):
            s = raw(srv.port(kind), "127.0.0.1")
            assert read_line(s) == expected, kind
            s.close()
        close_all(socks[: cap // 2])
        wait_until_counted_free(srv, "smtp", "127.0.0.1", b"220 ")
        log = srv.log()
        assert log.count("connection cap reached") == 1
        assert "Traceback" not in log
    finally:
        close_all(socks)
        assert srv.stop() == 0


def test_out_of_descriptors_pauses_accepting_and_recovers(tmp_path: Path) -> None:
    # A cap above what the descriptors allow: accept() itself runs out (EMFILE).
    nofile = 96
    srv = low_descriptor_server(tmp_path, nofile, server={"max_connections": 10_000})
    socks: list[socket.socket] = []
    try:
        # More than the process can hold: the kernel completes the connects and
        # keeps what the server cannot accept in the listen queue.
        socks = [raw(srv.port("smtp"), "127.0.0.1") for _ in range(nofile + 20)]

        def paused() -> None:
            assert "not accepting until a descriptor frees" in srv.log()

        eventually(paused, timeout=PATIENCE)
        # The first ones were accepted (the listen queue is first in, first out):
        # let them go, and the waiting ones are served.
        close_all(socks[:nofile])
        for s in socks[nofile:]:
            assert read_line(s).startswith(b"220 ")
        fresh = RawClient(srv.port("smtp"), "127.0.0.1")
        assert fresh.reply().startswith("220")
        assert fresh.cmd("EHLO client.example").startswith("250")
        assert fresh.cmd("QUIT").startswith("221")
        fresh.close()

        def resumed() -> None:
            # The episode is over once accepts have worked for a while: keep accepting.
            c = RawClient(srv.port("smtp"), "127.0.0.1")
            c.close()
            assert re.search(r"accepting again: \d+ accepts failed", srv.log())

        eventually(resumed, timeout=PATIENCE)
        log = srv.log()
        assert log.count("not accepting until a descriptor frees") == 1, log
        assert "Traceback" not in log
        assert "out of system resource" not in log
    finally:
        close_all(socks)
        assert srv.stop() == 0
