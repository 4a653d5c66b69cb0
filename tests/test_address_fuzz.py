"""The address parser under addresses built from the grammar's own pieces
(atoms, quoted strings, routes, literals, IDN, parameters) mixed with junk:
an `Address` or an `AddressError` carrying a well-formed reply, never another
exception; and whatever parses, parses again to itself.

The admin's check (`mailbox_problem`, behind `postvakt user add`) is judged
against SMTP's parser: what it lets through, a client can name in RCPT TO.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postvakt.address import (
    Address,
    AddressError,
    mailbox_problem,
    parse_address,
    parse_header_addresses,
    parse_path,
    split_path_and_params,
)

REPLY_LINE = re.compile(rb"^[45][0-9][0-9] [245]\.[0-9]{1,3}\.[0-9]{1,3} [^\r\n]*\r\n$")

ATOM = st.text(alphabet="abcXYZ019!#$%&'*+-/=?^_`{|}~", min_size=1, max_size=10)
JUNK = st.sampled_from(
    ["", ".", "..", "@", ":", ",", "<", ">", '"', "\\", " ", "\t", "\x00", "\r\n", "ä", "\udcff"]
)
QUOTED = st.builds(lambda s: '"' + s + '"', st.text(alphabet='ab @.,:\\"\x7f\tä', max_size=10))
LOCAL = st.one_of(
    st.lists(ATOM, min_size=1, max_size=3).map(".".join),
    QUOTED,
    st.builds(lambda a, j, b: a + j + b, ATOM, JUNK, ATOM),
    st.text(alphabet="ab.%!@", max_size=6),
)
LABEL = st.one_of(
    st.text(alphabet="abz09-", min_size=1, max_size=12),
    st.sampled_from(["xn--bcher-kva", "bücher", "-a", "a-", "A" * 64, "ÄÖ"]),
)
DOMAIN = st.one_of(
    st.lists(LABEL, min_size=1, max_size=4).map(".".join),
    st.builds(lambda d: d + ".", st.lists(LABEL, min_size=2, max_size=3).map(".".join)),
    st.sampled_from(
        [
            "[127.0.0.1]",
            "[IPv6:::1]",
            "[IPv6:2001:db8::1]",
            "[300.1.1.1]",
            "[tag:x]",
            "[]",
            "1.2.3",
            "a..b",
            "a" * 250 + ".test",
        ]
    ),
)
MAILBOX = st.one_of(
    st.builds(lambda lp, d: f"{lp}@{d}", LOCAL, DOMAIN),
    st.builds(lambda lp, d, e: f"{lp}@{d}@{e}", LOCAL, DOMAIN, DOMAIN),
    st.sampled_from(["postmaster", "Postmaster", "", "@", "a@", "@b"]),
)
ROUTE = st.lists(DOMAIN.map(lambda d: "@" + d), min_size=1, max_size=3).map(
    lambda hops: ",".join(hops) + ":"
)
PATH = st.builds(
    lambda route, mailbox, open_, close: f"{open_}{route}{mailbox}{close}",
    st.one_of(st.just(""), ROUTE),
    MAILBOX,
    st.sampled_from(["<", "", "<<"]),
    st.sampled_from([">", "", ">>", "> "]),
)
PARAM = st.one_of(
    st.sampled_from(
        ["SIZE=10", "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=a+2Bb", "NOTIFY=NEVER"]
    ),
    st.builds(lambda k, v: f"{k}={v}", ATOM, st.text(max_size=6)),
    st.text(alphabet="=a <>", max_size=5),
)
ARGUMENT = st.builds(
    lambda path, params, sep: sep.join([path, *params]),
    PATH,
    st.lists(PARAM, max_size=3),
    st.sampled_from([" ", "  ", "\t"]),
)


def well_formed(e: AddressError) -> None:
    assert 400 <= e.reply.code < 600
    assert REPLY_LINE.match(e.reply.encode()), e.reply
    assert len(e.reply.encode()) <= 512


def round_trips(a: Address) -> None:
    assert isinstance(a, Address)
    if a.is_null:
        return
    again = parse_path(f"<{a}>", smtputf8=True)
    assert again == a, (str(a), again)
    assert a.is_literal or a.domain == a.domain.lower()
    assert not a.domain.endswith(".")


FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(path=PATH, utf8=st.booleans(), allow_null=st.booleans())
def test_paths_parse_or_get_a_reply(path: str, utf8: bool, allow_null: bool) -> None:
    try:
        a = parse_path(path, smtputf8=utf8, allow_null=allow_null)
    except AddressError as e:
        well_formed(e)
        return
    round_trips(a)
    # One place to go: routing characters stay in the local part, flagged.
    assert "@" not in a.domain and "%" not in a.domain and "!" not in a.domain


@FAST
@given(arg=ARGUMENT)
def test_mail_arguments_split_or_get_a_reply(arg: str) -> None:
    try:
        path, params = split_path_and_params(arg)
    except AddressError as e:
        well_formed(e)
        return
    assert isinstance(path, str)
    for key, value in params:
        assert key and (value is None or isinstance(value, str))
    try:
        round_trips(parse_path(path, smtputf8=True, allow_null=True))
    except AddressError as e:
        well_formed(e)


@FAST
@given(text=st.one_of(MAILBOX, PATH, st.text(max_size=300)))
def test_the_admins_check_lets_through_only_what_smtp_accepts(text: str) -> None:
    problem = mailbox_problem(text)
    try:
        a = parse_address(text)
    except AddressError as e:
        well_formed(e)
        assert problem is not None, text
        return
    if problem is None:
        round_trips(a)
        assert a.domain and not a.is_literal
    else:
        assert problem and "\n" not in problem


@FAST
@given(
    mailboxes=st.lists(st.one_of(MAILBOX, PATH), min_size=1, max_size=3),
    names=st.lists(st.text(alphabet='ab "(),.<>:;@\\', max_size=8), max_size=3),
)
def test_header_addresses_parse_or_get_a_reply(mailboxes: list[str], names: list[str]) -> None:
    parts = [f"{n} <{m}>" if n else m for n, m in zip(names + [""] * 3, mailboxes, strict=False)]
    try:
        found = parse_header_addresses(", ".join(parts))
    except AddressError as e:
        well_formed(e)
        return
    for a in found:
        assert isinstance(a, Address)
