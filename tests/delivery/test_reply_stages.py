"""Every stage of a transaction x every class of reply, against a scripted peer
on loopback: a recipient is sent only after a 2xx to the body (issue: a 252 to
MAIL or RCPT, or a 250 to DATA, was taken for a delivery and the body never sent)."""

from __future__ import annotations

import asyncio

import pytest
from smtp_peer import Peer

from postvakt import config as C
from postvakt.delivery.remote import RemoteDelivery, RemoteResult
from postvakt.delivery.smtpclient import MailParams, Outcome, RcptParams
from postvakt.delivery.source import MessageSource

MSG = MessageSource.from_bytes(b"Subject: stages\r\n\r\nthe body\r\n")
PASS = "pass"  # the stage lets the transaction go on

# (reply as the peer writes it, what it means at MAIL/RCPT, at DATA, after the dot)
REPLIES: list[tuple[str, str, str, str]] = [
    ("250 2.0.0 Ok", PASS, "deferred", PASS),
    ("250", PASS, "deferred", PASS),  # no text at all
    ("251 2.1.5 will forward", PASS, "deferred", PASS),
    ("252 2.1.5 cannot verify, will try", PASS, "deferred", PASS),
    ("250-first\r\n250 second", PASS, "deferred", PASS),
    ("354 go ahead", "deferred", PASS, "deferred"),
    ("354", "deferred", PASS, "deferred"),
    ("334 what", "deferred", "deferred", "deferred"),
    ("450 4.2.1 busy", "deferred", "deferred", "deferred"),
    ("421 4.3.2 closing", "deferred", "deferred", "deferred"),
    ("452 4.3.1 full", "deferred", "deferred", "deferred"),
    ("550 5.1.1 no", "bounced", "bounced", "bounced"),
    ("554 5.7.1", "bounced", "bounced", "bounced"),
    ("550-5.7.1 two\r\n550 5.7.1 lines", "bounced", "bounced", "bounced"),
    # Outside RFC 5321's grammar: never a delivery, never a bounce.
    ("2", "deferred", "deferred", "deferred"),
    ("25", "deferred", "deferred", "deferred"),
    ("", "deferred", "deferred", "deferred"),
    ("250-ok\r\n550 5.0.0 mixed", "deferred", "deferred", "deferred"),
    ("550-no\r\n250 mixed", "deferred", "deferred", "deferred"),
    ("354-go\r\n250 mixed", "deferred", "deferred", "deferred"),
    ("199 preliminary", "deferred", "deferred", "deferred"),
    ("600 6.0.0 beyond", "deferred", "deferred", "deferred"),
    ("260 odd digit", "deferred", "deferred", "deferred"),
    ("250ok", "deferred", "deferred", "deferred"),
    ("ok 250", "deferred", "deferred", "deferred"),
]

STAGES = ("MAIL", "RCPT", "DATA", ".")


@pytest.fixture(params=[True, False], ids=["pipelining", "lockstep"])
def ehlo(request: pytest.FixtureRequest) -> list[str]:
    """The peer's extensions: with PIPELINING the client sends MAIL, the RCPTs
    and DATA in one write (RFC 2920), without it one command per reply."""
    return ["PIPELINING", "8BITMIME"] if request.param else ["8BITMIME"]


def cfg(port: int) -> C.Config:
    return C.from_dict(
        {
            "hostname": "mx.pv.test",
            "data_dir": "/nonexistent",
            "domains": {"local": ["pv.test"]},
            "delivery": {"routes": {"x.example": f"127.0.0.1:{port}"}},
        }
    )


class NoDNS:
    async def mx(self, domain: str) -> list[tuple[int, str]]:
        raise AssertionError("no DNS in this test")

    async def addresses(self, host: str) -> list[str]:
        raise AssertionError("no DNS in this test")


def deliver(peer: Peer, rcpts: list[str]) -> list[RemoteResult]:
    async def go() -> list[RemoteResult]:
        await peer.start()
        rd = RemoteDelivery(cfg(peer.port), NoDNS())  # type: ignore[arg-type]
        rd.start()
        try:
            return await rd.deliver(
                "x.example",
                MailParams("a@pv.test", MSG.size),
                [RcptParams(r) for r in rcpts],
                MSG,
            )
        finally:
            await rd.close()
            await peer.close()

    return asyncio.run(go())


def expected(stage: str, reply: str) -> str:
    for text, at_mail_rcpt, at_data, at_dot in REPLIES:
        if text == reply:
            return {"MAIL": at_mail_rcpt, "RCPT": at_mail_rcpt, "DATA": at_data}.get(stage, at_dot)
    raise KeyError(reply)


