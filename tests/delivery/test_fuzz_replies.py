"""Fuzz of the delivery client's reply handling, against a real peer on loopback
that answers each line it gets with the next of a generated script of replies
(odd codes, mixed multi-line replies, junk, early close).

Invariant: a classified delivery result per recipient, never an exception;
SENT only for a recipient the peer accepted in a transaction whose body it
received whole and answered with 2xx; a failure quotes a 4xx (DEFERRED) or
5xx (BOUNCED), never a 2xx.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from postvakt import config as C
from postvakt.delivery import smtpclient
from postvakt.delivery.remote import RemoteDelivery, RemoteResult
from postvakt.delivery.smtpclient import MailParams, Outcome, RcptParams
from postvakt.delivery.source import MessageSource

MSG = MessageSource.from_bytes(b"Subject: fuzz\r\n\r\n.dot\r\nbody\r\n")
RCPTS = ["a@x.example", "b@x.example", "c@x.example"]

codes = st.sampled_from(
    ["220", "250", "251", "252", "221", "354", "334", "421", "450", "451", "452"]
    + ["550", "552", "553", "554", "555", "2", "25", "", "199", "600", "260", "2500", "abc"]
)
words = st.sampled_from(
    ["ok", "2.0.0", "4.2.0", "5.1.1", "STARTTLS", "SIZE 5", "SIZE", "DSN", "8BITMIME"]
    + ["SMTPUTF8", "PIPELINING", "", "é", "\t", "-", " "]
)
text = st.lists(words, max_size=3).map(" ".join)


@st.composite
def reply_unit(draw: st.DrawFn) -> bytes:
    """One answer: usually a reply of 1-3 lines, sometimes junk."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=30)).replace(b"\n", b"") + b"\r\n"
    n = draw(st.integers(1, 3))
    first = draw(codes)
    lines = []
    for i in range(n):
        code = first if draw(st.integers(0, 5)) else draw(codes)
        sep = "-" if i < n - 1 else draw(st.sampled_from([" ", " ", ""]))
        if i == n - 1 and draw(st.integers(0, 9)) == 0:
            sep = "-"  # a reply that never ends: the peer hangs up after it
        lines.append(
            f"{code}{sep}{draw(text)}".rstrip() if sep == "" else f"{code}{sep}{draw(text)}"
        )
    end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    return b"".join(x.encode() + end for x in lines)


HAPPY = [b"220 peer\r\n", b"250-peer\r\n250 DSN\r\n", b"250 ok\r\n"]


@st.composite
def script(draw: st.DrawFn) -> tuple[list[bytes], int]:
    """A session that would deliver, with some answers replaced or added; or pure noise."""
    n = draw(st.integers(1, 3))
    if draw(st.integers(0, 3)) == 0:
        return draw(st.lists(reply_unit(), min_size=1, max_size=14)), n
    units = [*HAPPY, *[b"250 2.1.5 ok\r\n"] * n, b"354 go\r\n", b"250 2.0.0 queued\r\n"]
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(units)))
        if draw(st.booleans()) and i < len(units):
            units[i] = draw(reply_unit())
        else:
            units.insert(i, draw(reply_unit()))
    return units, n


@dataclass
class ScriptedPeer:
    units: list[bytes]
    events: list[tuple[str, bytes]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = iter(self.units)
        body = False
        try:
            if not await self._answer(writer, script, b"<greeting>"):
                return
            while True:
                line = await reader.readline()
                if not line:
                    return
                if body:
                    if line == b".\r\n":
                        body = False
                        if not await self._answer(writer, script, b"<end of data>"):
                            return
                    continue
                cmd = line.rstrip(b"\r\n")
                unit = await self._answer(writer, script, cmd)
                if unit is None:
                    return
                # A 354 to DATA, on one line or several (`354-...` then `354 ...`),
                # starts the body, as it does for the client.
                if cmd == b"DATA" and re.match(rb"(354-[^\r\n]*\r?\n)*354( [^\r\n]*)?\r?\n", unit):
                    body = True
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    async def _answer(
        self, writer: asyncio.StreamWriter, script: object, what: bytes
    ) -> bytes | None:
        unit = next(script, None)  # type: ignore[call-overload]
        if unit is None:
            return None  # out of answers: hang up
        self.events.append((what.decode("utf-8", "replace"), unit))
        writer.write(unit)
        await writer.drain()
        last = unit.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
        if re.match(rb"\d{3}-", last):
            return None  # a continuation line last: hang up rather than wait
        return unit


def _accepted(peer: ScriptedPeer, rcpt: str) -> bool:
    """Did the peer take `rcpt` in a transaction whose body it got and accepted?"""
    ok_rcpt = False
    for what, unit in peer.events:
        if what.startswith("MAIL"):
            ok_rcpt = False
        elif what.startswith(f"RCPT TO:<{rcpt}>") and unit[:1] == b"2":
            ok_rcpt = True
        elif what == "<end of data>" and ok_rcpt and unit[:1] == b"2":
            return True
    return False


def config(port: int) -> C.Config:
    return C.from_dict(
        {
            "hostname": "mx.pv.test",
            "data_dir": "/nonexistent",
            "domains": {"local": ["pv.test"]},
            "delivery": {"routes": {"x.example": f"127.0.0.1:{port}"}, "tls": "none"},
        }
    )


async def attempt(peer: ScriptedPeer, n: int) -> list[RemoteResult]:
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rd = RemoteDelivery(config(port), resolver=None)  # type: ignore[arg-type]
    rd.start()
    try:
        return await rd.deliver(
            "x.example", MailParams("s@pv.test", MSG.size), [RcptParams(r) for r in RCPTS[:n]], MSG
        )
    finally:
        await rd.close()
        server.close()
        await server.wait_closed()


@given(script())
# Found by hypothesis: a 354 on two lines is a 354 for the client and the peer alike.
@example(
    units_and_n=(
        [
            b"220 peer\r\n",
            b"250-peer\r\n250 DSN\r\n",
            b"250 ok\r\n",
            b"250 2.1.5 ok\r\n",
            b"354-\r\n354 \r\n",
            b"250 2.0.0 queued\r\n",
        ],
        1,
    )
)
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_any_replies_give_classified_results(
    monkeypatch: pytest.MonkeyPatch, units_and_n: tuple[list[bytes], int]
) -> None:
    units, n = units_and_n
    # A script can leave both sides waiting (a reply read early, then none):
    # the client's own timeouts end that, only shorter here.
    for name in ("GREETING", "COMMAND", "DATA_INIT", "DATA_BLOCK", "DATA_END"):
        monkeypatch.setattr(smtpclient, f"TIMEOUT_{name}", 2.0)
    peer = ScriptedPeer(units)
    results = asyncio.run(attempt(peer, n))
    assert len(results) == n
    for rcpt, res in zip(RCPTS, results, strict=False):
        assert isinstance(res.outcome, Outcome)
        event(res.outcome.value)
        if res.outcome is Outcome.SENT:
            assert 200 <= res.reply.code < 300, res
            assert _accepted(peer, rcpt), (res, peer.events)
        elif res.outcome is Outcome.BOUNCED:
            assert 500 <= res.reply.code < 600, res
        else:
            assert 400 <= res.reply.code < 500, res
