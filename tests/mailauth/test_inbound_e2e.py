"""Inbound on port 25, end to end: the real `postvakt serve` with `[dns]` on
NSD, an outside client on 127.0.0.2, and per `[auth_checks]` mode the right
reply and the right Authentication-Results: in the delivered message."""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailauth_support import require_nsd
from zones import OUTSIDE, OUTSIDE_IP, OutsideKeys, all_zones, message

from dnsserver import NsdServer
from support import LOCAL_DOMAIN, Running, start_server, wait_maildir

BOB = f"bob@{LOCAL_DOMAIN}"
ALICE = f"alice@{LOCAL_DOMAIN}"
PASSWORD = "inbound test password"
HELO = "mail.pass.example"  # its A record is 127.0.0.2, its SPF "a": pass


@pytest.fixture(scope="module")
def keys() -> OutsideKeys:
    return OutsideKeys.make(list(OUTSIDE))


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory, keys: OutsideKeys) -> Iterator[NsdServer]:
    require_nsd()
    server = NsdServer(tmp_path_factory.mktemp("dns"), all_zones(keys))
    yield server
    server.cleanup()


def _server(tmp_path: Path, nsd: NsdServer, spf_fail: str, dmarc_reject: str) -> Iterator[Running]:
    srv = start_server(
        tmp_path,
        users={BOB: "b", ALICE: PASSWORD},
        dns={"servers": [nsd.server], "timeout": "5s"},
        auth_checks={"spf_fail": spf_fail, "dmarc_reject": dmarc_reject},
    )
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def spf_reject(tmp_path_factory: pytest.TempPathFactory, nsd: NsdServer) -> Iterator[Running]:
    yield from _server(tmp_path_factory.mktemp("spf"), nsd, "reject", "off")


@pytest.fixture(scope="module")
def dmarc_reject(tmp_path_factory: pytest.TempPathFactory, nsd: NsdServer) -> Iterator[Running]:
    yield from _server(tmp_path_factory.mktemp("dmarc"), nsd, "warn", "reject")


@pytest.fixture(scope="module")
def warn_only(tmp_path_factory: pytest.TempPathFactory, nsd: NsdServer) -> Iterator[Running]:
    yield from _server(tmp_path_factory.mktemp("warn"), nsd, "warn", "warn")


def send_outside(srv: Running, sender: str, data: bytes, helo: str = HELO) -> tuple[int, str]:
    """MAIL, RCPT, DATA from the outside address; the reply to the end of DATA."""
    with smtplib.SMTP(
        "127.0.0.1",
        srv.port("smtp"),
        local_hostname=helo,
        timeout=60,
        source_address=(OUTSIDE_IP, 0),
    ) as s:
        s.ehlo(helo)
        code, text = s.mail(sender)
        assert code == 250, text
        code, text = s.rcpt(BOB)
        assert code == 250, text
        code, text = s.data(data)
        return code, text.decode()


def delivered(srv: Running, subject: str) -> bytes:
    """The one delivered message with this subject, with LF line ends (as Maildir keeps it)."""
    line = f"\nSubject: {subject}\n".encode()
    found = wait_maildir(srv.data_dir, BOB, containing=line)
    assert len(found) == 1, srv.log()[-3000:]
    return found[0].replace(b"\r\n", b"\n")


def auth_results(msg: bytes) -> list[str]:
    """The Authentication-Results: fields of a delivered message, unfolded."""
    head = msg.split(b"\n\n", 1)[0].decode()
    fields = head.replace("\n\t", " ").replace("\n ", " ").split("\n")
    return [f for f in fields if f.lower().startswith("authentication-results:")]


@pytest.mark.parametrize(
    ("domain", "code", "spf"),
    [
        ("pass.example", 250, "spf=pass"),
        ("fail.example", 550, None),
        ("softfail.example", 250, "spf=softfail"),
        ("neutral.example", 250, "spf=neutral"),
        ("nospf.example", 250, "spf=none"),
        ("temp.example", 451, None),
    ],
)
def test_spf_fail_reject(spf_reject: Running, domain: str, code: int, spf: str | None) -> None:
    subject = f"spf-{domain}"
    got, text = send_outside(spf_reject, f"a@{domain}", message(f"a@{domain}", BOB, subject))
    assert got == code, text
    if code == 550:
        assert text.startswith("5.7.23 <a@fail.example>: SPF check failed"), text
        return
    if code == 451:
        assert text.startswith("4.7.0 SPF check of temp.example could not be completed"), text
        return
    [ar] = auth_results(delivered(spf_reject, subject))
    assert ar.startswith(f"Authentication-Results: mx.pv.test; {spf} ")
    assert f"smtp.mailfrom=a@{domain}" in ar and "smtp.helo=mail.pass.example" in ar
    # DMARC checks are off on this server: no DKIM or DMARC result is claimed.
    assert "dkim=" not in ar and "dmarc=" not in ar


def test_spf_reject_log_names_the_rule(spf_reject: Running) -> None:
    send_outside(spf_reject, "b@fail.example", message("b@fail.example", BOB, "spf-log"))
    assert "verdict=reject rule=spf_fail" in spf_reject.log()


