"""The web service of a real `postvakt serve`: every setting it hands out is
checked against the live listeners by connecting to them, logging in and
getting a recipient at another domain accepted (no message is sent).

No Thunderbird, Evolution or Outlook can run here, so the documents are read
the way those clients read them (autoconfig_shape.read_as_client, the POX
Autodiscover elements, the profile's keys) and then used like a client would:
TLS checked against the test CA for the public host name, login with the full
address as user name.
"""

from __future__ import annotations

import base64
import plistlib
import signal
import socket
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from autoconfig_shape import ClientServer, read_as_client, validate_autoconfig
from web_support import (
    ALICE,
    PASSWORD,
    PUBLIC_HOST,
    WebServer,
    connect_public,
    start_web_server,
    wait_for,
)

from postvakt.web import mailconfig as mc


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    srv = start_web_server(tmp_path_factory.mktemp("web-live"))
    try:
        yield srv
    finally:
        srv.stop()


class Lines:
    """Line reading over a plain or TLS socket (replies of SMTP and POP3)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode()

    def smtp_reply(self) -> str:
        lines = [self.line()]
        while lines[-1][3:4] == "-":
            lines.append(self.line())
        return "\n".join(lines)

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")


def _tls(srv: WebServer, sock: socket.socket, hostname: str) -> socket.socket:
    # The certificate must name the host the document told the client to use.
    return srv.tls_context().wrap_socket(sock, server_hostname=hostname)


def use_smtp(srv: WebServer, s: ClientServer, password: str = PASSWORD) -> str:
    """Connect as the settings say, log in, and ask to relay; returns the RCPT reply."""
    assert s.hostname == PUBLIC_HOST
    sock = connect_public(s.port)
    if s.socket_type == "SSL":
        sock = _tls(srv, sock, s.hostname)
    c = Lines(sock)
    try:
        assert c.smtp_reply().startswith("220")
        c.send("EHLO client.example")
        ehlo = c.smtp_reply()
        if s.socket_type == "STARTTLS":
            assert "STARTTLS" in ehlo
            c.send("STARTTLS")
            assert c.smtp_reply().startswith("220")
            c = Lines(_tls(srv, sock, s.hostname))
            c.send("EHLO client.example")
            ehlo = c.smtp_reply()
        assert s.socket_type in ("SSL", "STARTTLS")  # never plain
        assert "AUTH" in ehlo and "PLAIN" in ehlo, ehlo
        token = base64.b64encode(f"\0{s.username}\0{password}".encode()).decode()
        c.send(f"AUTH PLAIN {token}")
        auth = c.smtp_reply()
        assert auth.startswith("235"), auth
        c.send(f"MAIL FROM:<{s.username}>")
        assert c.smtp_reply().startswith("250")
        c.send("RCPT TO:<friend@elsewhere.example>")
        reply = c.smtp_reply()
        c.send("QUIT")
        return reply
    finally:
        c.sock.close()


def use_pop3(srv: WebServer, s: ClientServer) -> str:
    assert s.hostname == PUBLIC_HOST
    sock = connect_public(s.port)
    if s.socket_type == "SSL":
        sock = _tls(srv, sock, s.hostname)
    c = Lines(sock)
    try:
        assert c.line().startswith("+OK")
        if s.socket_type == "STARTTLS":
            c.send("STLS")
            assert c.line().startswith("+OK")
            c = Lines(_tls(srv, sock, s.hostname))
        assert s.socket_type in ("SSL", "STARTTLS")
        c.send(f"USER {s.username}")
        assert c.line().startswith("+OK")
        c.send(f"PASS {PASSWORD}")
        reply = c.line()
        c.send("QUIT")
        return reply
    finally:
        c.sock.close()


@pytest.mark.parametrize(
    ("path", "host"),
    [
        (f"/mail/config-v1.1.xml?emailaddress={ALICE}", "autoconfig.pv.test"),
        ("/mail/config-v1.1.xml", "autoconfig.pv.test"),
        (f"/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress={ALICE}", "pv.test"),
        ("/.well-known/autoconfig/mail/config-v1.1.xml", "pv.test"),
    ],
)
def test_autoconfig_settings_work_against_the_live_listeners(
    live: WebServer, path: str, host: str
) -> None:
    r = live.get(path, headers={"Host": host})
    assert r.status == 200, r.text
    assert r.headers["Content-Type"].startswith("application/xml")
    assert validate_autoconfig(r.body) == []
    incoming, outgoing = read_as_client(r.body, ALICE)
    assert {(s.port, s.socket_type) for s in outgoing} == {
        (live.srv.port("submissions"), "SSL"),
        (live.srv.port("submission"), "STARTTLS"),
    }
    assert {(s.port, s.socket_type) for s in incoming} == {
        (live.srv.port("pop3s"), "SSL"),
        (live.srv.port("pop3"), "STARTTLS"),
    }
    assert live.srv.port("smtp") not in [s.port for s in outgoing]
    for s in outgoing:
        assert use_smtp(live, s).startswith("250"), s
    for s in incoming:
        assert use_pop3(live, s).startswith("+OK"), s
    doc = ET.fromstring(r.body).find("emailProvider/documentation")
    assert doc is not None and doc.get("url") == f"http://{host}/help"


def test_a_wrong_password_is_refused_with_the_same_settings(live: WebServer) -> None:
    """The settings check above can fail: the login really is checked."""
    _, outgoing = read_as_client(
        live.get(f"/mail/config-v1.1.xml?emailaddress={ALICE}").body, ALICE
    )
    with pytest.raises(AssertionError, match="535"):
        use_smtp(live, outgoing[0], password="wrong")


def test_autodiscover_settings_work_against_the_live_listeners(live: WebServer) -> None:
    request = (
        f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{mc.AD_REQUEST_NS}">'
        f"<Request><EMailAddress>{ALICE}</EMailAddress>"
        f"<AcceptableResponseSchema>{mc.AD_OUTLOOK_NS}</AcceptableResponseSchema>"
        "</Request></Autodiscover>"
    ).encode()
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        r = live.request("POST", path, body=request, headers={"Content-Type": "text/xml"})
        assert r.status == 200, r.text
        ns = {"o": mc.AD_OUTLOOK_NS}
        root = ET.fromstring(r.body)
        for proto in root.findall("o:Response/o:Account/o:Protocol", ns):
            kind = proto.findtext("o:Type", namespaces=ns)
            encryption = proto.findtext("o:Encryption", namespaces=ns)
            s = ClientServer(
                protocol=(kind or "").lower(),
                hostname=proto.findtext("o:Server", namespaces=ns) or "",
                port=int(proto.findtext("o:Port", namespaces=ns) or 0),
                socket_type="SSL" if encryption == "SSL" else "STARTTLS",
                username=proto.findtext("o:LoginName", namespaces=ns) or "",
                authentication="password-cleartext",
            )
            if kind == "SMTP":
                assert s.port != live.srv.port("smtp")
                assert use_smtp(live, s).startswith("250")
            else:
                assert kind == "POP3" and use_pop3(live, s).startswith("+OK")


def test_apple_profile_settings_work_against_the_live_listeners(live: WebServer) -> None:
    r = live.get(f"/mail/profile.mobileconfig?email={ALICE}")
    assert r.status == 200, r.text
    assert r.headers["Content-Type"].startswith("application/x-apple-aspen-config")
    assert 'filename="pv.test.mobileconfig"' in r.headers["Content-Disposition"]
    (account,) = plistlib.loads(r.body)["PayloadContent"]
    ports = {
        live.srv.port("submissions"): "SSL",
        live.srv.port("submission"): "STARTTLS",
        live.srv.port("pop3s"): "SSL",
        live.srv.port("pop3"): "STARTTLS",
    }
    out = account["OutgoingMailServerPortNumber"]
    inc = account["IncomingMailServerPortNumber"]
    smtp = ClientServer(
        "smtp", account["OutgoingMailServerHostName"], out, ports[out], ALICE, "password-cleartext"
    )
    pop = ClientServer(
        "pop3", account["IncomingMailServerHostName"], inc, ports[inc], ALICE, "password-cleartext"
    )
    assert use_smtp(live, smtp).startswith("250")
    assert use_pop3(live, pop).startswith("+OK")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/mail/config-v1.1.xml?emailaddress=bob@other.example", 404),
        ("/mail/config-v1.1.xml?emailaddress=not-an-address", 400),
        ("/mail/config-v1.1.xml?emailaddress=a@[127.0.0.1]", 404),
        ("/mail/profile.mobileconfig", 400),
        ("/mail/profile.mobileconfig?email=" + "a" * 300 + "@pv.test", 400),
        ("/mail/profile.mobileconfig?email=x@elsewhere.example", 404),
    ],
)
def test_addresses_outside_our_domains_get_a_clear_4xx(
    live: WebServer, path: str, status: int
) -> None:
    r = live.get(path, headers={"Host": "unknown.example"})
    assert r.status == status
    assert r.text.startswith(f"{status}:")


def test_autoconfig_for_a_host_that_is_not_ours_is_404(live: WebServer) -> None:
    r = live.get("/mail/config-v1.1.xml", headers={"Host": "autoconfig.other.example"})
    assert r.status == 404 and "other.example" in r.text


def test_no_secure_way_to_send_says_so(tmp_path: Path) -> None:
    srv = start_web_server(tmp_path, drop_listeners=("submission", "submissions"))
    try:
        r = srv.get(f"/mail/config-v1.1.xml?emailaddress={ALICE}")
        assert r.status == 503
        assert "no secure way to send" in r.text and "[listen] submission" in r.text
        assert b"<outgoingServer" not in r.body
        r = srv.get(f"/mail/profile.mobileconfig?email={ALICE}")
        assert r.status == 503
        request = (
            f"<Autodiscover><Request><EMailAddress>{ALICE}</EMailAddress></Request></Autodiscover>"
        )
        r = srv.request("POST", "/autodiscover/autodiscover.xml", body=request.encode())
        assert r.status == 503
        page = srv.get("/help", headers={"Accept-Language": "en"})
        assert page.status == 200
        assert "no secure way to send mail yet" in page.text
        assert str(srv.srv.port("smtp")) not in page.text
        assert "no mail settings are offered" in srv.srv.log()
    finally:
        srv.stop()


def test_tls_check_would_catch_a_wrong_host_name(live: WebServer) -> None:
    """The live checks verify the certificate against the advertised name."""
    sock = connect_public(live.srv.port("submissions"))
    with pytest.raises(ssl.SSLCertVerificationError):
        live.tls_context().wrap_socket(sock, server_hostname="wrong.pv.test")
    sock.close()


def test_documents_follow_the_config_after_sighup(tmp_path: Path) -> None:
    """Generated from the live config: a new public_host is served after a reload."""
    srv = start_web_server(tmp_path)
    try:
        before = srv.get(f"/mail/config-v1.1.xml?emailaddress={ALICE}").text
        assert f"<hostname>{PUBLIC_HOST}</hostname>" in before
        cfg = srv.srv.config_path
        cfg.write_text(cfg.read_text().replace(f'"{PUBLIC_HOST}"', '"smtp.pv.test"'))
        assert srv.srv.proc is not None
        srv.srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in srv.srv.log(), what="the reload")
        after = srv.get(f"/mail/config-v1.1.xml?emailaddress={ALICE}").text
        assert "<hostname>smtp.pv.test</hostname>" in after
        assert "smtp.pv.test" in srv.get("/help?lang=en").text
    finally:
        srv.stop()
