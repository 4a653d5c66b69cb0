"""The outbound client against real smtp-sink and a scripted peer."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import trustme
from smtp_peer import DROP, Peer

from postvakt import config as C
from postvakt.delivery import smtpclient
from postvakt.delivery.remote import RemoteDelivery
from postvakt.delivery.smtpclient import (
    Hop,
    MailParams,
    Outcome,
    RcptParams,
    SMTPClient,
    SMTPClientError,
    to_wire,
    xtext,
)
from postvakt.delivery.source import MessageSource
from postvakt.reply import Reply, parse_reply
from support import free_port

MSG = MessageSource.from_bytes(b"Received: from a\r\nSubject: test\r\n\r\n.leading dot\r\nline\r\n")


class NoDNS:
    async def mx(self, domain: str) -> list[tuple[int, str]]:
        raise AssertionError("no DNS in this test")

    async def addresses(self, host: str) -> list[str]:
        raise AssertionError("no DNS in this test")


def cfg(routes: dict[str, str] | None = None, **delivery: object) -> C.Config:
    return C.from_dict(
        {
            "hostname": "mx.pv.test",
            "data_dir": "/nonexistent",
            "domains": {"local": ["pv.test"]},
            "delivery": {"routes": routes or {}, **delivery},
        }
    )


@pytest.mark.parametrize(
    ("raw", "wire"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\nb", b"a\r\nb\r\n"),  # bare LF and no final newline
        (b"a\rb\r\n", b"a\r\nb\r\n"),  # bare CR
        (b".x\r\n", b"..x\r\n"),  # dot first in the message
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n"),  # a lone dot must not end DATA
        (b"a\n.\nb\n", b"a\r\n..\r\nb\r\n"),
        (b"", b""),
    ],
)
def test_to_wire_crlf_and_dot_stuffing(raw: bytes, wire: bytes) -> None:
    assert to_wire(raw) == wire


def test_to_wire_never_carries_bare_cr_or_lf() -> None:
    out = to_wire(b"x\ry\nz\r\r\n\n.\r.\n")
    assert out.replace(b"\r\n", b"").count(b"\r") == 0
    assert out.replace(b"\r\n", b"").count(b"\n") == 0
    assert b"\r\n.\r\n" not in out


def test_xtext_keeps_escapes_and_escapes_the_rest() -> None:
    assert xtext("rfc822;a+2Bb@x") == "rfc822;a+2Bb@x"  # as the client sent it
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext("é") == "+C3+A9"


def test_parse_reply_multiline_with_enhanced_code() -> None:
    r = parse_reply(["550-5.1.1 first", "550 5.1.1 second"])
    assert r == Reply(550, "5.1.1", "first\nsecond")
    assert parse_reply(["250 ok"]) == Reply(250, "", "ok")
    # An enhanced code of the wrong class is text, not a code.
    assert parse_reply(["450 5.1.1 odd"]) == Reply(450, "", "5.1.1 odd")


def hop(port: int) -> Hop:
    return Hop("127.0.0.1", "127.0.0.1", port)


def test_delivery_to_smtp_sink(smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink()

    async def go() -> list[Reply]:
        c = await SMTPClient.connect(hop(sink.port), "mx.pv.test", timeout=5)
        try:
            assert "DSN" in c.extensions and "8BITMIME" in c.extensions
            return await c.transaction(
                MailParams("alice@pv.test", MSG.size),
                [RcptParams("bob@other.example"), RcptParams("carol@other.example")],
                MSG,
            )
        finally:
            await c.quit()

    replies = asyncio.run(go())
    assert [r.reply.code for r in replies] == [250, 250]
    [dump] = sink.messages()
    assert "X-Mail-Args: <alice@pv.test>" in dump
    assert "X-Rcpt-Args: <bob@other.example>" in dump
    assert "X-Rcpt-Args: <carol@other.example>" in dump
    assert "\nReceived: from a\nSubject: test\n\n.leading dot\nline\n" in dump


@pytest.mark.parametrize(("option", "code"), [("-r", 450), ("-f", 500)])
def test_sink_rejecting_rcpt(smtp_sink, option: str, code: int) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink(option, "RCPT")

    async def go() -> list[Reply]:
        c = await SMTPClient.connect(hop(sink.port), "mx.pv.test", timeout=5)
        try:
            return await c.transaction(
                MailParams("a@pv.test", 10), [RcptParams("b@x.example")], MSG
            )
        finally:
            await c.quit()

    [r] = asyncio.run(go())
    assert r.reply.code == code
    assert sink.messages() == []


def test_connect_refused_is_temporary() -> None:
    async def go() -> None:
        await SMTPClient.connect(hop(free_port()), "mx.pv.test", timeout=5)

    with pytest.raises(SMTPClientError) as e:
        asyncio.run(go())
    assert e.value.reply.code == 451 and e.value.reply.enhanced == "4.4.1"
    assert "Connection refused" in e.value.reply.text


@pytest.mark.parametrize("lines", [[], [b"250-peer.test\r\n"]], ids=["silent", "half a reply"])
def test_a_reply_that_does_not_come_times_out(
    monkeypatch: pytest.MonkeyPatch, lines: list[bytes]
) -> None:
    """A peer that greets, then leaves EHLO unanswered (or half answered):
    the wait ends at the command's timeout with a temporary failure, though
    the greeting's much longer deadline was set first (the connection's one
    timer is moved to the earlier deadline)."""
    monkeypatch.setattr(smtpclient, "TIMEOUT_GREETING", 60.0)
    monkeypatch.setattr(smtpclient, "TIMEOUT_COMMAND", 0.2)

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 peer.test ESMTP\r\n" + b"".join(lines))
        await reader.read()  # until the client gives up
        writer.close()

    async def go() -> None:
        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            # The guard fails the test if the 60 s deadline were the one kept.
            await asyncio.wait_for(SMTPClient.connect(hop(port), "mx.pv.test", timeout=5), 20)
        finally:
            server.close()
            await server.wait_closed()

    with pytest.raises(SMTPClientError) as e:
        asyncio.run(go())
    assert (e.value.reply.code, e.value.reply.enhanced) == (451, "4.4.2")
    assert "timeout waiting for reply" in e.value.reply.text


def run_peer(peer: Peer, body) -> object:  # type: ignore[no-untyped-def]
    async def go() -> object:
        await peer.start()
        try:
            return await body(peer)
        finally:
            await peer.close()

    return asyncio.run(go())


def test_helo_fallback_when_ehlo_refused() -> None:
    peer = Peer(replies={"EHLO": "502 5.5.2 what"})

    async def body(p: Peer) -> list[Reply]:
        c = await SMTPClient.connect(hop(p.port), "mx.pv.test", timeout=5)
        assert c.extensions == {}
        r = await c.transaction(MailParams("a@pv.test", 10), [RcptParams("b@x.example")], MSG)
        await c.quit()
        return r

    assert [r.reply.code for r in run_peer(peer, body)] == [250]  # type: ignore[attr-defined]
    assert peer.commands[:2] == ["EHLO mx.pv.test", "HELO mx.pv.test"]
    assert peer.transactions[0].mail == "MAIL FROM:<a@pv.test>"  # no ESMTP params after HELO


def test_per_recipient_results_and_data_reply() -> None:
    peer = Peer(
        replies={
            "RCPT:bad@x.example": "550 5.1.1 no such user",
            "RCPT:later@x.example": "451 4.3.0 try later",
        }
    )

    async def body(p: Peer) -> list[Reply]:
        c = await SMTPClient.connect(hop(p.port), "mx.pv.test", timeout=5)
        r = await c.transaction(
            MailParams("a@pv.test", 10),
            [
                RcptParams("good@x.example"),
                RcptParams("bad@x.example"),
                RcptParams("later@x.example"),
            ],
            MSG,
        )
        await c.quit()
        return r

    replies = run_peer(peer, body)
    assert [(r.reply.code, r.reply.enhanced) for r in replies] == [
        (250, "2.0.0"),
        (550, "5.1.1"),
        (451, "4.3.0"),
    ]  # type: ignore[attr-defined]
    assert len(peer.transactions) == 1
    assert peer.transactions[0].data.endswith(b"\r\n..leading dot\r\nline\r\n")


def test_dsn_parameters_passed_on_only_when_offered() -> None:
    mail = MailParams("a@pv.test", 10, ret="HDRS", envid="env id+2B1")
    rcpt = RcptParams("b@x.example", notify=("SUCCESS", "FAILURE"), orcpt="rfc822;b+2Bx@x.example")

    async def body(p: Peer) -> None:
        c = await SMTPClient.connect(hop(p.port), "mx.pv.test", timeout=5)
        await c.transaction(mail, [rcpt], MSG)
        await c.quit()

    with_dsn = Peer(ehlo=["DSN"])
    run_peer(with_dsn, body)
    t = with_dsn.transactions[0]
    assert t.mail == "MAIL FROM:<a@pv.test> RET=HDRS ENVID=env+20id+2B1"
    assert t.rcpts == ["RCPT TO:<b@x.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@x.example"]
    without = Peer(ehlo=[])
    run_peer(without, body)
    t = without.transactions[0]
    assert t.mail == "MAIL FROM:<a@pv.test>"
    assert t.rcpts == ["RCPT TO:<b@x.example>"]


def test_smtputf8_message_to_peer_without_it_bounces_5_6_7() -> None:
    peer = Peer(ehlo=["8BITMIME"])

    async def body(p: Peer) -> list[Reply]:
        c = await SMTPClient.connect(hop(p.port), "mx.pv.test", timeout=5)
        r = await c.transaction(
            MailParams("jörg@pv.test", 10, smtputf8=True), [RcptParams("b@x.example")], MSG
        )
        await c.quit()
        return r

    [r] = run_peer(peer, body)  # type: ignore[misc]
    assert (r.reply.code, r.reply.enhanced) == (550, "5.6.7")
    assert peer.transactions == []
    assert not any(c.startswith("MAIL") for c in peer.commands)


def test_body_8bitmime_declared_when_offered() -> None:
    peer = Peer(ehlo=["8BITMIME", "SMTPUTF8"])

    async def body(p: Peer) -> None:
        c = await SMTPClient.connect(hop(p.port), "mx.pv.test", timeout=5)
        await c.transaction(
            MailParams("jörg@pv.test", 10, smtputf8=True, body="8BITMIME"),
            [RcptParams("b@x.example")],
            MessageSource.from_bytes("Subject: grüße\r\n\r\nä\r\n".encode()),
        )
        await c.quit()

    run_peer(peer, body)
    assert peer.transactions[0].mail == "MAIL FROM:<jörg@pv.test> BODY=8BITMIME SMTPUTF8"


@pytest.fixture(scope="module")
def tls_server_context() -> ssl.SSLContext:
    ca = trustme.CA()
    cert = ca.issue_cert("peer.test")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


def test_opportunistic_starttls(tls_server_context: ssl.SSLContext) -> None:
    peer = Peer(tls=tls_server_context)

    async def body(p: Peer) -> bool:
        c = await SMTPClient.connect(hop(p.port), "mx.pv.test", timeout=5)
        await c.transaction(MailParams("a@pv.test", 10), [RcptParams("b@x.example")], MSG)
        await c.quit()
        return c.tls

    assert run_peer(peer, body) is True
    assert peer.commands[:3] == ["EHLO mx.pv.test", "STARTTLS", "EHLO mx.pv.test"]
    assert len(peer.transactions) == 1


def test_failed_handshake_after_starttls_defers_never_clear_text() -> None:
    # The peer offers STARTTLS and says 220, then speaks no TLS at all.
    broken = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    peer = Peer(tls=broken)  # no certificate loaded: the handshake fails

    async def body(p: Peer) -> None:
        await SMTPClient.connect(hop(p.port), "mx.pv.test", timeout=5)

    with pytest.raises(SMTPClientError) as e:
        run_peer(peer, body)
    assert (e.value.reply.code, e.value.reply.enhanced) == (451, "4.7.0")
    assert not any(c.startswith("MAIL") for c in peer.commands)


def test_starttls_refused_continues_in_clear(tls_server_context: ssl.SSLContext) -> None:
    peer = Peer(tls=tls_server_context, replies={"STARTTLS": "454 4.7.0 TLS not available"})

    async def body(p: Peer) -> bool:
        c = await SMTPClient.connect(hop(p.port), "mx.pv.test", timeout=5)
        await c.transaction(MailParams("a@pv.test", 10), [RcptParams("b@x.example")], MSG)
        await c.quit()
        return c.tls

    assert run_peer(peer, body) is False
    assert len(peer.transactions) == 1


def test_connection_reuse_and_one_transaction_per_domain() -> None:
    peer = Peer()

    async def body(p: Peer) -> None:
        rd = RemoteDelivery(cfg({"x.example": f"127.0.0.1:{p.port}"}), NoDNS())
        rd.start()
        try:
            for i in range(3):
                res = await rd.deliver(
                    "x.example",
                    MailParams("a@pv.test", 10),
                    [RcptParams(f"u{i}@x.example"), RcptParams(f"v{i}@x.example")],
                    MSG,
                )
                assert [r.reply.code for r in res] == [250, 250]
                assert res[0].relay == f"127.0.0.1[127.0.0.1]:{p.port}"
        finally:
            await rd.close()

    run_peer(peer, body)
    assert peer.connections == 1
    assert len(peer.transactions) == 3
    assert [len(t.rcpts) for t in peer.transactions] == [2, 2, 2]


@pytest.mark.parametrize("rset", ["421 4.3.2 shutting down", DROP], ids=["421", "dropped"])
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
def test_an_idle_connection_that_fails_its_rset_is_replaced(pipelining: bool, rset: str) -> None:
    """A connection taken from the idle ones is probed with RSET (pipelined:
    in the same write as MAIL, RCPT and DATA). When the probe fails, nothing
    of that transaction counts: the message goes on a new connection, neither
    deferred nor sent on the stale one."""
    peer = Peer(ehlo=["PIPELINING"] if pipelining else [], replies={"RSET": rset})

    async def body(p: Peer) -> list[Outcome]:
        rd = RemoteDelivery(cfg({"x.example": f"127.0.0.1:{p.port}"}), NoDNS())
        try:
            outcomes = []
            for i in range(2):
                [res] = await rd.deliver(
                    "x.example", MailParams("a@pv.test", 10), [RcptParams(f"u{i}@x.example")], MSG
                )
                outcomes.append(res.outcome)
            return outcomes
        finally:
            await rd.close()

    assert run_peer(peer, body) == [Outcome.SENT, Outcome.SENT]
    assert peer.connections == 2
    assert [t.rcpts for t in peer.transactions] == [
        ["RCPT TO:<u0@x.example>"],
        ["RCPT TO:<u1@x.example>"],
    ]


def test_concurrency_limit_per_destination() -> None:
    peer = Peer(replies={})
    active = 0
    seen = 0

    async def body(p: Peer) -> None:
        nonlocal active, seen
        orig = p._handle

        async def counting(reader, writer):  # type: ignore[no-untyped-def]
            nonlocal active, seen
            active += 1
            seen = max(seen, active)
            await asyncio.sleep(0.05)
            try:
                await orig(reader, writer)
            finally:
                active -= 1

        await p.close()
        p.server = await asyncio.start_server(counting, "127.0.0.1", p.port)
        rd = RemoteDelivery(
            cfg({"x.example": f"127.0.0.1:{p.port}"}, concurrency_per_destination=2), NoDNS()
        )
        rd.start()
        try:
            await asyncio.gather(
                *(
                    rd.deliver(
                        "x.example",
                        MailParams("a@pv.test", 10),
                        [RcptParams(f"u{i}@x.example")],
                        MSG,
                    )
                    for i in range(8)
                )
            )
        finally:
            await rd.close()

    run_peer(peer, body)
    assert len(peer.transactions) == 8
    assert seen <= 2


def test_452_too_many_recipients_gets_further_transactions() -> None:
    """A peer that takes two recipients per transaction: all five arrive."""
    peer = Peer(max_rcpts=2)

    async def body(p: Peer) -> list[int]:
        rd = RemoteDelivery(cfg({"x.example": f"127.0.0.1:{p.port}"}), NoDNS())
        try:
            res = await rd.deliver(
                "x.example",
                MailParams("a@pv.test", 10),
                [RcptParams(f"u{i}@x.example") for i in range(5)],
                MSG,
            )
        finally:
            await rd.close()
        return [r.reply.code for r in res]

    assert run_peer(peer, body) == [250] * 5
    assert [len(t.rcpts) for t in peer.transactions] == [2, 2, 1]
    assert peer.connections == 1