@pytest.mark.parametrize(
    ("domain", "how", "code", "dkim", "dmarc"),
    [
        ("reject.example", "signed", 250, "dkim=pass", "dmarc=pass (p=reject"),
        ("reject.example", "broken", 550, None, None),
        ("reject.example", "unsigned", 550, None, None),
        ("monitor.example", "unsigned", 250, "dkim=none", "dmarc=fail (p=none"),
        ("monitor.example", "broken", 250, "dkim=fail", "dmarc=fail (p=none"),
        ("pass.example", "unsigned", 250, "dkim=none", "dmarc=pass (p=reject"),
    ],
)
def test_dmarc_reject(
    dmarc_reject: Running,
    keys: OutsideKeys,
    domain: str,
    how: str,
    code: int,
    dkim: str | None,
    dmarc: str | None,
) -> None:
    subject = f"dmarc-{domain}-{how}"
    data = message(f"a@{domain}", BOB, subject)
    if how != "unsigned":
        data = keys.sign(data, domain)
    if how == "broken":
        data = data.replace(b"Hello.", b"Hello, changed on the way.")
    got, text = send_outside(dmarc_reject, f"a@{domain}", data)
    assert got == code, text
    if code == 550:
        assert text.startswith(f"5.7.1 Message rejected: {domain} asks receivers to reject"), text
        assert "p=reject" in text
        return
    [ar] = auth_results(delivered(dmarc_reject, subject))
    assert dkim is not None and dmarc is not None
    assert f"; {dkim}" in ar and f"; {dmarc}" in ar, ar
    assert f"header.from={domain}" in ar


def test_dmarc_quarantine_is_held_then_released(dmarc_reject: Running) -> None:
    subject = "dmarc-quarantine"
    got, text = send_outside(
        dmarc_reject, "a@quarantine.example", message("a@quarantine.example", BOB, subject)
    )
    assert got == 250, text
    listing = dmarc_reject.cli("queue", "list").stdout
    held = [line for line in listing.splitlines() if "dmarc_reject" in line or "hold" in line]
    assert held, listing
    qid = text.split()[-1]
    assert (dmarc_reject.data_dir / "queue" / "hold" / qid).exists()
    dmarc_reject.cli("queue", "release", qid)
    [ar] = auth_results(delivered(dmarc_reject, subject))
    assert "dmarc=fail (p=quarantine" in ar


def test_forged_authentication_results_removed(dmarc_reject: Running, keys: OutsideKeys) -> None:
    subject = "forged-ar"
    forged = "Authentication-Results: mx.pv.test; dkim=pass header.d=bank.example\r\n"
    other = "Authentication-Results: mx.elsewhere.example; spf=pass\r\n"
    data = keys.sign(
        message("a@reject.example", BOB, subject, extra=forged + other), "reject.example"
    )
    got, text = send_outside(dmarc_reject, "a@reject.example", data)
    assert got == 250, text
    msg = delivered(dmarc_reject, subject)
    fields = auth_results(msg)
    ours = [f for f in fields if "mx.pv.test" in f]
    assert len(ours) == 1 and "bank.example" not in ours[0]
    # On top: above our Received: (only the Maildir's Return-Path and Delivered-To come first).
    assert msg.index(b"Authentication-Results: mx.pv.test;") < msg.index(b"\nReceived: ")
    assert any("mx.elsewhere.example" in f for f in fields)


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("fail.example", "spf=fail"),
        ("reject.example", "dmarc=fail (p=reject"),
        ("temp.example", "spf=temperror"),
    ],
)
def test_warn_mode_accepts_and_records(warn_only: Running, domain: str, expected: str) -> None:
    subject = f"warn-{domain}"
    got, text = send_outside(warn_only, f"a@{domain}", message(f"a@{domain}", BOB, subject))
    assert got == 250, text
    [ar] = auth_results(delivered(warn_only, subject))
    assert expected in ar, ar


def test_submission_is_never_checked(dmarc_reject: Running) -> None:
    """Our own users' mail on 587 gets no checks and no Authentication-Results: of ours."""
    subject = "from-alice-on-submission"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", dmarc_reject.port("submission"), timeout=60) as s:
        s.starttls(context=ctx)
        s.login(ALICE, PASSWORD)
        s.sendmail(ALICE, [BOB], message(ALICE, BOB, subject))
    assert auth_results(delivered(dmarc_reject, subject)) == []


@pytest.mark.parametrize("mode", ["reject", "warn"])
def test_dns_timeout_is_451_only_when_the_mode_rejects(tmp_path: Path, mode: str) -> None:
    """A DNS server that never answers: in "reject" mode the client is told to try
    later, never refused; in "warn" mode the message is taken with spf=temperror."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    srv = start_server(
        tmp_path,
        users={BOB: "b"},
        dns={"servers": [f"127.0.0.1:{silent.getsockname()[1]}"], "timeout": "1s"},
        auth_checks={"spf_fail": mode, "dmarc_reject": mode},
    )
    subject = f"timeout-{mode}"
    try:
        code, text = send_outside(srv, "a@pass.example", message("a@pass.example", BOB, subject))
        if mode == "warn":
            assert code == 250, text
            [ar] = auth_results(delivered(srv, subject))
            assert "spf=temperror (" in ar and "timed out" in ar, ar
            assert "dmarc=temperror" in ar, ar
            return
    finally:
        srv.stop()
        silent.close()
    assert code == 451, text
    assert text.startswith("4.7.0 SPF check of pass.example could not be completed"), text
    assert "timed out" in text
