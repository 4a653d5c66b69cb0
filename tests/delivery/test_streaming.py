"""Bodies in pieces: the Maildir writer and the DATA encoder give what the whole
message would give, whatever the split, and never hold the whole message;
Maildir names carry their sizes (,S= and ,W=) so POP3 lists without reading."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path

import dkim
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_peer import Peer

from postvakt.delivery.maildir import LFConverter, deliver
from postvakt.delivery.smtpclient import (
    LINE_LENGTH_LIMIT,
    Hop,
    MailParams,
    Outcome,
    RcptParams,
    SMTPClient,
    WireEncoder,
    break_long_lines,
    to_wire,
)
from postvakt.delivery.source import CHUNK, MessageSource
from postvakt.mailauth.signing import generate_pem, key_from_pem, sign
from postvakt.mailbox.maildir import MaildirMailbox
from postvakt.pop3 import wire_size

# Bytes rich in line ends and dots, where the edge cases live.
messy = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a", b"..", b" ", b"\xc3\xa9", b"x" * 700]),
    max_size=60,
).map(b"".join)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


@given(messy, st.lists(st.integers(min_value=0), max_size=8))
@settings(max_examples=300, deadline=None)
def test_lf_converter_in_pieces_equals_whole(data: bytes, cuts: list[int]) -> None:
    lf = LFConverter()
    out = b"".join(lf.feed(p) for p in split(data, cuts)) + lf.end()
    assert out == data.replace(b"\r\n", b"\n")
    assert lf.size == len(out)
    assert lf.wire == wire_size(out)  # what POP3 computes from the file


def _unbreak(wire: bytes) -> bytes:
    return wire.replace(b"\r\n ", b"")


@given(messy, st.lists(st.integers(min_value=0), max_size=8), st.sampled_from([0, 5, 998]))
@settings(max_examples=300, deadline=None)
def test_wire_encoder_in_pieces_equals_whole(data: bytes, cuts: list[int], limit: int) -> None:
    enc = WireEncoder(limit)
    out = b"".join(enc.feed(p) for p in split(data, cuts)) + enc.end()
    assert out == to_wire(data, limit)
    # CRLF only, no line that would end DATA, each line within the limit.
    assert out.replace(b"\r\n", b"").count(b"\r") == 0
    assert out.replace(b"\r\n", b"").count(b"\n") == 0
    assert not out.startswith(b".\r\n") and b"\r\n.\r\n" not in out
    if limit:
        assert all(len(line) <= limit for line in out.split(b"\r\n"))
        # Broken lines join back into the unbroken form (space-continued pieces).
        if b" " not in data:
            assert _unbreak(out) == to_wire(data, 0)


def _reference_wire(data: bytes, limit: int) -> bytes:
    """The DATA payload by the rules, written out plainly: every line end
    CRLF, a leading dot doubled, a line over `limit` broken by CRLF SPACE
    (the first piece `limit` octets, each further one `limit - 1` after its
    space), and a last line without an end given one."""
    if not data:
        return b""
    lines = re.split(rb"\r\n|\r|\n", data)
    if lines[-1] == b"":
        lines.pop()
    out = []
    for line in lines:
        if line.startswith(b"."):
            line = b"." + line
        if limit and len(line) > limit:
            rest = range(limit, len(line), limit - 1)
            line = b"\r\n ".join([line[:limit], *(line[i : i + limit - 1] for i in rest)])
        out.append(line + b"\r\n")
    return b"".join(out)


# Mail as it mostly is: CRLF lines of text, now and then a dot, a long line or a bare LF.
plain = st.lists(
    st.sampled_from([b"Subject: x", b"text .", b".", b"", b"y" * 1200, b"a\nb"]), max_size=30
).map(lambda lines: b"\r\n".join(lines) + b"\r\n")


@given(
    st.one_of(messy, plain),
    st.lists(st.integers(min_value=0), max_size=8),
    st.sampled_from([0, 5, 998]),
)
@settings(max_examples=500, deadline=None)
def test_wire_encoder_follows_the_rules_in_any_pieces(
    data: bytes, cuts: list[int], limit: int
) -> None:
    """Whatever the pieces, whether each goes out as it is or line by line."""
    enc = WireEncoder(limit)
    out = b"".join(enc.feed(p) for p in split(data, cuts)) + enc.end()
    assert out == _reference_wire(data, limit)


def test_long_line_is_broken_with_crlf_space_like_postfix() -> None:
    line = b"<p>" + b"y" * 2500 + b"</p>"
    out = to_wire(b"Subject: x\r\n\r\n" + line + b"\r\n")
    lines = out.split(b"\r\n")
    assert [len(x) for x in lines[2:-1]] == [998, 998, 513]
    assert lines[3].startswith(b" y") and lines[4].endswith(b"</p>")
    assert b"".join([lines[2], *(x[1:] for x in lines[3:-1])]) == line
    # A line of exactly 998 octets stays whole.
    assert to_wire(b"z" * LINE_LENGTH_LIMIT) == b"z" * LINE_LENGTH_LIMIT + b"\r\n"


def test_relayed_long_line_reaches_the_peer_broken_within_1000_octets() -> None:
    long_line = b"L" * 5000
    msg = MessageSource.from_bytes(b"Subject: long\r\n\r\n" + long_line + b"\r\nend\r\n")
    peer = Peer()

    async def go() -> list[Outcome]:
        await peer.start()
        try:
            c = await SMTPClient.connect(Hop("p", "127.0.0.1", peer.port), "mx.pv.test", timeout=5)
            res = await c.transaction(
                MailParams("a@pv.test", msg.size), [RcptParams("b@x.example")], msg
            )
            await c.quit()
            return [r.outcome for r in res]
        finally:
            await peer.close()

    assert asyncio.run(go()) == [Outcome.SENT]
    data = peer.transactions[0].data
    assert all(len(x) <= LINE_LENGTH_LIMIT for x in data.split(b"\r\n"))
    assert b"\r\n" + long_line[:998] + b"\r\n " in data
    assert _unbreak(data).endswith(long_line + b"\r\nend\r\n")


def test_maildir_keeps_long_lines_whole_and_names_its_sizes(tmp_path: Path) -> None:
    body = b"Subject: sizes\r\n\r\n" + b"w" * 5000 + b"\r\nbare lf\nbare cr\rend"
    path = deliver(tmp_path / "md", body, return_path="a@pv.test", delivered_to="b@pv.test")
    raw = path.read_bytes()
    assert b"\n" + b"w" * 5000 + b"\n" in raw
    m = re.fullmatch(r".+,S=(\d+),W=(\d+)", path.name)
    assert m, path.name
    assert int(m.group(1)) == len(raw) == os.stat(path).st_size
    assert int(m.group(2)) == wire_size(raw)
    # POP3 takes the size from the name: a login lists without reading the file
    # (emptied here behind its back, the listed size is still the name's).
    path.write_bytes(b"")
    box = MaildirMailbox.open(tmp_path / "md")
    try:
        [info] = box.infos()
        assert info.size == wire_size(raw)
    finally:
        box.close()


def test_maildir_from_a_file_in_chunks(tmp_path: Path) -> None:
    """A message several chunks long, from a file descriptor, as the manager hands it over."""
    head = b"Subject: big\r\n\r\n"
    body = b"".join(b"line %d .x\r\n" % i for i in range(3 * CHUNK // 10))
    f = tmp_path / "queued"
    f.write_bytes(b"junk-before" + head + body + b"junk-after")
    fd = os.open(f, os.O_RDONLY)
    try:
        src = MessageSource(head, fd, len(b"junk-before") + len(head), f.stat().st_size - 10)
        path = deliver(tmp_path / "md", src, return_path="a@pv.test", delivered_to="b@pv.test")
    finally:
        os.close(fd)
    raw = path.read_bytes()
    expect = b"Return-Path: <a@pv.test>\nDelivered-To: b@pv.test\n" + (head + body).replace(
        b"\r\n", b"\n"
    )
    assert raw == expect
    assert path.name.endswith(f",S={len(raw)},W={wire_size(raw)}")


@given(messy)
@settings(max_examples=100, deadline=None)
def test_source_from_a_file_gives_its_bytes_back(data: bytes) -> None:
    with tempfile.TemporaryFile() as f:
        f.write(b"p" + data + b"q")
        f.flush()
        src = MessageSource(b"head", f.fileno(), 1, 1 + len(data))
        assert src.size == 4 + len(data)
        assert b"".join(src.chunks()) == b"head" + data

        async def collect() -> bytes:
            return b"".join([p async for p in src.achunks()])

        assert asyncio.run(collect()) == b"head" + data


@given(messy)
@settings(max_examples=100, deadline=None)
def test_source_from_memory_gives_the_same_bytes_as_from_a_file(data: bytes) -> None:
    """A small queue file is read whole (`spool.WHOLE_READ`): its body is a
    range of bytes in memory, which must read as the same range of the file."""
    whole = b"p" + data + b"q"
    src = MessageSource(b"head", None, 1, 1 + len(data), body=whole)
    assert src.size == 4 + len(data)
    assert b"".join(src.chunks()) == b"head" + data

    async def collect() -> bytes:
        return b"".join([p async for p in src.achunks()])

    assert asyncio.run(collect()) == b"head" + data


@given(messy)
@settings(max_examples=200, deadline=None)
def test_broken_before_signing_is_what_the_wire_carries(data: bytes) -> None:
    """Signed mail is broken before the signature: sending it breaks nothing more."""
    broken = break_long_lines(data)
    if broken is None:
        assert max(map(len, to_wire(data, 0).split(b"\r\n"))) <= LINE_LENGTH_LIMIT
        return
    enc = WireEncoder()
    again = enc.feed(broken) + enc.end()
    assert enc.broken == 0 and again == to_wire(data)


def test_signed_long_line_verifies_after_the_break() -> None:
    key = key_from_pem(generate_pem("rsa"), "pv.test", "s1", "test key")
    msg = b"From: a@pv.test\r\nSubject: html\r\n\r\n<p>" + b"h" * 3000 + b"</p>\r\n"
    broken = break_long_lines(msg)
    assert broken is not None
    signed = sign(broken, [key])
    # What the peer stores: the wire form, dot-unstuffed (no dots here).
    received = to_wire(signed)
    record = key.record.encode()
    assert dkim.verify(received, dnsfunc=lambda name, timeout=5: record)
    # Signed first and broken after, as Postfix would: the signature breaks.
    assert not dkim.verify(to_wire(sign(msg, [key])), dnsfunc=lambda name, timeout=5: record)
