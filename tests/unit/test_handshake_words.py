"""The words of a failed handshake's log line, from the bytes a client sent and
the error OpenSSL raised (pure functions; the live cases are in
tests/e2e/test_tls_handshake_log_e2e.py)."""

from __future__ import annotations

import ssl

import pytest

from postvakt.server.handshake import describe_error, describe_sent, parse_client_hello


def client_hello(server_name: str | None, maximum: ssl.TLSVersion) -> bytes:
    """The first flight of a real OpenSSL client, taken from a memory BIO."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(
    ("name", "maximum", "version"),
    [
        ("mail.example.org", ssl.TLSVersion.TLSv1_3, 0x0304),
        ("mail.example.org", ssl.TLSVersion.TLSv1_2, 0x0303),
        (None, ssl.TLSVersion.TLSv1_3, 0x0304),
    ],
)
def test_a_real_client_hello_is_read(
    name: str | None, maximum: ssl.TLSVersion, version: int
) -> None:
    assert parse_client_hello(client_hello(name, maximum)) == (version, name)


def test_sent_in_words() -> None:
    hello = client_hello("mail.example.org", ssl.TLSVersion.TLSv1_3)
    assert describe_sent(hello) == "TLS ClientHello (up to TLS 1.3, SNI mail.example.org)"
    assert describe_sent(hello, ("*.example.org",)) == (
        "TLS ClientHello (up to TLS 1.3, SNI mail.example.org)"
    )
    assert describe_sent(hello, ("mx.example.net", "localhost")) == (
        "TLS ClientHello (up to TLS 1.3, SNI mail.example.org (not covered by our certificate))"
    )
    assert describe_sent(hello[:20]) == "a TLS ClientHello cut short after 20 bytes"
    assert (
        describe_sent(b"EHLO laptop.local\r\nMAIL FROM:<a@b>\r\n")
        == "plaintext 'EHLO laptop.local'"
    )
    assert describe_sent(b"GET / HTTP/1.1\r\n") == "plaintext 'GET / HTTP/1.1'"
    assert describe_sent(b"A" * 100).endswith("...'")
    assert describe_sent(b"\x15\x03\x03\x00\x02\x02\x30") == "a TLS alert"
    assert describe_sent(b"\x00\xff\x10") == "3 bytes that are neither TLS nor text (00 ff 10)"
    assert describe_sent(b"") == "nothing before closing the connection"
    assert describe_sent(None) == "nothing"


def test_garbage_that_looks_like_a_record_never_raises() -> None:
    for data in (b"\x16\x03\x01", b"\x16\x03\x01\x00\x05\x01", b"\x16\x03\x01" + b"\xff" * 60):
        assert describe_sent(data)


def test_errors_in_words() -> None:
    unknown_ca = ssl.SSLError(1, "tlsv1 alert unknown ca")
    unknown_ca.reason = "TLSV1_ALERT_UNKNOWN_CA"  # type: ignore[misc]
    assert "does not trust our certificate" in describe_error(unknown_ca, 30)
    odd = ssl.SSLError(1, "x")
    odd.reason = "SOMETHING_NEW"  # type: ignore[misc]
    assert describe_error(odd, 30) == "something new"
    assert describe_error(TimeoutError(), 30) == "no finished handshake within 30 s"
    assert "closed the connection" in describe_error(ConnectionResetError(), 30)