@pytest.mark.parametrize("reply", [r[0] for r in REPLIES])
@pytest.mark.parametrize("stage", STAGES)
def test_stage_reply_gives_a_classified_result(stage: str, reply: str, ehlo: list[str]) -> None:
    peer = Peer(ehlo=ehlo, replies={stage: reply})
    [res] = deliver(peer, ["b@x.example"])
    want = expected(stage, reply)
    body_taken = bool(peer.transactions)
    if want == PASS:
        # Every other stage answers normally: the body went and was accepted.
        assert res.outcome is Outcome.SENT, res
        assert 200 <= res.reply.code < 300
        assert body_taken and peer.transactions[0].data.endswith(b"the body\r\n")
        return
    assert res.outcome is {"deferred": Outcome.DEFERRED, "bounced": Outcome.BOUNCED}[want], res
    # A failure carries a failure's reply: the log and a bounce never quote a 2xx.
    lo = 400 if want == "deferred" else 500
    assert lo <= res.reply.code < lo + 100, res
    if stage != ".":
        assert not body_taken  # the body was never sent, so never "sent"


def test_252_to_mail_and_rcpt_still_needs_the_body_accepted(ehlo: list[str]) -> None:
    """The report's case: 252 to MAIL and to RCPT, 250 to DATA: not sent."""
    peer = Peer(ehlo=ehlo, replies={"MAIL": "252 ok", "RCPT": "252 ok", "DATA": "250 2.0.0 Ok"})
    [res] = deliver(peer, ["b@x.example"])
    assert res.outcome is Outcome.DEFERRED
    assert (res.reply.code, res.reply.enhanced) == (451, "4.5.0")
    assert "unexpected reply to DATA" in res.reply.text and "250 2.0.0 Ok" in res.reply.text
    assert peer.transactions == []


def test_results_per_recipient(ehlo: list[str]) -> None:
    peer = Peer(
        ehlo=ehlo,
        replies={
            "RCPT:gone@x.example": "550 5.1.1 gone",
            "RCPT:later@x.example": "450 4.2.0 later",
            "RCPT:maybe@x.example": "252 2.1.5 maybe",
        },
    )
    res = deliver(peer, ["ok@x.example", "gone@x.example", "later@x.example", "maybe@x.example"])
    assert [r.outcome for r in res] == [
        Outcome.SENT,
        Outcome.BOUNCED,
        Outcome.DEFERRED,
        Outcome.SENT,
    ]
    assert [r.reply.code for r in res] == [250, 550, 450, 250]
    assert len(peer.transactions) == 1


def test_odd_rcpt_reply_fails_every_recipient_of_that_session(ehlo: list[str]) -> None:
    peer = Peer(ehlo=ehlo, replies={"RCPT:odd@x.example": "354 go"})
    res = deliver(peer, ["ok@x.example", "odd@x.example", "after@x.example"])
    assert [r.outcome for r in res] == [Outcome.DEFERRED] * 3
    assert all(r.reply.code == 451 for r in res)
    assert peer.transactions == []  # no body, though the pipelined DATA got its 354
    if "PIPELINING" not in ehlo:
        # One command per reply: nothing follows the odd one. (Pipelined, the
        # later RCPT went in the same write as the others, before any reply.)
        assert not any(c.startswith("RCPT TO:<after@") for c in peer.commands)


def test_refused_mail_fails_every_recipient_whatever_the_rcpts_got() -> None:
    """Pipelined, the RCPTs and DATA are sent before MAIL's reply is read: a
    peer that (against RFC 2920) accepts them after refusing MAIL still gets
    no body, and every recipient has MAIL's answer."""
    peer = Peer(replies={"MAIL": "550 5.7.1 sender refused"})
    res = deliver(peer, ["a@x.example", "b@x.example"])
    assert [(r.outcome, r.reply.text) for r in res] == [(Outcome.BOUNCED, "sender refused")] * 2
    assert peer.transactions == []
    assert [c.split(":")[0] for c in peer.commands[1:]] == [
        "MAIL FROM",
        "RCPT TO",
        "RCPT TO",
        "DATA",
    ]


def test_final_reply_refused_fails_only_accepted_recipients(ehlo: list[str]) -> None:
    peer = Peer(
        ehlo=ehlo,
        replies={"RCPT:gone@x.example": "550 5.1.1 gone", ".": "554 5.6.0 body refused"},
    )
    res = deliver(peer, ["ok@x.example", "gone@x.example"])
    assert [(r.outcome, r.reply.text) for r in res] == [
        (Outcome.BOUNCED, "body refused"),
        (Outcome.BOUNCED, "gone"),
    ]


@pytest.mark.parametrize("greeting", ["554 5.7.1 go away", "250 hello", "421 busy", "2"])
def test_a_peer_that_will_not_talk_defers(greeting: str) -> None:
    peer = Peer(greeting=greeting)
    [res] = deliver(peer, ["b@x.example"])
    assert res.outcome is Outcome.DEFERRED and 400 <= res.reply.code < 500, res
    assert peer.transactions == []
