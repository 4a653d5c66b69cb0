"""Properties: no spelling of an address makes an untrusted client a relay."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from policy_harness import DictDirectory, client, make_config

from postvakt.address import AddressError, parse_path
from postvakt.policy import LOCAL_DOMAIN, RELAY_DOMAIN, Verdict, check_rcpt, check_sender

CONFIG = make_config()
DIRECTORY = DictDirectory()
OURS = {"pv.test", "backup.test"}

PIECES = st.sampled_from(
    [
        "u", "v", "alice", "postmaster", "Postmaster", "pv.test", "PV.TEST.", "backup.test",
        "other.example", "evilpv.test", "sub.pv.test", "pv.test.other.example", "[127.0.0.1]",
        "[IPv6:::1]", "127.0.0.1", "mx.pv.test", "@", "%", "!", ":", ",", ".", '"', "\\",
        "<", ">", " ", "[", "]", "\x00", "\r", "\n", "ä",
    ]
)  # fmt: skip


def assert_no_relay(path: str) -> None:
    try:
        rcpt = parse_path(path)
    except AddressError:
        return
    for role in ("O", "E:alice@pv.test"):
        d = check_rcpt(client(role), rcpt, CONFIG, DIRECTORY)
        if d.verdict is Verdict.PERMIT:
            # Only our own domains, and only the rules that never relay.
            assert d.rule in (LOCAL_DOMAIN, RELAY_DOMAIN), (path, d)
            assert rcpt.domain in OURS or (rcpt.domain == "" and rcpt.local == "Postmaster"), (
                path,
                d,
            )
            if d.rule == RELAY_DOMAIN:
                assert not rcpt.routed, (path, d)
            if d.rule == LOCAL_DOMAIN and rcpt.domain:
                assert DIRECTORY.recipient_exists(str(rcpt)), (path, d)
        else:
            assert d.verdict is Verdict.REJECT
            assert d.reply.code in (550, 553, 554)


@settings(max_examples=1500)
@given(st.lists(PIECES, max_size=12))
def test_tricky_spellings_never_relay(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert_no_relay(f"<{text}>")
    assert_no_relay(text)


LOCAL_PIECES = st.sampled_from(
    ["u", "v", "alice", "weird", "name", "%", "!", "@", ".", "other.example", '"', "\\"]
)
DOMAINS = st.sampled_from(
    [
        "pv.test",
        "PV.TEST.",
        "backup.test",
        "Backup.Test.",
        "other.example",
        "[127.0.0.1]",
        "mx.pv.test",
        "evilpv.test",
    ]
)
ROUTES = st.sampled_from(["", "@other.example:", "@pv.test:", "@[127.0.0.1],@backup.test:"])


@settings(max_examples=1500)
@given(ROUTES, st.lists(LOCAL_PIECES, min_size=1, max_size=6), DOMAINS, st.booleans())
def test_structured_spellings_never_relay(
    route: str, local: list[str], domain: str, quoted: bool
) -> None:
    lp = "".join(local)
    if quoted:
        lp = '"' + lp.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert_no_relay(f"<{route}{lp}@{domain}>")


@settings(max_examples=500)
@given(
    st.text(max_size=40),
    st.sampled_from(["pv.test", "backup.test", "other.example", "[127.0.0.1]", "pv.test.", ""]),
    st.text(max_size=20),
)
def test_random_local_parts_and_domains_never_relay(local: str, domain: str, junk: str) -> None:
    assert_no_relay(f"<{local}@{domain}>")
    assert_no_relay(f'<"{local}"@{domain}>')
    assert_no_relay(f"<{local}@{junk}>")
    assert_no_relay(f"<@{junk}:{local}@{domain}>")


@settings(max_examples=500)
@given(st.text(max_size=60))
def test_sender_check_never_crashes_and_never_trusts_claims(text: str) -> None:
    try:
        sender = parse_path(f"<{text}>", allow_null=True)
    except AddressError:
        return
    d = check_sender(client("O"), sender, CONFIG, DIRECTORY)
    if sender.domain in OURS or sender.is_literal or sender.domain == "mx.pv.test":
        assert d.verdict is Verdict.REJECT
