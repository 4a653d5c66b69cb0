"""The listeners answer on both ports; a login over 995 reads what is in the Maildir."""

from __future__ import annotations

import time

from pop3_server_harness import LiveServer, POP3Raw


def test_pop3s_login_and_retr(server: LiveServer) -> None:
    server.deliver(b"Subject: hi\n\nhello\n")
    c = POP3Raw(server.port("pop3s"), tls=True)
    assert c.line() == "+OK POP3 server ready"
    assert c.login() == "+OK Logged in, 1 messages (22 octets)"
    assert c.cmd("RETR 1") == "+OK 22 octets"
    assert c.multiline() == ["Subject: hi", "", "hello"]
    assert c.cmd("QUIT") == "+OK Logging out, 1 messages left"
    assert c.closed_by_server()


def test_pop3_stls_then_login(server: LiveServer) -> None:
    c = POP3Raw(server.port("pop3"))
    assert c.line().startswith("+OK")
    assert c.cmd("STLS") == "+OK Begin TLS negotiation"
    c.starttls()
    assert c.login() == "+OK Logged in, 0 messages (0 octets)"
    assert c.cmd("QUIT").startswith("+OK")


def test_pipelined_large_retrs_arrive_whole_and_in_order(server: LiveServer) -> None:
    """Several MB answered to pipelined commands: write backpressure must not lose or reorder."""
    bodies = []
    for i in range(3):
        body = b"".join(b"%d line %07d %s\n" % (i, n, b"x" * 60) for n in range(15_000))
        bodies.append(body)
        server.deliver(b"Subject: big %d\n\n" % i + body)
    c = POP3Raw(server.port("pop3s"), tls=True)
    c.line()
    assert c.login().startswith("+OK Logged in, 3 messages")
    c.send(b"RETR 1\r\nRETR 2\r\nRETR 3\r\nNOOP\r\n")
    for i in range(3):
        assert c.line().endswith(" octets")
        lines = c.multiline()
        assert lines[0] == f"Subject: big {i}"
        assert "\n".join(lines[2:]) + "\n" == bodies[i].decode()
    assert c.line() == "+OK"
    assert c.cmd("QUIT").startswith("+OK")


def test_junk_on_the_wire_never_takes_the_listener_down(server: LiveServer) -> None:
    """Random bytes, half lines and abrupt closes: each gets -ERR or a close, the next client is served."""
    import random

    rnd = random.Random(1939)
    server.deliver(b"Subject: x\n\ny\n")
    for i in range(40):
        c = POP3Raw(server.port("pop3s"), tls=True)
        c.line()
        if i % 2:
            c.login()
        junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 3000)))
        try:
            c.send(junk + (b"\r\n" if i % 3 else b""))
        except OSError:
            pass
        c.close()
    for _ in range(50):  # the last junk session may still be closing and hold the lock
        c = POP3Raw(server.port("pop3s"), tls=True)
        assert c.line() == "+OK POP3 server ready"
        reply = c.login()
        if not reply.startswith("-ERR [IN-USE]"):
            break
        c.close()
        time.sleep(0.05)
    assert reply == "+OK Logged in, 1 messages (17 octets)"
    assert c.cmd("QUIT").startswith("+OK")
