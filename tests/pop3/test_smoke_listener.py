"""The listeners answer on both ports; a login over 995 reads what is in the Maildir."""

from __future__ import annotations

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
